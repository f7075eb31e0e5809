"""Scale: time and peak memory of RoI operators from a thousand to 100k boxes (the detection-sized case
of numba_droi.benchmark otherwise), side by side with torchvision's operator (when installed, on as
many threads).

Per operator and number of boxes: forward and forward+backward times, interleaved with the peer's in
one process (medians of ``--repeats``, one repeat from 30k boxes on; every call compiled and warmed up
at the smallest number first, our forward run once untimed at each number), and the milliseconds per
thousand boxes, flat when time grows linearly. Then the peak memory of a forward+backward, each in a
fresh process: how far the call lifts the resident set above what the process held before it (the
inputs and the output's gradient), beside the least it can be, the memory of its results: the
output, the input's gradient and what the forward keeps for the backward (roi_pool's argmax). Saves
experiments/results/bench_scale_cpu.md and .png.

    python experiments/bench_scale.py [--operators roi_align] [--boxes 1000 3000 10000 30000 100000]
                                      [--threads 2] [--repeats 3] [--no-save]
"""
import argparse
import json
import os
import sys

import numpy as np

import numba_droi
from numba_droi import benchmark, registry
from numba_droi.autograd import Tensor

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SINGLE_REPEAT_FROM = 30000  # boxes: from here on one repeat (a peer's call takes minutes)
SIDES = ("ours", "peer")
PASSES = ("forward", "forward+backward")


def setting():
    return benchmark.Setting("cpu", torchvision=benchmark.torchvision_installed())


def calls(name, boxes, setting):
    """``({(pass, side): fn}, least MiB of a forward+backward's results)``: one output gradient shared by
    both sides (at 100k boxes it is gigabytes), no forward run to find shapes."""
    operator = registry.BY_NAME[name]
    case = benchmark.case(name, setting, boxes=boxes)
    example = operator.benchmark(np.random.default_rng(0), boxes)[0]
    shape = operator.output_shape({key: a.shape for key, a in example.arrays.items() if a is not None},
                                  example.options)
    grad = np.ones(shape, case.inputs[0].dtype)
    elements = grad.size
    kept = sum(np.dtype(dtype).itemsize for _, dtype in operator.kept) * elements
    least = (grad.nbytes + kept + sum(a.nbytes for a in case.inputs)) / 2 ** 20
    xs = [Tensor(a, requires_grad=True) for a in case.inputs]
    table = {("forward", "ours"): lambda: case.ours(*[x.detach() for x in xs]),
             ("forward+backward", "ours"): lambda: case.ours(*benchmark._without_grads(xs)).backward(grad)}
    if case.peer is not None:  # torchvision's operator on torch tensors, or our offset-free one
        peer_xs = benchmark._peer_tensors(case, setting)
        peer_grad = setting.torch.from_numpy(grad) if case.torch_peer else grad

        def peer_forward():
            if case.torch_peer:
                return benchmark._no_grad(setting.torch, case.peer, [x.detach() for x in peer_xs])
            return case.peer(*[x.detach() for x in peer_xs])
        table["forward", "peer"] = peer_forward
        table["forward+backward", "peer"] = lambda: case.peer(
            *benchmark._without_grads(peer_xs)).backward(peer_grad)
    return table, least, case.peer_name


def measure_time(names, boxes_list, repeats, setting):
    """``{(operator, boxes, pass, side): ms}`` and ``{operator: peer name}``."""
    from tqdm import tqdm
    medians, peers = {}, {}
    steps = [(name, boxes) for name in names for boxes in boxes_list]
    for name, boxes in tqdm(steps, desc="time", file=sys.stderr):
        table, _, peers[name] = calls(name, boxes, setting)
        # Warmed up: every call at the smallest size (compiling), and at each size our forward, the
        # cheapest call: a process's first use of gigabytes costs seconds of the kernel's page reclaim.
        warm_up = None if boxes == boxes_list[0] else [("forward", "ours")]
        repeat = 1 if boxes >= SINGLE_REPEAT_FROM else repeats
        for (direction, side), ms in benchmark.timed_medians(table, repeat, setting, warm_up).items():
            medians[name, boxes, direction, side] = ms
    return medians, peers


def peak_in_this_process(name, boxes, side):
    """``(peak MiB, least MiB)`` of one forward+backward, warmed up on 64 boxes."""
    here = setting()
    warm_up = calls(name, 64, here)[0]["forward+backward", side]
    table, least, _ = calls(name, int(boxes), here)
    return benchmark.peak_mib(table["forward+backward", side], warm_up=warm_up), least


