"""RoI Align kernels: one source for the cpu and the cuda target.

``roi_align_box`` computes a box's geometry, ``roi_align_bin`` one output element from it and
``roi_align_bin_backward`` scatters that element's gradient into the input gradient (atomically on the
GPU). The cuda kernels and cpu drivers below only decide which thread computes what.

Kernel arguments: ``(features, rois, spatial_scale, sampling_ratio, aligned, output)`` and
``(grad_output, rois, spatial_scale, sampling_ratio, aligned, grad_input)``, with ``spatial_scale`` of
the features' dtype and ``grad_input`` zero-filled.
"""
import math

import numba
import numpy as np

from .._backend import (cpu_driver, cuda_kernel, jitable, jitable_inlined_on_cpu, thread_start,
                        thread_stride)
from .bilinear import b1_interpolate, b1_scatter, b1_value, b1_weights

# The most samples per bin side. The adaptive grid ``ceil(bin size)`` is capped at it and an explicit
# sampling_ratio above it is refused (ops level), so that an absurdly large finite box (coordinates of
# 1e30, say) costs bounded time and memory instead of an astronomical grid. Bins of real feature maps
# are far smaller; torchvision has no such bound (and never finishes on such a box).
MAX_SAMPLING_RATIO = 256


@jitable
def unravel_output_index(index, shape):
    """``(k, c, ph, pw)`` of flat ``index`` in a C-contiguous ``(K, C, PH, PW)`` array."""
    pw = index % shape[3]
    index //= shape[3]
    ph = index % shape[2]
    index //= shape[2]
    return index // shape[1], index % shape[1], ph, pw


@jitable
def roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w):
    """Geometry of box ``k``: ``(batch, y_start, x_start, bin_h, bin_w, grid_h, grid_w)``.

    A box with a non-finite coordinate gets an empty sampling grid, so its output is 0. The grid has
    at most ``MAX_SAMPLING_RATIO`` samples per side.
    """
    f = rois.dtype.type
    offset = f(0.5) if aligned else f(0)
    x1 = rois[k, 1] * spatial_scale - offset
    y1 = rois[k, 2] * spatial_scale - offset
    roi_w = rois[k, 3] * spatial_scale - offset - x1
    roi_h = rois[k, 4] * spatial_scale - offset - y1
    # (before the clamp below, which would turn an end at -inf into a box of size 1)
    finite = math.isfinite(x1) and math.isfinite(y1) and math.isfinite(roi_w) and math.isfinite(roi_h)
    if not aligned:
        roi_w = max(roi_w, f(1))
        roi_h = max(roi_h, f(1))
    bin_h = roi_h / f(pooled_h)
    bin_w = roi_w / f(pooled_w)
    grid_h = 0
    grid_w = 0
    if finite:
        # reversed boxes of aligned mode have negative bins: an empty grid
        # (capped as a float: the int of a huge float is undefined)
        limit = f(MAX_SAMPLING_RATIO)
        grid_h = (min(sampling_ratio, MAX_SAMPLING_RATIO) if sampling_ratio > 0
                  else int(math.ceil(min(max(bin_h, f(0)), limit))))
        grid_w = (min(sampling_ratio, MAX_SAMPLING_RATIO) if sampling_ratio > 0
                  else int(math.ceil(min(max(bin_w, f(0)), limit))))
    return int(rois[k, 0]), y1, x1, bin_h, bin_w, grid_h, grid_w


@jitable
def roi_align_sample(box, ph, pw, iy, ix):
    """``(y, x)`` of sample ``(iy, ix)`` in bin ``(ph, pw)``: the centre of its cell of the grid."""
    _, y_start, x_start, bin_h, bin_w, grid_h, grid_w = box
    f = type(bin_h)
    return (y_start + f(ph) * bin_h + (f(iy) + f(0.5)) * bin_h / f(grid_h),
            x_start + f(pw) * bin_w + (f(ix) + f(0.5)) * bin_w / f(grid_w))


@jitable
def roi_align_bin(features, c, ph, pw, box):
    """Output of bin ``(ph, pw)`` in channel ``c`` of the box whose geometry ``roi_align_box`` gave."""
    f = features.dtype.type
    n, _, _, _, _, grid_h, grid_w = box
    total = f(0)
    for iy in range(grid_h):
        for ix in range(grid_w):
            y, x = roi_align_sample(box, ph, pw, iy, ix)
            total += b1_value(features, n, c, y, x)
    return total / f(max(grid_h * grid_w, 1))


@jitable
def roi_align_bin_backward(grad, grad_input, c, ph, pw, box, atomic=True):
    """Scatter ``grad``, the gradient of ``roi_align_bin(..., c, ph, pw, box)``, into ``grad_input``
    (atomically on the GPU unless ``atomic`` is False)."""
    f = grad_input.dtype.type
    n, _, _, _, _, grid_h, grid_w = box
    grad = grad / f(max(grid_h * grid_w, 1))
    for iy in range(grid_h):
        for ix in range(grid_w):
            y, x = roi_align_sample(box, ph, pw, iy, ix)
            y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh, _, _ = b1_weights(grad_input, y, x)
            b1_scatter(grad_input, n, c, y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh, grad,
                       atomic)


