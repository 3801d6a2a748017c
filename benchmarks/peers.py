"""``python -m benchmarks.peers`` is now ``sigsim peers``: this prints the new command and exits 2."""

import sys

if __name__ == "__main__":
    print(
        "python -m benchmarks.peers is now: sigsim peers ... (sigsim peers --help)", file=sys.stderr
    )
    sys.exit(2)
