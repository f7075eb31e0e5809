"""The benchmark cases: every operator at a detection-sized case, side by side with a peer, and the
measuring of forward and forward+backward times (``python -m numba_droi bench``,
``experiments/bench.py``)."""
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


def detection_case(rng, batch=2, channels=256, height=50, width=68, boxes=512, dtype=np.float32):
    """Features of a stride-16 map of an 800x1088 image and boxes of 16 to 512 pixels on it."""
    features = rng.standard_normal((batch, channels, height, width)).astype(dtype)
    size = np.exp(rng.uniform(np.log(16), np.log(512), (boxes, 2)))
    centre = rng.uniform(0, 1, (boxes, 2)) * (width * 16, height * 16)
    rois = np.concatenate([rng.integers(0, batch, (boxes, 1)), centre - size / 2, centre + size / 2], 1)
    return features, rois.astype(dtype)


class Case:
    """One benchmark row pair: ``ours(*tensors)`` on Tensors made of ``inputs`` (the arrays that get
    gradients), and the ``peer`` named ``peer_name`` on ``peer_inputs`` (default: ``inputs``) as torch
    tensors when the peer is torchvision, else as our Tensors."""

    def __init__(self, inputs, ours, peer_name=None, peer=None, peer_inputs=None):
        self.inputs, self.ours = inputs, ours
        self.peer_name, self.peer = peer_name, peer
        self.peer_inputs = inputs if peer_inputs is None else peer_inputs


def roi_align_case(rng):
    features, rois = detection_case(rng)
    options = dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    if torchvision is None:
        return Case([features], lambda x: F.roi_align(x, rois, **options))
    torch_rois = torch.from_numpy(rois)
    return Case([features], lambda x: F.roi_align(x, rois, **options),
                "torchvision", lambda x: torchvision.ops.roi_align(x, torch_rois, **options))


def _torchvision_case(features, ours, peer_name, rois, options):
    """Case of ``ours(x, rois, **options)`` against ``torchvision.ops.<peer_name>`` when installed."""
    def call(x):
        return ours(x, rois, **options)
    if torchvision is None:
        return Case([features], call)
    torch_rois = torch.from_numpy(rois)
    peer = getattr(torchvision.ops, peer_name)
    return Case([features], call, "torchvision", lambda x: peer(x, torch_rois, **options))


def roi_pool_case(rng):
    features, rois = detection_case(rng)
    return _torchvision_case(features, F.roi_pool, "roi_pool", rois,
                             dict(output_size=7, spatial_scale=1 / 16))


def ps_roi_pool_case(rng):
    features, rois = detection_case(rng, channels=10 * 7 * 7)
    return _torchvision_case(features, F.ps_roi_pool, "ps_roi_pool", rois,
                             dict(output_size=7, spatial_scale=1 / 16))


def ps_roi_align_case(rng):
    features, rois = detection_case(rng, channels=10 * 7 * 7)
    return _torchvision_case(features, F.ps_roi_align, "ps_roi_align", rois,
                             dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=2))


def deform_roi_pool_case(rng):
    features, rois = detection_case(rng)
    offset = (0.1 * rng.standard_normal((len(rois), 2, 7, 7))).astype(features.dtype)
    options = dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=2)
    return Case([features, offset], lambda x, o: F.deform_roi_pool(x, rois, o, **options),
                "numba_droi roi_align", lambda x: F.roi_align(x, rois, aligned=True, **options),
                [features])


def deform_psroi_pool_case(rng):
    """R-FCN: 7x7 bins, groups and parts, 4 samples per part side, 10 x 49 channels."""
    features, rois = detection_case(rng, channels=10 * 49)
    trans = rng.standard_normal((len(rois), 2, 7, 7)).astype(features.dtype)
    ours = Case([features, trans],
                lambda x, t: F.deform_psroi_pool(x, rois, t, 1 / 16, 10, 7, 7, 7, 4, 0.1))
    if hasattr(F, "ps_roi_align"):
        ours.peer_name, ours.peer = "numba_droi ps_roi_align", lambda x: F.ps_roi_align(
            x, rois, 7, 1 / 16, sampling_ratio=4)
        ours.peer_inputs = [features]
    return ours


