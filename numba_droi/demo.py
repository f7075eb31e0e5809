"""The main job: run every operator forward and backward on a target, check its gradients by finite
differences, and print a table of results and timings."""
import contextlib
import time

import numpy as np

from . import _backend, functional
from .autograd import Tensor
from .gradcheck import gradcheck


def _boxes(rng, count, batch, height, width, scale):
    """Boxes ``[n, x1, y1, x2, y2]`` in image coordinates (feature coordinates / ``scale``)."""
    low = rng.uniform(-1, 0.8, (count, 2)) * (width, height)
    size = rng.uniform(0.1, 0.6, (count, 2)) * (width, height)
    return np.concatenate([rng.integers(0, batch, (count, 1)), low / scale, (low + size) / scale], 1)


def roi_align_case(rng, batch, channels, height, width, boxes, dtype, xp=np):
    scale = 0.25
    features = rng.standard_normal((batch, channels, height, width)).astype(dtype)
    rois = xp.asarray(_boxes(rng, boxes, batch, height, width, scale).astype(dtype))

    def call(x):
        return functional.roi_align(x, rois, (7, 7), scale, sampling_ratio=2, aligned=True)
    return [features], call


def roi_pool_case(rng, batch, channels, height, width, boxes, dtype, xp=np):
    scale = 0.25
    size = batch * channels * height * width
    # distinct values, far apart next to a finite-difference step: no ties for the maximum
    features = (rng.permutation(size) / size).reshape(batch, channels, height, width).astype(dtype)
    rois = xp.asarray(_boxes(rng, boxes, batch, height, width, scale).astype(dtype))

    def call(x):
        return functional.roi_pool(x, rois, (7, 7), scale)
    return [features], call


