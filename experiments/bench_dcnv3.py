"""DCNv3 and DCNv4 on the CPU against the pure-PyTorch formulation of InternImage's dcnv3_core_pytorch
(grid_sample on the zero-padded input), at InternImage-T's four stage shapes.

Batch 2, 3x3 kernel, stride 1, padding 1; 64, 128, 256 and 512 channels at 56x56, 28x28, 14x14 and 7x7
in 4, 8, 16 and 32 groups of 16 channels; offsets up to 2 pixels, masks softmax-normalised (DCNv3) or
unbounded (DCNv4, its offsets and masks packed in one array, whose peer is the same formulation on the
unpacked arrays); float32. Forward and forward+backward (gradients of the input, the offsets and the
masks), both sides on the same threads, medians of interleaved repeats in one process; and the peak
memory of a call: how far it lifts its process's resident set above what the process holds between
calls, Linux's VmHWM reset through /proc/self/clear_refs, each measured in a fresh process after a
warm-up call. Saves experiments/results/bench_dcnv3_cpu.md and .png.

    python experiments/bench_dcnv3.py [--threads 2] [--repeats 5] [--no-save]
"""
import argparse
import json
import os
import sys

import numpy as np

import numba_droi

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
STAGES = {"stage 1": (64, 56, 4), "stage 2": (128, 28, 8), "stage 3": (256, 14, 16), "stage 4": (512, 7, 32)}
OPERATORS = ("dcnv3", "dcnv4")
PASSES = ("forward", "forward+backward")
KEYS = [(stage, name) for stage in STAGES for name in OPERATORS]


def example(stage, name):
    from numba_droi import registry
    channels, size, group = STAGES[stage]
    case = registry.internimage_case(np.random.default_rng(0), channels, size, group)
    if name == "dcnv3":
        return case
    mask = np.random.default_rng(1).uniform(-1, 1, case.arrays["mask"].shape).astype(np.float32)
    return registry.Example(dict(input=case.arrays["input"], offset_mask=registry.pack_offset_mask(
        case.arrays["offset"], mask, group)), case.options)


def calls(stage, name, setting):
    """``{(pass, side): fn}`` of one stage and operator, ours and the grid_sample formulation's."""
    from numba_droi import benchmark, demo, registry
    from numba_droi.torch import dcnv3_grid_sample
    instance = example(stage, name)
    inputs, ours = demo.example_call(registry.BY_NAME[name], instance, setting.array)
    options = instance.options
    group, points = options["group"], 9

    def peer(input, *arrays):
        if name == "dcnv3":
            offset, mask = arrays
        else:  # the packed array's views
            packed = arrays[0][..., :3 * group * points].unflatten(-1, (group, 3 * points))
            offset, mask = packed[..., :2 * points].flatten(-2), packed[..., 2 * points:].flatten(-2)
        return dcnv3_grid_sample(input, offset, mask, **options)
    return benchmark.case_calls(benchmark.Case(inputs, ours, "grid_sample", peer, torch_peer=True), setting)


def measure_times(repeats, setting):
    from tqdm import tqdm

    from numba_droi import benchmark
    return {key: benchmark.timed_medians(calls(*key, setting), repeats, setting)
            for key in tqdm(KEYS, desc="timing", file=sys.stderr)}


def peak_in_this_process(stage, name, direction, side):
    from numba_droi import benchmark
    return benchmark.peak_mib(calls(stage, name, benchmark.Setting("cpu", torch=True))[direction, side])


def measure_memory():
    """``{(stage, operator, pass, side): MiB}``, each in a fresh process."""
    from numba_droi import benchmark
    keys = [key + (direction, side) for key in KEYS for direction in PASSES for side in ("ours", "peer")]
    return benchmark.peaks_in_fresh_processes(__file__, keys)


def table(medians, peaks, threads, setting):
    from numba_droi import benchmark
    lines = ["| stage | C, size, groups | operator | pass | numba_droi (ms) | grid_sample (ms) | ratio "
             "| numba_droi peak (MiB) | grid_sample peak (MiB) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for stage, name in KEYS:
        channels, size, group = STAGES[stage]
        for direction in PASSES:
            ours, peer = (medians[stage, name][direction, side] for side in ("ours", "peer"))
            peak_ours, peak_peer = (peaks[stage, name, direction, side] for side in ("ours", "peer"))
            lines.append(f"| {stage} | {channels}, {size}x{size}, {group} | {name} | {direction} "
                         f"| {ours:.1f} | {peer:.1f} | {ours / peer:.2f} | {peak_ours:.0f} "
                         f"| {peak_peer:.0f} |")
    return "\n".join(lines) + "\n\n" + benchmark.machine_and_versions(threads, setting) + "\n"


def plot(medians, peaks, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (times, memory) = plt.subplots(1, 2, figsize=(12, 4))
    positions = np.arange(len(STAGES))
    for offset, name, marker in ((-0.2, "dcnv3", "o"), (0.2, "dcnv4", "s")):
        ratios = [medians[stage, name]["forward+backward", "ours"] / medians[stage, name]["forward+backward",
                                                                                            "peer"]
                  for stage in STAGES]
        forward = [medians[stage, name]["forward", "ours"] / medians[stage, name]["forward", "peer"]
                   for stage in STAGES]
        times.plot(positions, ratios, marker=marker, label=f"{name} forward+backward")
        times.plot(positions, forward, marker=marker, linestyle="--", label=f"{name} forward")
        memory.bar(positions + offset, [peaks[stage, name, "forward+backward", "ours"]
                                        / peaks[stage, name, "forward+backward", "peer"] for stage in STAGES],
                   0.4, label=name)
    times.axhline(0.25, color="grey", linewidth=0.8, linestyle=":", label="0.25")
    times.set_ylabel("time ratio, numba_droi / grid_sample")
    memory.set_ylabel("peak memory ratio, forward+backward")
    for axis in (times, memory):
        labels = [f"{stage}\n{STAGES[stage][0]} ch {STAGES[stage][1]}px" for stage in STAGES]
        axis.set_xticks(positions, labels, fontsize=8)
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
    fig.suptitle("DCNv3 and DCNv4, CPU, InternImage-T's stages (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument("--peak", nargs=4, metavar=("STAGE", "OPERATOR", "PASS", "SIDE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    numba_droi.set_num_threads(args.threads)
    if args.peak:
        print(json.dumps(peak_in_this_process(*args.peak)))
        return None
    from numba_droi import benchmark
    os.environ["NUMBA_NUM_THREADS"] = str(numba_droi.get_num_threads())  # for the memory processes
    setting = benchmark.Setting("cpu", torch=True)
    medians = measure_times(args.repeats, setting)
    peaks = measure_memory()
    text = table(medians, peaks, args.threads, setting)
    print(text)
    if not args.no_save:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "bench_dcnv3_cpu.md"), "w") as f:
            description = __doc__.split("\n\n")[1].replace("\n", " ")
            f.write("# DCNv3 and DCNv4, cpu\n\n" + description + "\n\n" + text)
        plot(medians, peaks, os.path.join(RESULTS, "bench_dcnv3_cpu.png"))
    return medians, peaks


if __name__ == "__main__":
    main()
