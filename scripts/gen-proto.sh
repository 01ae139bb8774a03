#!/usr/bin/env bash
# Regenerate protos/vmbackup/**/*_pb2.py, *_pb2_grpc.py and *_pb2.pyi from the .proto files.
# Usage: scripts/gen-proto.sh [PYTHON]   (PYTHON defaults to .venv/bin/python; needs grpcio-tools==1.76.0)
# Reproducible: the same grpcio-tools gives byte-identical output (files are sorted, paths are relative).
set -euo pipefail
PY="${1:-.venv/bin/python}"
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")";; esac
cd "$(dirname "$0")/.."
mapfile -t PROTOS < <(cd protos && find vmbackup -name '*.proto' | LC_ALL=C sort)
if [ "${#PROTOS[@]}" -eq 0 ]; then echo "gen-proto: no .proto files under protos/" >&2; exit 1; fi
"$PY" -c 'import grpc_tools' 2>/dev/null || { echo "gen-proto: $PY has no grpc_tools (pip install grpcio-tools==1.76.0)" >&2; exit 1; }
cd protos
"$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. "${PROTOS[@]}"
for p in "${PROTOS[@]}"; do echo "gen-proto: ${p%.proto}_pb2.py, _pb2.pyi, _pb2_grpc.py"; done
