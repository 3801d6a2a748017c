"""``python -m simulator`` is now ``sigsim``: this prints the new command and exits 2."""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = argv[0] if argv and not argv[0].startswith("-") else "--help"
    print(f"python -m simulator is now sigsim: run `sigsim {verb} ...`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
