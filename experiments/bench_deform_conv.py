"""Deformable convolution on the CPU against torch's dense convolution of the same shape, the cost it
cannot go below: a deformable convolution is the dense one's matrix product plus bilinear sampling.

Batch 2, 3x3 kernels, padding 1, C -> C channels at three shapes: 64 channels at 64x64 (the main
benchmark's case), 256 at 14x14 and 512 at 7x7 (ResNet's stages 4 and 5, where detectors put their
deformable layers); float32, random offsets in [-2, 2] (DCNv1, no mask). Forward and forward+backward
(ours: the gradients of the input, the offsets, the weight and the bias; the dense convolution: those
of the input, the weight and the bias), and torchvision's deform_conv2d where torchvision is
installed; both sides on the same threads, medians of interleaved repeats in one process, each
forward+backward from cleared gradients. Saves experiments/results/bench_deform_conv_cpu.md and .png.

    python experiments/bench_deform_conv.py [--threads 2] [--repeats 5] [--no-save]
"""
import argparse
import os
import sys

import numpy as np

import numba_droi

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPES = ((64, 64), (256, 14), (512, 7))  # (channels, height = width)
PASSES = ("forward", "forward+backward")


def arrays(channels, size, rng):
    return dict(input=rng.standard_normal((2, channels, size, size)).astype(np.float32),
                offset=rng.uniform(-2, 2, (2, 18, size, size)).astype(np.float32),
                weight=(rng.standard_normal((channels, channels, 3, 3)) / (3 * np.sqrt(channels))
                        ).astype(np.float32),
                bias=rng.standard_normal(channels).astype(np.float32))


def calls(channels, size, setting):
    """``{(pass, side): fn}``: ours, torch's dense conv2d ("dense") and torchvision's deform_conv2d
    ("torchvision", when installed)."""
    from numba_droi import benchmark
    from numba_droi import functional as F
    torch = setting.torch
    given = arrays(channels, size, np.random.default_rng(0))

    def ours(x, offset, weight, bias):
        return F.deform_conv2d(x, offset, weight, bias, padding=1)

    def dense(x, weight, bias):
        return torch.nn.functional.conv2d(x, weight, bias, padding=1)
    found = benchmark.case_calls(benchmark.Case(list(given.values()), ours, "dense", dense,
                                                [given["input"], given["weight"], given["bias"]],
                                                torch_peer=True), setting)
    result = {(direction, "ours" if side == "ours" else "dense"): fn
              for (direction, side), fn in found.items()}
    if setting.torchvision is not None:
        def torchvision(x, offset, weight, bias):
            return setting.torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1)
        peer = benchmark.case_calls(benchmark.Case(list(given.values()), ours, "torchvision", torchvision,
                                                   torch_peer=True), setting)
        result.update(((direction, "torchvision"), fn) for (direction, side), fn in peer.items()
                      if side == "peer")
    return result


def measure(repeats, setting):
    from tqdm import tqdm

    from numba_droi import benchmark
    return {shape: benchmark.timed_medians(calls(*shape, setting), repeats, setting)
            for shape in tqdm(SHAPES, desc="shapes", file=sys.stderr)}


def table(medians, threads, setting):
    from numba_droi import benchmark
    with_torchvision = setting.torchvision is not None
    header = "| channels | size | pass | numba_droi (ms) | dense conv2d (ms) | ratio to dense |"
    rule = "|---:|---:|---|---:|---:|---:|"
    if with_torchvision:
        header += " torchvision deform_conv2d (ms) | ratio to torchvision |"
        rule += "---:|---:|"
    lines = [header, rule]
    for (channels, size), times in medians.items():
        for direction in PASSES:
            ours, dense = times[direction, "ours"], times[direction, "dense"]
            line = (f"| {channels} | {size}x{size} | {direction} | {ours:.1f} | {dense:.1f} "
                    f"| {ours / dense:.2f} |")
            if with_torchvision:
                peer = times[direction, "torchvision"]
                line += f" {peer:.1f} | {ours / peer:.2f} |"
            lines.append(line)
    return "\n".join(lines) + "\n\n" + benchmark.machine_and_versions(threads, setting) + "\n"


def plot(medians, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    measured = next(iter(medians.values()))
    sides = [side for side in ("ours", "dense", "torchvision") if ("forward", side) in measured]
    names = {"ours": "numba_droi deform_conv2d", "dense": "torch conv2d (dense)",
             "torchvision": "torchvision deform_conv2d"}
    labels = [f"{channels} ch, {size}x{size}\n{direction}" for channels, size in medians
              for direction in PASSES]
    positions = np.arange(len(labels))
    width = 0.8 / len(sides)
    fig, axis = plt.subplots(figsize=(9, 4))
    for i, side in enumerate(sides):
        values = [times[direction, side] for times in medians.values() for direction in PASSES]
        axis.bar(positions + (i - (len(sides) - 1) / 2) * width, values, width, label=names[side])
    axis.set_xticks(positions, labels, fontsize=8)
    axis.set_yscale("log")
    axis.set_ylabel("ms (log scale)")
    axis.set_title("Deformable convolution against a dense convolution of the same shape, CPU")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    numba_droi.set_num_threads(args.threads)
    from numba_droi import benchmark
    setting = benchmark.Setting("cpu", torch=True, torchvision=benchmark.torchvision_installed())
    medians = measure(args.repeats, setting)
    text = table(medians, args.threads, setting)
    print(text)
    if not args.no_save:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "bench_deform_conv_cpu.md"), "w") as f:
            f.write("# Deformable convolution against a dense convolution, cpu\n\n" + text)
        plot(medians, os.path.join(RESULTS, "bench_deform_conv_cpu.png"))
    return text


if __name__ == "__main__":
    main()
