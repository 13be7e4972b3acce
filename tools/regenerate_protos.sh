#!/usr/bin/env bash
# Regenerates ckptlib/format/proto/*_pb2.py from the .proto files beside them.
#
# The generated modules check at import time that the protobuf runtime is at
# least as new as the protoc that made them, so they must come from the protoc
# matching the *lowest* protobuf that pyproject.toml allows (6.31.1, also
# TensorFlow 2.21's floor): grpcio-tools 1.75 bundles exactly that protoc.
# The script installs it into a throwaway virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q "grpcio-tools==1.75.*"
"$venv/bin/python" -m grpc_tools.protoc --version | grep -q "libprotoc 31.1"
"$venv/bin/python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. ckptlib/format/proto/*.proto
echo "regenerated: $(ls ckptlib/format/proto/*_pb2.py | tr '\n' ' ')"
