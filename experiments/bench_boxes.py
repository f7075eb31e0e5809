"""How cost grows with the number of boxes: forward+backward time of every RoI operator at 64 to 4096
boxes (the detection-sized case of numba_droi.benchmark otherwise), side by side with its peer
(torchvision's operator when installed, on as many threads).

Saves a table (experiments/results/bench_boxes_cpu.md) and a plot of time against boxes, log-log
(bench_boxes_cpu.png). deform_conv2d has no boxes and is left out.

    python experiments/bench_boxes.py [--threads 2] [--repeats 5] [--boxes 64 256 1024 4096]
"""
import argparse
import os
import sys

import numba_droi
from numba_droi import registry
from numba_droi.benchmark import (Setting, case, case_calls, machine_and_versions, timed_medians,
                                  torchvision_installed)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
OPERATORS = [operator.name for operator in registry.OPERATORS if "rois" in operator.arrays]  # with boxes


def measure(boxes_list, repeats, setting):
    """Rows ``(operator, boxes, ours ms, peer name, peer ms)``, medians of interleaved repeats."""
    rows = []
    total, done = len(OPERATORS) * len(boxes_list), 0
    for name in OPERATORS:
        for boxes in boxes_list:
            boxes_case = case(name, setting, boxes=boxes)
            calls = {side: fn for (direction, side), fn in case_calls(boxes_case, setting).items()
                     if direction == "forward+backward"}
            medians = timed_medians(calls, repeats, setting)
            rows.append((name, boxes, medians["ours"], boxes_case.peer_name, medians.get("peer")))
            done += 1
            print(f"  [{done}/{total}] {name}, {boxes} boxes", file=sys.stderr, flush=True)
    return rows


def table(rows, threads, setting):
    lines = ["| operator | boxes | numba_droi fwd+bwd (ms) | peer | peer (ms) | ratio |",
             "|---|---:|---:|---|---:|---:|"]
    for name, boxes, ours, peer_name, peer in rows:
        lines.append(f"| {name} | {boxes} | {ours:.1f} | {peer_name or 'n/a'} | "
                     + (f"{peer:.1f} | {ours / peer:.2f} |" if peer else "n/a | n/a |"))
    return "\n".join(lines) + "\n\n" + machine_and_versions(threads, setting) + "\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 7), sharex=True)
    for ax, name in zip(axes.flat, OPERATORS):
        mine = [row for row in rows if row[0] == name]
        boxes = [row[1] for row in mine]
        ax.plot(boxes, [row[2] for row in mine], "o-", label="numba_droi")
        if mine[0][4] is not None:
            ax.plot(boxes, [row[4] for row in mine], "s--", label=mine[0][3])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("boxes")
    for ax in axes[:, 0]:
        ax.set_ylabel("forward+backward (ms)")
    fig.suptitle("CPU time against the number of boxes (log-log)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    numba_droi.set_num_threads(args.threads)
    setting = Setting("cpu", torchvision=torchvision_installed())
    rows = measure(args.boxes, args.repeats, setting)
    text = table(rows, args.threads, setting)
    print(text)
    if not args.no_save:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "bench_boxes_cpu.md"), "w") as f:
            f.write("# CPU time against the number of boxes\n\nForward+backward, medians of "
                    f"{args.repeats} interleaved repeats.\n\n" + text)
        plot(rows, os.path.join(RESULTS, "bench_boxes_cpu.png"))


if __name__ == "__main__":
    main()