def _ps_case(rng, batch, channels, height, width, boxes, dtype, xp):
    """Features with a multiple of 7*7 channels (about ``channels``) for a 7x7 position-sensitive op."""
    channels = max(channels // 49, 1) * 49
    features = rng.standard_normal((batch, channels, height, width)).astype(dtype)
    return features, xp.asarray(_boxes(rng, boxes, batch, height, width, 0.25).astype(dtype))


def ps_roi_pool_case(rng, batch, channels, height, width, boxes, dtype, xp=np):
    features, rois = _ps_case(rng, batch, channels, height, width, boxes, dtype, xp)

    def call(x):
        return functional.ps_roi_pool(x, rois, (7, 7), 0.25)
    return [features], call


def ps_roi_align_case(rng, batch, channels, height, width, boxes, dtype, xp=np):
    features, rois = _ps_case(rng, batch, channels, height, width, boxes, dtype, xp)

    def call(x):
        return functional.ps_roi_align(x, rois, (7, 7), 0.25, sampling_ratio=2)
    return [features], call


def deform_roi_pool_case(rng, batch, channels, height, width, boxes, dtype, xp=np):
    scale = 0.25
    features = rng.standard_normal((batch, channels, height, width)).astype(dtype)
    rois = xp.asarray(_boxes(rng, boxes, batch, height, width, scale).astype(dtype))
    offset = rng.standard_normal((boxes, 2, 3, 3)).astype(dtype)
    mask = rng.uniform(0, 1, (boxes, 1, 3, 3)).astype(dtype)

    def call(x, o, m):  # 3x3 bins keep the gradient check quick on the simulator
        return functional.deform_roi_pool(x, rois, o, (3, 3), scale, sampling_ratio=2, mask=m)
    return [features, offset, mask], call


def deform_psroi_pool_case(rng, batch, channels, height, width, boxes, dtype, xp=np):
    """R-FCN's layout with 2x2 bins, groups and parts; the channels are rounded to a multiple of 4."""
    scale = 0.25
    output_dim = max(channels // 4, 1)
    features = rng.standard_normal((batch, output_dim * 4, height, width)).astype(dtype)
    rois = xp.asarray(_boxes(rng, boxes, batch, height, width, scale).astype(dtype))
    trans = rng.standard_normal((boxes, 2, 2, 2)).astype(dtype)

    def call(x, t):
        return functional.deform_psroi_pool(x, rois, t, scale, output_dim, 2, 2, 2, 2, 0.1)
    return [features, trans], call


def deform_conv2d_case(rng, batch, channels, height, width, boxes, dtype, xp=np):
    channels = min(channels, 16)  # a 3x3 modulated deformable convolution, channels -> channels
    offset_shape = (batch, 18, height, width)
    # offsets off integers: every sample stays away from the kinks of bilinear sampling
    offset = rng.integers(-2, 3, offset_shape) + rng.uniform(0.1, 0.9, offset_shape)
    arrays = [rng.standard_normal((batch, channels, height, width)), offset,
              rng.uniform(0, 1, (batch, 9, height, width)),
              rng.standard_normal((channels, channels, 3, 3)) / (3 * channels ** 0.5)]

    def call(x, o, m, w):
        return functional.deform_conv2d(x, o, w, padding=1, mask=m)
    return [a.astype(dtype) for a in arrays], call


# operator -> a function (rng, batch, channels, height, width, boxes, dtype, xp=np) -> (inputs, call):
# the arrays that get gradients (features first, NumPy arrays) and ``call(*tensors)``, the operator on
# them as Tensors, its other arrays made by ``xp`` (cupy for the GPU).
# A case may adapt the sizes to its operator (channel counts, boxes unused).
OPERATORS = {"roi_align": roi_align_case, "roi_pool": roi_pool_case, "ps_roi_pool": ps_roi_pool_case,
             "ps_roi_align": ps_roi_align_case, "deform_roi_pool": deform_roi_pool_case,
             "deform_psroi_pool": deform_psroi_pool_case, "deform_conv2d": deform_conv2d_case}

SIZES = {  # (batch, channels, height, width, boxes) for the timing and the gradient check
    "timing": {"gpu": (2, 256, 50, 68, 512), "cpu": (2, 256, 50, 68, 512), "simulator": (1, 2, 6, 7, 2)},
    "gradcheck": (1, 2, 9, 10, 3),
}


def run(target=None, repeats=5, out=print):
    """Run the demo on ``target`` ('cpu' or 'cuda'; default: the GPU when there is one)."""
    target = target or ("cuda" if _backend.gpu_available() else "cpu")
    device = "simulator" if target == "cuda" and _backend.SIMULATED else (
        "gpu" if target == "cuda" else "cpu")
    to_target = _backend.cupy.asarray if device == "gpu" else np.asarray
    out(f"numba_droi demo on the {target} target ({device}); float32 timings, float64 gradient check")
    header = ("operator", "input", "output", "first call s", "forward ms", "fwd+bwd ms", "gradcheck")
    rows = []
    with _backend.target(target) if device == "simulator" else contextlib.nullcontext():
        for name, case in OPERATORS.items():
            rng = np.random.default_rng(0)
            arrays, call = case(rng, *SIZES["timing"][device], np.float32, _array_module(device))
            xs = [Tensor(to_target(a), requires_grad=True) for a in arrays]
            start = time.perf_counter()
            output = call(*xs)
            grad = _backend.array_module(output.data).ones(output.shape, output.dtype)
            output.backward(grad)
            _synchronize(device)
            first = time.perf_counter() - start
            forward = _median_ms(lambda: call(*(x.detach() for x in xs)), repeats, device)
            both = _median_ms(lambda: call(*xs).backward(grad), repeats, device)
            arrays64, call64 = case(rng, *SIZES["gradcheck"], np.float64, _array_module(device))
            passed = gradcheck(call64, [Tensor(to_target(a), requires_grad=True) for a in arrays64],
                               raise_exception=False)
            rows.append((name, "x".join(map(str, arrays[0].shape)), "x".join(map(str, output.shape)),
                         f"{first:.2f}", f"{forward:.1f}", f"{both:.1f}", "pass" if passed else "FAIL"))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths)] + rows:
        out("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    return all(row[-1] == "pass" for row in rows)


def _median_ms(fn, repeats, device):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _synchronize(device):
    if device == "gpu":
        _backend.cupy.cuda.get_current_stream().synchronize()


def _array_module(device):
    return _backend.cupy if device == "gpu" else np