def deform_conv2d_case(rng):
    """Batch 2, 64 -> 64 channels, 64x64, 3x3 kernel, padding 1, random offsets (DCNv1)."""
    features = rng.standard_normal((2, 64, 64, 64)).astype(np.float32)
    offset = rng.uniform(-2, 2, (2, 18, 64, 64)).astype(np.float32)
    weight = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    inputs = [features, offset, weight, bias]

    def ours(x, o, w, b):
        return F.deform_conv2d(x, o, w, b, padding=1)
    if torchvision is None:
        return Case(inputs, ours)
    return Case(inputs, ours, "torchvision",
                lambda x, o, w, b: torchvision.ops.deform_conv2d(x, o, w, b, padding=1))


# operator -> function(rng) -> Case, at the detection-sized case of that operator
CASES = {"roi_align": roi_align_case, "roi_pool": roi_pool_case, "ps_roi_pool": ps_roi_pool_case,
         "ps_roi_align": ps_roi_align_case, "deform_roi_pool": deform_roi_pool_case,
         "deform_psroi_pool": deform_psroi_pool_case, "deform_conv2d": deform_conv2d_case}


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _peer_tensors(case):
    if case.peer_name == "torchvision":
        return [torch.from_numpy(a).requires_grad_(True) for a in case.peer_inputs]
    return [Tensor(a, requires_grad=True) for a in case.peer_inputs]


def _detached(tensors):
    return [t.detach() for t in tensors]


def measure(names, repeats):
    rows = []
    for name in names:
        case = CASES[name](np.random.default_rng(0))
        xs = [Tensor(a, requires_grad=True) for a in case.inputs]
        out = case.ours(*xs)
        grad = np.ones(out.shape, out.dtype)
        calls = {
            ("forward", "ours"): lambda: case.ours(*_detached(xs)),
            ("forward+backward", "ours"): lambda: case.ours(*xs).backward(grad),
        }
        if case.peer is not None:
            peer_xs = _peer_tensors(case)
            if case.peer_name == "torchvision":
                peer_grad = torch.ones(tuple(case.peer(*peer_xs).shape), dtype=peer_xs[0].dtype)
                calls[("forward", "peer")] = lambda: _no_grad(case.peer, _detached(peer_xs))
            else:
                peer_grad = np.ones(case.peer(*peer_xs).shape, out.dtype)
                calls[("forward", "peer")] = lambda: case.peer(*_detached(peer_xs))
            calls[("forward+backward", "peer")] = lambda: case.peer(*peer_xs).backward(peer_grad)
        times = {key: [] for key in calls}
        for fn in calls.values():
            fn()  # compile and warm up
        for _ in range(repeats):  # interleaved: both sides see the same machine state
            for key, fn in calls.items():
                times[key].append(_timed(fn))
        for direction in ("forward", "forward+backward"):
            ours_ms = 1e3 * statistics.median(times[direction, "ours"])
            peer_ms = (1e3 * statistics.median(times[direction, "peer"])
                       if (direction, "peer") in times else None)
            rows.append((name, direction, ours_ms, case.peer_name, peer_ms))
        print(f"  {name}: done", file=sys.stderr, flush=True)
    return rows


def _no_grad(fn, xs):
    with torch.no_grad():
        return fn(*xs)


def table(rows, threads):
    lines = ["| operator | pass | numba_droi (ms) | peer | peer (ms) | ratio |",
             "|---|---|---:|---|---:|---:|"]
    for name, direction, ours, peer_name, peer in rows:
        peer_text = f"{peer:.1f}" if peer is not None else "n/a"
        ratio = f"{ours / peer:.2f}" if peer is not None else "n/a"
        lines.append(f"| {name} | {direction} | {ours:.1f} | {peer_name or 'n/a'} | {peer_text} | {ratio} |")
    versions = (f"numba_droi {numba_droi.__version__}, numba {numba.__version__}, numpy {np.__version__}"
                + (f", torch {torch.__version__}, torchvision {torchvision.__version__}" if torch else ""))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads"
    return "\n".join(lines) + f"\n\nMachine: {machine}. Versions: {versions}.\n"
