"""CPU benchmark of numba_droi's operators, side by side with torchvision when it is importable.

Times forward and forward+backward at a detection-sized case (2x256x50x68 features, 512 boxes, 7x7
bins, sampling_ratio 2, float32) on the cpu target, both libraries on the same number of threads,
repeats interleaved so that both see the same machine state, and reports medians and their ratio
(ours / torchvision: below 1 is faster). Prints the table and saves it, with a plot, under
experiments/results/.

    python experiments/bench.py [--threads 2] [--repeats 15]
"""
import argparse
import os
import platform
import statistics
import sys
import time

import numba
import numpy as np

import numba_droi
from numba_droi import functional as F
from numba_droi.autograd import Tensor

try:
    import torch
    import torchvision
except ImportError:  # the comparison is optional
    torch = torchvision = None

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def detection_case(rng, batch=2, channels=256, height=50, width=68, boxes=512, dtype=np.float32):
    """Features of a stride-16 map of an 800x1088 image and boxes of 16 to 512 pixels on it."""
    features = rng.standard_normal((batch, channels, height, width)).astype(dtype)
    size = np.exp(rng.uniform(np.log(16), np.log(512), (boxes, 2)))
    centre = rng.uniform(0, 1, (boxes, 2)) * (width * 16, height * 16)
    rois = np.concatenate([rng.integers(0, batch, (boxes, 1)), centre - size / 2, centre + size / 2], 1)
    return features, rois.astype(dtype)


def operators(features, rois):
    """name -> (ours(features_tensor), theirs(features_tensor) or None), each returning the output."""
    options = dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    result = {"roi_align": (lambda x: F.roi_align(x, rois, **options), None)}
    if torchvision is not None:
        torch_rois = torch.from_numpy(rois)
        result["roi_align"] = (result["roi_align"][0],
                               lambda x: torchvision.ops.roi_align(x, torch_rois, **options))
    return result


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(features, rois, repeats):
    rows = []
    ours_x = Tensor(features, requires_grad=True)
    theirs_x = torch.from_numpy(features).requires_grad_(True) if torch is not None else None
    for name, (ours, theirs) in operators(features, rois).items():
        out = ours(ours_x)
        grad = np.ones(out.shape, out.dtype)
        calls = {
            ("forward", "ours"): lambda: ours(ours_x.detach()),
            ("forward+backward", "ours"): lambda: ours(ours_x).backward(grad),
        }
        if theirs is not None:
            torch_grad = torch.from_numpy(grad)
            calls[("forward", "torchvision")] = lambda: _no_grad(theirs, theirs_x.detach())
            calls[("forward+backward", "torchvision")] = lambda: theirs(theirs_x).backward(torch_grad)
        times = {key: [] for key in calls}
        for fn in calls.values():
            fn()  # compile and warm up
        for _ in range(repeats):  # interleaved: both libraries see the same machine state
            for key, fn in calls.items():
                times[key].append(_timed(fn))
        for direction in ("forward", "forward+backward"):
            ours_ms = 1e3 * statistics.median(times[direction, "ours"])
            theirs_ms = (1e3 * statistics.median(times[direction, "torchvision"])
                         if (direction, "torchvision") in times else None)
            rows.append((name, direction, ours_ms, theirs_ms))
        print(f"  {name}: done", file=sys.stderr, flush=True)
    return rows


def _no_grad(fn, x):
    with torch.no_grad():
        return fn(x)


def table(rows, threads):
    lines = [f"| operator | pass | numba_droi (ms) | torchvision (ms) | ratio |",
             "|---|---|---:|---:|---:|"]
    for name, direction, ours, theirs in rows:
        theirs_text = f"{theirs:.1f}" if theirs is not None else "n/a"
        ratio = f"{ours / theirs:.2f}" if theirs is not None else "n/a"
        lines.append(f"| {name} | {direction} | {ours:.1f} | {theirs_text} | {ratio} |")
    versions = (f"numba_droi {numba_droi.__version__}, numba {numba.__version__}, numpy {np.__version__}"
                + (f", torch {torch.__version__}, torchvision {torchvision.__version__}" if torch else ""))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads"
    return "\n".join(lines) + f"\n\nMachine: {machine}. Versions: {versions}.\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{name}\n{direction}" for name, direction, _, _ in rows]
    positions = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 + 1.6 * len(rows)), 3.6))
    ax.bar(positions - 0.2, [r[2] for r in rows], 0.4, label="numba_droi (cpu)")
    if any(r[3] is not None for r in rows):
        ax.bar(positions + 0.2, [r[3] or 0 for r in rows], 0.4, label="torchvision (cpu)")
    ax.set_xticks(positions, labels)
    ax.set_ylabel("median time (ms)")
    ax.set_title("Detection-sized case: 2x256x50x68, 512 boxes, 7x7")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    if torch is not None:
        torch.set_num_threads(args.threads)
    features, rois = detection_case(np.random.default_rng(0))
    rows = measure(features, rois, args.repeats)
    text = table(rows, args.threads)
    print(text)
    if not args.no_save:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "bench_cpu.md"), "w") as f:
            f.write("# CPU benchmark\n\n" + text)
        plot(rows, os.path.join(RESULTS, "bench_cpu.png"))
    return rows


if __name__ == "__main__":
    main()
