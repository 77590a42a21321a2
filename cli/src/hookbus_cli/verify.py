"""``hookbus verify --selftest``: every verification scheme against published vectors."""

from __future__ import annotations

import argparse


def cmd_verify(args: argparse.Namespace) -> int:
    try:  # the schemes are the receiver's: imported only when this command runs
        import hookbus_receiver.signatures as signatures
    except ImportError:
        print("hookbus: the receiver is not installed (uv sync --package hookbus-receiver)")
        return 2
    rows = signatures.selftest()
    for name, passed, detail in rows:
        print(f"{'PASS' if passed else 'FAIL'}  {name:<20} {detail}")
    failed = [name for name, passed, _ in rows if not passed]
    print(f"{len(rows) - len(failed)} of {len(rows)} schemes passed")
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = sub.add_parser("verify", help="check the signature schemes")
    verify.add_argument(
        "--selftest", action="store_true", required=True, help="against the published vectors"
    )
    verify.set_defaults(func=cmd_verify)
