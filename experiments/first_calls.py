"""What a process pays before its first results: the first forward+backward of each operator, with an
empty on-disk kernel cache (cold: compiling) and with a filled one (warm: loading), one process and
four started together, ``python -m numba_droi warmup``, and the demo.

Writes experiments/results/first_calls.md and first_calls.png.

    python experiments/first_calls.py [--processes 4] [--only roi_align ...] [--no-save]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

from tqdm import tqdm

import numba_droi
from numba_droi.benchmark import first_calls_in_children, latency, latency_table
from numba_droi.registry import BY_NAME

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ("float32", "float64")


def all_operators_at_once(names, processes):
    """Every operator's first call, both dtypes, in ``processes`` processes started together on one
    cache: the slowest process's seconds, cold then warm."""
    with tempfile.TemporaryDirectory(prefix="numba_droi_cache_") as cache:
        cold = first_calls_in_children(names, "cpu", DTYPES, cache, processes)
        warm = first_calls_in_children(names, "cpu", DTYPES, cache, processes)
    return max(r["total_s"] for r in cold), max(r["total_s"] for r in warm)


def command_seconds(arguments, cache):
    """Wall seconds of ``python -m numba_droi ...`` on the on-disk cache ``cache``."""
    environment = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=ROOT)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "numba_droi", *arguments], env=environment, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


# (arguments, cache, when): the steps in order; each cache starts empty.
COMMANDS = [(["warmup", "--jobs", "1"], "a", "cold cache"),
            (["demo"], "a", "after warmup --jobs 1"),
            (["warmup", "--jobs", "2"], "b", "cold cache"),
            (["demo"], "b", "after warmup --jobs 2"),
            (["demo"], "c", "cold cache"),
            (["demo"], "c", "warm cache (a second run)")]


def commands():
    """``(command, when, seconds)`` for each of ``COMMANDS``."""
    with tempfile.TemporaryDirectory(prefix="numba_droi_caches_") as caches:
        return [(" ".join(arguments), when, command_seconds(arguments, os.path.join(caches, cache)))
                for arguments, cache, when in tqdm(COMMANDS, desc="commands")]


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(9, 4))
    labels = [f"{name}\n{dtype}" for name, dtype, *_ in rows]
    positions = range(len(rows))
    axes.bar([p - 0.2 for p in positions], [row[3] for row in rows], 0.4, label="cold cache (compiling)")
    axes.bar([p + 0.2 for p in positions], [row[4] for row in rows], 0.4, label="warm cache (loading)")
    axes.axhline(5, color="gray", linestyle="--", linewidth=1, label="5 s")
    axes.set_xticks(list(positions), labels, fontsize=6, rotation=90)
    axes.set_ylabel("first forward+backward (s)")
    axes.set_title("First call of each operator in a fresh process")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4, help="processes started together")
    parser.add_argument("--only", nargs="+", choices=list(BY_NAME), help="these operators only")
    parser.add_argument("--no-save", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    names = args.only or list(BY_NAME)
    rows = latency(names, "cpu", DTYPES)
    text = ["## Each operator, a fresh process\n", latency_table(rows, "cpu")]
    at_once = {}
    for processes in tqdm((1, args.processes), desc="processes at once"):
        at_once[processes] = all_operators_at_once(names, processes)
    text += ["## Every operator and dtype in one process\n",
             "| processes started together | cold cache (s, the slowest) | warm cache (s, the slowest) |",
             "|---:|---:|---:|"]
    text += [f"| {processes} | {cold:.1f} | {warm:.1f} |" for processes, (cold, warm) in at_once.items()]
    text += ["", "Each process imports numba_droi and makes the first forward+backward of every operator in "
             "float32 and float64. Processes that share a cache compile each kernel once between them: "
             "the first to need it compiles and saves it, the others wait for it and load it.\n"]
    if not args.only:
        text += ["## Commands\n", "| command | when | wall time (s) |", "|---|---|---:|"]
        text += [f"| `python -m numba_droi {command}` | {when} | {seconds:.1f} |"
                 for command, when, seconds in commands()]
        text += ["", f"`warmup` compiles every operator in both dtypes; the demo times each operator at a "
                 f"detection size and checks its gradients. numba_droi {numba_droi.__version__}, "
                 f"{os.cpu_count()} cores.\n"]
    output = "\n".join(text)
    print(output)
    if not (args.no_save or args.only):
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "first_calls.md"), "w") as f:
            f.write("# First calls: compiling and loading the kernels\n\n" + output)
        plot(rows, os.path.join(RESULTS, "first_calls.png"))


if __name__ == "__main__":
    main()
