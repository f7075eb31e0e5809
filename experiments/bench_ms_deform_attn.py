"""Multi-scale deformable attention on the CPU against the pure-PyTorch formulation (grid_sample per
level) that Deformable DETR and mmcv ship as their fallback, at Deformable DETR's sizes.

Batch 2, 8 heads of 32 channels, 4 levels of 100x150, 50x75, 25x38 and 13x19 (an 800x1200 image at
strides 8 to 64), 4 points per level and head, float32: the encoder (every pixel a query, 19947) and
the decoder (300 queries). Forward and forward+backward (gradients of the value, the locations and the
weights), both sides on the same threads, medians of interleaved repeats in one process; and the peak
memory of a call: how far it lifts its process's resident set above what the process holds between
calls (the inputs and the previous call's gradients, alike on both sides), Linux's VmHWM reset through
/proc/self/clear_refs, each measured in a fresh process after a warm-up call. Saves
experiments/results/bench_ms_deform_attn_cpu.md and .png.

    python experiments/bench_ms_deform_attn.py [--threads 2] [--repeats 5] [--no-save]
"""
import argparse
import json
import os
import sys

import numpy as np

import numba_droi

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CASES = {"encoder": None, "decoder": 300}  # queries: one per pixel, or 300
PASSES = ("forward", "forward+backward")
DIFFERENTIABLE = ("value", "sampling_locations", "attention_weights")


def example(case):
    from numba_droi import registry
    return registry.detr_case(np.random.default_rng(0), queries=CASES[case])


def calls(case, setting):
    """``{(pass, side): fn}`` of ``case``, ours and the grid_sample formulation's."""
    from numba_droi import benchmark, demo, registry
    from numba_droi.torch import ms_deform_attn_grid_sample
    operator = registry.BY_NAME["ms_deform_attn"]
    instance = example(case)
    inputs, ours = demo.example_call(operator, instance, setting.array)
    shapes = setting.torch.from_numpy(instance.arrays["spatial_shapes"])

    def peer(value, locations, weights):
        return ms_deform_attn_grid_sample(value, shapes, locations, weights)
    return benchmark.case_calls(benchmark.Case(inputs, ours, "grid_sample", peer, torch_peer=True), setting)


def measure_times(repeats, setting):
    from tqdm import tqdm

    from numba_droi import benchmark
    medians = {}
    for case in tqdm(CASES, desc="timing", file=sys.stderr):
        medians[case] = benchmark.timed_medians(calls(case, setting), repeats, setting)
    return medians


def peak_in_this_process(case, direction, side):
    from numba_droi import benchmark
    return benchmark.peak_mib(calls(case, benchmark.Setting("cpu", torch=True))[direction, side])


def measure_memory():
    """``{(case, pass, side): MiB}``, each in a fresh process."""
    from numba_droi import benchmark
    keys = [(case, direction, side) for case in CASES for direction in PASSES for side in ("ours", "peer")]
    return benchmark.peaks_in_fresh_processes(__file__, keys)


def table(medians, peaks, threads, setting):
    from numba_droi import benchmark
    lines = ["| case | queries | pass | numba_droi (ms) | grid_sample (ms) | ratio | numba_droi peak (MiB) "
             "| grid_sample peak (MiB) |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for case in CASES:
        queries = example(case).arrays["attention_weights"].shape[1]
        for direction in PASSES:
            ours, peer = medians[case][direction, "ours"], medians[case][direction, "peer"]
            lines.append(f"| {case} | {queries} | {direction} | {ours:.1f} | {peer:.1f} | {ours / peer:.2f} "
                         f"| {peaks[case, direction, 'ours']:.0f} | {peaks[case, direction, 'peer']:.0f} |")
    return "\n".join(lines) + "\n\n" + benchmark.machine_and_versions(threads, setting) + "\n"


def plot(medians, peaks, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{case}\n{direction}" for case in CASES for direction in PASSES]
    positions = np.arange(len(labels))
    fig, (times, memory) = plt.subplots(1, 2, figsize=(11, 4))
    def times_of(side):
        return [medians[case][direction, side] for case in CASES for direction in PASSES]

    def peaks_of(side):
        return [peaks[case, direction, side] for case in CASES for direction in PASSES]

    for axis, values, title in ((times, times_of, "time (ms, log scale)"),
                                (memory, peaks_of, "peak memory added (MiB)")):
        axis.bar(positions - 0.2, values("ours"), 0.4, label="numba_droi")
        axis.bar(positions + 0.2, values("peer"), 0.4, label="grid_sample (PyTorch)")
        axis.set_xticks(positions, labels, fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
    times.set_yscale("log")
    fig.suptitle("Multi-scale deformable attention, CPU, Deformable DETR's sizes")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument("--peak", nargs=3, metavar=("CASE", "PASS", "SIDE"), help=argparse.SUPPRESS)
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
        with open(os.path.join(RESULTS, "bench_ms_deform_attn_cpu.md"), "w") as f:
            description = __doc__.split("\n\n")[1].replace("\n", " ")
            f.write("# Multi-scale deformable attention, cpu\n\n" + description + "\n\n" + text)
        plot(medians, peaks, os.path.join(RESULTS, "bench_ms_deform_attn_cpu.png"))
    return medians, peaks


if __name__ == "__main__":
    main()
