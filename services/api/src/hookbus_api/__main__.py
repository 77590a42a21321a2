"""Entry point: ``hookbus-api`` / ``python -m hookbus_api`` (the operator API; being built)."""

from __future__ import annotations

import sys


def main() -> None:
    print("hookbus-api: the operator API is not built yet", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
