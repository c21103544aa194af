#!/usr/bin/env bash
# VNN-COMP convention: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Writes RESULTS_FILE: unsat, sat followed by ((X_0 v) ... (Y_0 v)), timeout or unknown.
# If relu-verify stops with an error (bad file, unsupported operator) the file says "error" and
# the reason is on stderr.
#   PYTHON          the interpreter with relu-verify installed or importable (default python3)
#   TIMEOUT_MARGIN  seconds kept back from TIMEOUT for interpreter start-up (default 1)
set -uo pipefail
if [ "$#" -ne 6 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT (only interface version v1 is supported, got '${1:-}')" >&2
    exit 1
fi
onnx="$3"; vnnlib="$4"; result="$5"; timeout="$6"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
limit="$(awk -v t="$timeout" -v m="${TIMEOUT_MARGIN:-1}" 'BEGIN { v = t - m; if (v < 0.5 * t) v = 0.5 * t; print v }')"
mkdir -p "$(dirname "$result")"
"${PYTHON:-python3}" -m verify vnnlib --onnx "$onnx" --vnnlib "$vnnlib" --timeout "$limit" --output "$result"
code=$?
if [ "$code" -ne 0 ]; then
    echo "error" > "$result"
fi
exit "$code"