# The cuda kernels give each thread one output element; the cpu drivers give each parallel iteration
# one (box, channel) pair and reuse the box geometry across its bins. The backward partitions by
# channel on the cpu, so that no two parallel iterations write the same input-gradient element.

@cuda_kernel("F4 F2 f i b F4")
def roi_align_forward_cuda(features, rois, spatial_scale, sampling_ratio, aligned, output):
    for index in range(thread_start(), output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, output.shape)
        box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, output.shape[2],
                            output.shape[3])
        output[k, c, ph, pw] = roi_align_bin(features, c, ph, pw, box)


@cuda_kernel("F4 F2 f i b F4")
def roi_align_backward_cuda(grad_output, rois, spatial_scale, sampling_ratio, aligned, grad_input):
    for index in range(thread_start(), grad_output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, grad_output.shape)
        box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, grad_output.shape[2],
                            grad_output.shape[3])
        roi_align_bin_backward(grad_output[k, c, ph, pw], grad_input, c, ph, pw, box)


# The deterministic backwards (cuda, with ``use_deterministic_algorithms(True)``) give each thread one
# plane ``grad_input[n, c]``: it walks the boxes of image ``n`` in order and adds without atomics, so
# every sum has the same order in every run (the order of the cpu drivers).

@cuda_kernel("F4 F2 f i b F4")
def roi_align_backward_deterministic_cuda(grad_output, rois, spatial_scale, sampling_ratio, aligned,
                                          grad_input):
    channels = grad_input.shape[1]
    for plane in range(thread_start(), grad_input.shape[0] * channels, thread_stride()):
        n = plane // channels
        c = plane - n * channels
        for k in range(grad_output.shape[0]):
            if int(rois[k, 0]) != n:
                continue
            box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, grad_output.shape[2],
                                grad_output.shape[3])
            for ph in range(grad_output.shape[2]):
                for pw in range(grad_output.shape[3]):
                    roi_align_bin_backward(grad_output[k, c, ph, pw], grad_input, c, ph, pw, box, False)


@jitable
def roi_align_box_samples(features, box, pooled_h, pooled_w):
    """Corners and weights (rule B1) of every sample of every bin of a box, for cpu drivers that
    reuse them across channels: ``(corners, weights)``, each ``(PH, PW, samples, 4)`` in the order
    of ``b1_weights``."""
    _, _, _, _, _, grid_h, grid_w = box
    samples = grid_h * grid_w
    corners = np.empty((pooled_h, pooled_w, samples, 4), np.int64)
    weights = np.empty((pooled_h, pooled_w, samples, 4), features.dtype)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            for s in range(samples):
                y, x = roi_align_sample(box, ph, pw, s // grid_w, s % grid_w)
                (corners[ph, pw, s, 0], corners[ph, pw, s, 1], corners[ph, pw, s, 2],
                 corners[ph, pw, s, 3], weights[ph, pw, s, 0], weights[ph, pw, s, 1],
                 weights[ph, pw, s, 2], weights[ph, pw, s, 3], _, _) = b1_weights(features, y, x)
    return corners, weights


@jitable_inlined_on_cpu
def roi_align_bin_from_samples(features, n, c, ph, pw, corners, weights):
    """``roi_align_bin`` from the corners and weights ``roi_align_box_samples`` gave."""
    f = features.dtype.type
    total = f(0)
    for s in range(corners.shape[2]):
        total += b1_interpolate(features, n, c, corners[ph, pw, s, 0], corners[ph, pw, s, 1],
                                corners[ph, pw, s, 2], corners[ph, pw, s, 3], weights[ph, pw, s, 0],
                                weights[ph, pw, s, 1], weights[ph, pw, s, 2], weights[ph, pw, s, 3])
    return total / f(max(corners.shape[2], 1))


@cpu_driver
def roi_align_forward_cpu(features, rois, spatial_scale, sampling_ratio, aligned, output):
    # Per box, the corners and weights of every sample are computed once and reused for all channels
    # (the same helpers as roi_align_bin, in a cache-friendly order).
    boxes, channels, pooled_h, pooled_w = output.shape
    for k in numba.prange(boxes):
        box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w)
        corners, weights = roi_align_box_samples(features, box, pooled_h, pooled_w)
        for c in range(channels):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    output[k, c, ph, pw] = roi_align_bin_from_samples(features, box[0], c, ph, pw,
                                                                      corners, weights)


@cpu_driver
def roi_align_backward_cpu(grad_output, rois, spatial_scale, sampling_ratio, aligned, grad_input):
    boxes, channels, pooled_h, pooled_w = grad_output.shape
    for c in numba.prange(channels):
        for k in range(boxes):
            box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w)
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    roi_align_bin_backward(grad_output[k, c, ph, pw], grad_input, c, ph, pw, box)


KERNELS = {
    "forward": {"cpu": roi_align_forward_cpu, "cuda": roi_align_forward_cuda},
    "backward": {"cpu": roi_align_backward_cpu, "cuda": roi_align_backward_cuda,
                 "cuda_deterministic": roi_align_backward_deterministic_cuda},
}
