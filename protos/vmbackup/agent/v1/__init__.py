"""vmbackup.agent.v1: generated from agent.proto by scripts/gen-proto.sh; do not edit *_pb2*.py."""
