"""``python -m coordactors``: the command line (see :mod:`coordactors.cli`)."""

from coordactors.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
