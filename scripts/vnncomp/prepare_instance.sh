#!/usr/bin/env bash
# VNN-COMP convention: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Checks that the network loads and the property parses and fits it (nothing is cached between
# instances). Exit 0 when the instance can run; otherwise the reason is on stderr.
#   PYTHON   the interpreter with relu-verify installed or importable (default python3)
set -euo pipefail
if [ "$#" -ne 4 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB (only interface version v1 is supported, got '${1:-}')" >&2
    exit 1
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "${PYTHON:-python3}" -m verify vnnlib --onnx "$3" --vnnlib "$4" --check
