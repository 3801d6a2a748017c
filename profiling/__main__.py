"""``python -m profiling point | grid | mark``: the same verbs as ``sigsim point | grid | mark``
(kept so that ``torchrun ... -m profiling point`` in existing batch scripts keeps working)."""

import argparse
import sys

from profiling.cli import add_parsers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m profiling", description="Alias of sigsim point | grid | mark."
    )
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
