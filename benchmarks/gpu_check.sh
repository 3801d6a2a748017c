#!/usr/bin/env bash
# One-GPU check (benchmarks/gpu_check.py): run from the repository root; writes into $OUT.
cd "$(dirname "$0")/.." && exec "${PYTHON:-python3}" -m benchmarks.gpu_check --out "${OUT:?set OUT to the output folder}" "$@"