def measure_memory(names, boxes_list, sides):
    keys = [(name, str(boxes), side) for name in names for boxes in boxes_list for side in sides]
    return {(name, int(boxes), side): value
            for (name, boxes, side), value in benchmark.peaks_in_fresh_processes(__file__, keys).items()}


def table(names, boxes_list, medians, peers, peaks, threads, setting):
    lines = ["| operator | boxes | forward (ms) | peer (ms) | ratio | forward+backward (ms) | peer (ms) "
             "| ratio | fwd+bwd ms per 1k boxes | peer | results (MiB) | peak (MiB) | peak / results "
             "| peer peak (MiB) | peer peak / results |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(value, form):
        return "n/a" if value is None else format(value, form)

    for name in names:
        for boxes in boxes_list:
            times = {(d, s): medians.get((name, boxes, d, s)) for d in PASSES for s in SIDES}
            ratio = {d: times[d, "peer"] and times[d, "ours"] / times[d, "peer"] for d in PASSES}
            per_1k = {s: times["forward+backward", s] and 1e3 * times["forward+backward", s] / boxes
                      for s in SIDES}
            peak, least = peaks[name, boxes, "ours"]
            peer_peak = peaks.get((name, boxes, "peer"), (None, None))[0]
            cells = [name, boxes]
            for direction in PASSES:
                cells += [cell(times[direction, "ours"], ".1f"), cell(times[direction, "peer"], ".1f"),
                          cell(ratio[direction], ".2f")]
            cells += [cell(per_1k["ours"], ".1f"), cell(per_1k["peer"], ".1f"), f"{least:.0f}",
                      f"{peak:.0f}", f"{peak / least:.2f}", cell(peer_peak, ".0f"),
                      cell(peer_peak and peer_peak / least, ".2f")]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    peer_names = ", ".join(sorted({peer for peer in peers.values() if peer})) or "none"
    return ("\n".join(lines) + f"\n\nPeers: {peer_names}. "
            + benchmark.machine_and_versions(threads, setting) + "\n")


def plot(names, boxes_list, medians, peaks, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in names:
        for side, style in (("ours", "o-"), ("peer", "s--")):
            values = [medians.get((name, boxes, "forward+backward", side)) for boxes in boxes_list]
            if None not in values:
                label = f"{name}, {'numba_droi' if side == 'ours' else 'torchvision'}"
                time_axis.plot(boxes_list, [v / 1e3 for v in values], style, label=label)
            memory = [peaks.get((name, boxes, side)) for boxes in boxes_list]
            if None not in memory:
                memory_axis.plot(boxes_list, [peak / least for peak, least in memory], style, label=label)
    time_axis.set(xscale="log", yscale="log", xlabel="boxes", ylabel="forward+backward (s)",
                  title="time (log-log: linear growth is a slope of 1)")
    memory_axis.axhline(1.1, color="grey", lw=0.8, ls=":")
    memory_axis.set(xscale="log", xlabel="boxes", ylabel="peak / results' memory",
                    title="peak memory of a forward+backward")
    for axis in (time_axis, memory_axis):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operators", nargs="+", default=["roi_align"])
    parser.add_argument("--boxes", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--peak", nargs=3, metavar=("OPERATOR", "BOXES", "SIDE"),
                        help="(internal) print one peak in this process")
    args = parser.parse_args(argv)
    numba_droi.set_num_threads(args.threads)
    if args.peak:
        print(json.dumps(peak_in_this_process(*args.peak)))
        return
    here = setting()
    boxes_list = sorted(args.boxes)
    medians, peers = measure_time(args.operators, boxes_list, args.repeats, here)
    sides = SIDES if here.torchvision is not None else ("ours",)
    peaks = measure_memory(args.operators, boxes_list, sides)
    text = table(args.operators, boxes_list, medians, peers, peaks, args.threads, here)
    print(text)
    if not args.no_save:
        with open(os.path.join(RESULTS, "bench_scale_cpu.md"), "w") as f:
            f.write("# Time and memory against the number of boxes, to 100k\n\n" + __doc__.split("\n\n")[1]
                    .replace("\n", " ") + "\n\n" + text)
        plot(args.operators, boxes_list, medians, peaks, os.path.join(RESULTS, "bench_scale_cpu.png"))


if __name__ == "__main__":
    main()
