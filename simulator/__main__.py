"""``python -m simulator`` is now ``sigsim``: this prints the new command and exits 2."""

import sys

NEW = {"predict": "predict", "calibrate": "calibrate", "validate": "validate"}
NEW["profiles"] = "profiles"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = NEW.get(argv[0], argv[0]) if argv else "--help"
    print(
        f"python -m simulator is now sigsim: run `sigsim {verb} ...` (sigsim --help lists verbs)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
