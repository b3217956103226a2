"""Command line: `python -m ngvi demo|fit|predict` (and `ngvi ...` once installed)."""

import argparse
import os
import sys
from typing import NoReturn

from ._interrupts import deliverable_interrupts
from .cli import add_fit_parser, add_predict_parser


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, quick=args.quick)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ngvi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="fit the corrected tutorial problem with every strategy and report"
    )
    demo.add_argument("--out", default="demo-output", help="folder for the plots")
    demo.add_argument("--quick", action="store_true", help="fewer steps for the slow strategies")
    demo.set_defaults(run=_demo)
    add_fit_parser(commands)
    add_predict_parser(commands)
    args = parser.parse_args(argv)
    return args.run(args)


def run() -> NoReturn:
    """The process entry point (`python -m ngvi`, the `ngvi` script): `main`, then exit with
    its code. After Ctrl-C (code 130) the process leaves without the interpreter's teardown:
    an interrupt during JIT compilation returns to Python while XLA still compiles in a
    background thread, and tearing the interpreter down under it crashed the process
    (SIGSEGV, after the outputs were already safe). Everything has been written and closed by
    then; only the streams need flushing. Ctrl-C is never lost in a garbage-collector
    callback (`ngvi._interrupts`)."""
    with deliverable_interrupts():
        code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
