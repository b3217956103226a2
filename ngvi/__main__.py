"""Command line: `python -m ngvi demo` (and `ngvi demo` once installed)."""

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, num_steps=args.steps)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ngvi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fit the corrected tutorial problem and report")
    demo.add_argument("--out", default="demo-output", help="folder for plots")
    demo.add_argument("--steps", type=int, default=20, help="natural-gradient steps")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
