"""CPU benchmark of numba_droi's operators, each side by side with its peer.

Times forward and forward+backward of every operator at its detection-sized case (float32, the cpu
target) against a peer: torchvision's operator when torchvision is importable (for the deformable RoI
operators, the one they reduce to without offsets), else our own such operator, or none. Both sides
run on the same number of threads, repeats interleaved so that both see the same machine state, each
forward+backward from cleared gradients (as after a training step's ``zero_grad()``); the table
reports medians and their ratio (ours / peer: below 1 is faster). Prints the table and, when every
operator ran, saves it with a plot under experiments/results/ (first calls: experiments/first_calls.py).

With ``--busy``, each operator is timed twice, quiet and then while other processes keep every core
busy (one spinning process per core, started and stopped by the benchmark, as a data loader's workers
share the cores with a training step): the table gives both ratios and how much the ratio grew under
load; saved as bench_cpu_busy.md and .png.

    python experiments/bench.py [--threads 2] [--repeats 15] [--only roi_align ...] [--busy]
"""
import argparse
import os

import numpy as np

import numba_droi
from numba_droi.benchmark import (Setting, busy_table, measure, measure_quiet_and_busy, table,
                                  torchvision_installed)
from numba_droi.registry import BY_NAME

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row[0]} {row[1]}" + (f" (vs {row[3]})" if row[3] else "") for row in rows]
    positions = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.42 * len(rows)))
    ax.barh(positions + 0.2, [r[2] for r in rows], 0.4, label="numba_droi (cpu)")
    if any(r[4] is not None for r in rows):
        ax.barh(positions - 0.2, [r[4] or 0 for r in rows], 0.4, label="peer (cpu)")
        for position, row in zip(positions, rows):
            if row[4] is not None:
                ax.annotate(f" {row[2] / row[4]:.2f}x", (max(row[2], row[4]), position),
                            va="center", fontsize=8)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(right=2 * max(max(r[2], r[4] or 0) for r in rows))  # room for the ratios
    ax.set_xlabel("median time (ms, log scale)")
    ax.set_title("CPU, detection-sized cases (ratio = numba_droi / peer)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_busy(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in rows if row[4] is not None]
    labels = [f"{row[0]} {row[1]} (vs {row[2]})" for row in rows]
    positions = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.42 * len(rows)))
    ax.barh(positions + 0.2, [row[3] / row[4] for row in rows], 0.4, label="quiet")
    ax.barh(positions - 0.2, [row[5] / row[6] for row in rows], 0.4, label="every core busy")
    ax.axvline(1, color="grey", linewidth=0.8)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_xlabel("time ratio, numba_droi / peer (below 1: faster)")
    ax.set_title("CPU, quiet and with every core kept busy by other processes")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", nargs="+", choices=list(BY_NAME), help="these operators only")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument("--busy", action="store_true",
                        help="time each operator quiet and with every core busy too")
    args = parser.parse_args(argv)
    numba_droi.set_num_threads(args.threads)
    setting = Setting("cpu", torchvision=torchvision_installed())  # torch on as many threads as numba
    names = args.only or list(BY_NAME)
    if args.busy:
        processes = os.cpu_count()
        rows = measure_quiet_and_busy(names, args.repeats, setting, processes)
        text = busy_table(rows, args.threads, processes, setting)
        stem, title, plotter = "bench_cpu_busy", "CPU benchmark, quiet and with every core busy", plot_busy
    else:
        rows = measure(names, args.repeats, setting)
        text = table(rows, args.threads, setting)
        stem, title, plotter = "bench_cpu", "CPU benchmark", plot
    print(text)
    if not (args.no_save or args.only):
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, stem + ".md"), "w") as f:
            f.write(f"# {title}\n\n" + text)
        plotter(rows, os.path.join(RESULTS, stem + ".png"))
    return rows


if __name__ == "__main__":
    main()
