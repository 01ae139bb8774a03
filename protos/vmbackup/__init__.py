"""Generated gRPC code of the vmbackup protocols (see protos/ and scripts/gen-proto.sh)."""
