#!/usr/bin/env bash
# The whole suite as `make test` runs it: host-only tests in parallel with the real-VM tests (which are serialized,
# since they share lab VMs through session fixtures), then one merged per-module time table and a closing line.
# Usage: scripts/run-tests.sh [PYTHON]   (extra pytest args via PYTEST_ARGS)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
times=$(mktemp -d /tmp/vmbackup-test-times.XXXXXX)
export VMBACKUP_TEST_TIMES_DIR=$times
# shellcheck disable=SC2206
args=(-v --timeout=1800 -p no:cacheprovider ${PYTEST_ARGS:-})
start=$(date +%s)

"$PY" -m pytest "${args[@]}" -m 'not vm' tests >"$times/host-only.log" 2>&1 &
host_pid=$!
"$PY" -m pytest "${args[@]}" -m vm tests
vm_rc=$?
wait "$host_pid"
host_rc=$?

echo "================ host-only tests (ran in parallel with the VM tests) ================"
cat "$times/host-only.log"
"$PY" scripts/test-times.py "$times"
merged_rc=$?
echo "suite wall time: $(( $(date +%s) - start )) s (VM tests rc=$vm_rc, host-only rc=$host_rc)"
rm -rf "$times"
# pytest exits 5 when a selection holds no test: not a failure of the suite
for rc in "$vm_rc" "$host_rc"; do
  if [[ $rc -ne 0 && $rc -ne 5 ]]; then exit "$rc"; fi
done
exit "$merged_rc"
