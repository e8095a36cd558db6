#!/usr/bin/env bash
# The project's one prepared GPU check: scripts/gpu_check.py (its --help says everything), run with
# $PYTHON (default python3). On the GPU machine, from the repository root:
#   DATA2VEC2_COMMIT=<commit> bash scripts/gpu_check.sh
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
