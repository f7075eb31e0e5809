"""CPU benchmark of the RoI operators beyond the axis-aligned box: rotated, max-mode and precise RoI
pooling against RoI Align of the same (unturned) boxes, box gradients, and multi-scale RoI Align on an
FPN.

Each operator runs forward and forward+backward at the detection case (2x256x50x68 float32 features,
512 boxes of 16 to 512 pixels at stride 16, 7x7 bins) beside ``roi_align`` with 2x2 samples per bin
(torchvision's when importable, else ours), repeats interleaved; prroi_pool's forward+backward
includes its box gradient. RoI Align and deformable RoI pooling run forward+backward again with their
boxes differentiated too, beside the peers of bench.py (which give the boxes no gradient: the ratio
says what ours costs with it against the peer's without). Multi-scale RoI Align pools 512 boxes from
four levels of an 800x1088 image (strides 4 to 32, 256 channels) against torchvision's
``MultiScaleRoIAlign`` when importable (timed alone otherwise). Prints the table and saves it with a
plot under experiments/results/.

    python experiments/bench_roi_geometry.py [--threads 2] [--repeats 15]
"""
import argparse
import os
import sys

import numpy as np

import numba_droi
from numba_droi import functional as F
from numba_droi import benchmark, demo, registry
from numba_droi.benchmark import Setting, case_calls, measure, table, timed_medians, torchvision_installed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import RESULTS, plot  # noqa: E402

OPERATORS = ("roi_align_rotated", "roi_align_max", "prroi_pool")
WITH_BOX_GRADIENTS = ("roi_align", "deform_roi_pool")
IMAGE = (800, 1088)


def pyramid(rng, boxes=512, channels=256):
    """Four FPN levels (strides 4 to 32) of one 800x1088 image, twice, and boxes of 16 to 512 pixels."""
    features = [rng.standard_normal((2, channels, IMAGE[0] // s, IMAGE[1] // s)).astype(np.float32)
                for s in (4, 8, 16, 32)]
    size = np.exp(rng.uniform(np.log(16), np.log(512), (boxes, 2)))
    centre = rng.uniform(0, 1, (boxes, 2)) * (IMAGE[1], IMAGE[0])
    rois = np.concatenate([np.repeat([0, 1], boxes // 2)[:, None], centre - size / 2, centre + size / 2], 1)
    return features, rois.astype(np.float32)


class _MultiScaleCase:
    """``benchmark.Case``'s fields for multi-scale RoI Align: ours on Tensors of the levels, the peer
    torchvision's layer on torch tensors."""

    def __init__(self, setting, rng):
        features, rois = pyramid(rng)
        image_shapes = [IMAGE, IMAGE]
        self.inputs = features

        def ours(*levels):
            return F.multi_scale_roi_align(list(levels), rois, image_shapes, 7, 2)
        self.ours = ours
        self.peer = self.peer_name = None
        self.peer_inputs, self.torch_peer = features, True
        if setting.torchvision is not None:
            names = ["0", "1", "2", "3"]
            layer = setting.torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
            boxes = [setting.torch.from_numpy(rois[rois[:, 0] == i, 1:]) for i in range(2)]

            def peer(*levels):
                return layer(dict(zip(names, levels)), boxes, image_shapes)
            self.peer, self.peer_name = peer, "torchvision"


def with_box_gradient(name, setting):
    """The benchmark case of ``name`` with its boxes among the arrays differentiated, and its usual
    peer."""
    operator = registry.BY_NAME[name]
    usual = benchmark.case(name, setting)
    example, _ = operator.benchmark(np.random.default_rng(0))
    usual.inputs, usual.ours = demo.example_call(operator, example, setting.array)
    return usual


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    numba_droi.set_num_threads(args.threads)
    setting = Setting("cpu", torchvision=torchvision_installed())
    rows = measure(OPERATORS, args.repeats, setting)
    multi_scale = _MultiScaleCase(setting, np.random.default_rng(0))
    medians = timed_medians(case_calls(multi_scale, setting), args.repeats, setting)
    rows += [("multi_scale_roi_align", direction, medians[direction, "ours"], multi_scale.peer_name,
              medians.get((direction, "peer"))) for direction in ("forward", "forward+backward")]
    with setting.context():
        for name in WITH_BOX_GRADIENTS:
            case = with_box_gradient(name, setting)
            medians = timed_medians(case_calls(case, setting), args.repeats, setting)
            rows.append((f"{name} (box gradient too)", "forward+backward",
                         medians["forward+backward", "ours"], case.peer_name,
                         medians.get(("forward+backward", "peer"))))
    text = table(rows, args.threads, setting)
    print(text)
    if not args.no_save:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "bench_roi_geometry_cpu.md"), "w") as f:
            f.write("# CPU benchmark: rotated, max-mode, precise and multi-scale RoI pooling\n\n" + text)
        plot(rows, os.path.join(RESULTS, "bench_roi_geometry_cpu.png"))
    return rows


if __name__ == "__main__":
    main()
