"""Command line: ``python -m numba_droi demo [--target cpu|cuda]``."""
import argparse
import sys

from . import _backend, demo


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numba_droi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="run every operator forward and backward, gradient-check it, time it")
    demo_parser.add_argument("--target", choices=_backend.TARGETS, default=None,
                             help="default: cuda when a GPU is present, else cpu")
    demo_parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.target == "cuda" and "cuda" not in _backend.available_targets():
        parser.error("the cuda target needs a GPU with CuPy, or NUMBA_ENABLE_CUDASIM=1")
    return 0 if demo.run(args.target, args.repeats) else 1


if __name__ == "__main__":
    sys.exit(main())
