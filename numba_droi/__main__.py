"""Command line: ``python -m numba_droi demo|check|bench|warmup|info [--target cpu|cuda]``."""
import argparse
import sys

from . import _backend, demo, registry, warmup


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numba_droi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="run every operator forward and backward, gradient-check it, time it")
    demo_parser.add_argument("--target", choices=_backend.TARGETS, default=None,
                             help="default: cuda when a GPU is present, else cpu")
    demo_parser.add_argument("--repeats", type=int, default=5)
    check_parser = commands.add_parser(
        "check", help="check every operator's gradients by finite differences (float64); "
                      "exit status 1 if any fails")
    check_parser.add_argument("--target", choices=_backend.TARGETS, default=None,
                              help="default: cuda when a GPU is present, else cpu")
    check_parser.add_argument("--only", nargs="+", choices=list(registry.BY_NAME), metavar="OPERATOR",
                              help="these operators only (default: all)")
    bench_parser = commands.add_parser(
        "bench", help="time every operator forward and forward+backward at a detection-sized case")
    bench_parser.add_argument("--target", choices=_backend.TARGETS, default=None,
                              help="default: cuda when a GPU is present, else cpu (cuda needs a GPU: "
                                   "the simulator is no place for timings)")
    bench_parser.add_argument("--only", nargs="+", choices=list(registry.BY_NAME), metavar="OPERATOR",
                              help="these operators only (default: all)")
    bench_parser.add_argument("--repeats", type=int, default=5, help="timed repeats (medians reported)")
    bench_parser.add_argument("--torchvision", action="store_true",
                              help="compare with torchvision's operators (when installed)")
    bench_parser.add_argument("--latency", action="store_true",
                              help="instead, each operator's first call in a fresh process, with a "
                                   "cold and with a warm on-disk kernel cache")
    warmup_parser = commands.add_parser(
        "warmup", help="compile every operator's kernels into the on-disk cache (once per machine and "
                       "install), so that later processes start at once")
    warmup_parser.add_argument("--target", nargs="+", choices=_backend.TARGETS, default=None,
                               help="default: cpu, and cuda when a GPU is present")
    warmup_parser.add_argument("--dtype", nargs="+", choices=warmup.DTYPES, default=list(warmup.DTYPES))
    warmup_parser.add_argument("--only", nargs="+", choices=list(registry.BY_NAME), metavar="OPERATOR",
                               help="these operators only (default: all)")
    warmup_parser.add_argument("--jobs", type=int, default=warmup.default_jobs(),
                               help="processes compiling at once (default: one per core, at most 8)")
    commands.add_parser("info", help="versions, targets, GPU, threads")
    args = parser.parse_args(argv)
    subparser = commands.choices[args.command]
    requested = getattr(args, "target", None)
    requested = [requested] if isinstance(requested, str) else requested or []
    if "cuda" in requested and "cuda" not in _backend.available_targets():
        subparser.error("the cuda target needs a GPU with CuPy, or NUMBA_ENABLE_CUDASIM=1")
    if args.command == "demo":
        return 0 if demo.run(args.target, args.repeats) else 1
    if args.command == "check":
        from . import diagnostics
        return 0 if diagnostics.check(args.target, args.only) else 1
    if args.command == "warmup":
        targets = args.target or (["cpu", "cuda"] if _backend.gpu_available() else ["cpu"])
        if "cuda" in targets and not _backend.gpu_available():
            subparser.error("warmup --target cuda needs a GPU with CuPy (the simulator compiles nothing)")
        if args.jobs < 1:
            subparser.error(f"--jobs must be at least 1, got {args.jobs}")
        warmup.warmup(targets, args.dtype, args.only, args.jobs)
        return 0
    if args.command == "info":
        from . import diagnostics
        diagnostics.info()
        return 0
    return _bench(args, subparser)


def _bench(args, parser):
    from . import benchmark
    target = args.target or ("cuda" if _backend.gpu_available() else "cpu")
    if target == "cuda" and not _backend.gpu_available():
        parser.error("bench --target cuda needs a GPU with CuPy: the simulator is no place for timings")
    names = args.only or list(registry.BY_NAME)
    if args.latency:
        if args.torchvision:
            parser.error("--latency times numba_droi alone; leave out --torchvision")
        print(benchmark.latency_table(benchmark.latency(names, target), target))
        return 0
    if args.torchvision and not benchmark.torchvision_installed():
        parser.error("--torchvision needs torchvision installed (pip install torchvision)")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    setting = benchmark.Setting(target, torchvision=args.torchvision)
    rows = benchmark.measure(names, args.repeats, setting)
    print(benchmark.table(rows, _backend.get_num_threads(), setting))
    return 0


if __name__ == "__main__":
    sys.exit(main())
