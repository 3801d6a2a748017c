"""``python -m benchmarks.gpu_check`` is now ``sigsim gpu-check``: this prints the new command and exits 2."""

import sys

if __name__ == "__main__":
    print(
        "python -m benchmarks.gpu_check is now: sigsim gpu-check ... (sigsim gpu-check --help)",
        file=sys.stderr,
    )
    sys.exit(2)
