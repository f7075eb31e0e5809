"""RoI Pool kernels (Fast R-CNN max pooling), in three parts.

* The body, shared by the targets: ``pool_box``, ``pool_bin`` and ``pool_window``, the integer
  geometry it shares with PS RoI Pool (kernels/ps_roi.py): box corners rounded half away from zero,
  bins ``floor(i*bin) .. ceil((i+1)*bin)`` shifted by the box start and clipped to the map;
  ``roi_pool_window``, one output element and its argmax; ``roi_pool_scatter``, the backward's add of
  an output's gradient at its argmax (atomic on the GPU).
* The cuda schedule: ``*_cuda`` kernels, a thread per output element; the deterministic backward, a
  thread per gradient plane.
* The cpu fast path: ``*_cpu`` drivers, ``pool_bounds`` and ``roi_pool_window_channels``: the
  forward box by box over a channels-last copy (each bin scanned once for every channel), the backward
  channel by channel.

The tests run the cuda kernels themselves on the cpu (``_backend.cuda_kernels_on_cpu``) and require
the cpu fast path to give their outputs bit for bit and their gradients to rounding.

Kernel arguments: ``(features, rois, spatial_scale, output, argmax)`` and
``(grad_output, rois, argmax, grad_input)``, with ``spatial_scale`` of the features' dtype, ``argmax``
int32 of the output's shape (the flat index ``h*W + w`` in the box's feature plane, -1 for an empty
bin; or empty, when only the output is wanted) and ``grad_input`` zero-filled.
"""
import math

import numpy as np

from .._backend import (add_4d, ceil_int, cpu_function, cuda_kernel, floor_int, jitable,
                        jitable_inlined_on_cpu, parallel_for, thread_start, thread_stride, zero_in_order)
from .roi_align import channels_last, unravel_output_index

# Scaled box coordinates are clamped to +-2**30 before rounding, so that the integer geometry of an
# absurdly large (finite) box cannot overflow; it changes nothing for boxes of any real image.
COORDINATE_LIMIT = 2 ** 30


# -- body: one output element and its gradient, from the definition --------------------------------

@jitable
def round_half_away(value):
    """``value`` rounded to the nearest int, halves away from zero (C's ``round``)."""
    f = type(value)
    magnitude = abs(value)
    rounded = floor_int(magnitude)
    if magnitude - f(rounded) >= f(0.5):
        rounded += 1
    return rounded if value >= f(0) else -rounded


@jitable
def pool_box(rois, k, spatial_scale, plus_one, pooled_h, pooled_w):
    """Integer geometry of box ``k``: ``(batch, y_start, x_start, bin_h, bin_w)``.

    Corners are scaled and rounded half away from zero; the size is ``end - start + plus_one``, at
    least 1 (``plus_one`` is 1 for RoI Pool, 0 for PS RoI Pool). A box with a non-finite coordinate
    gets bins of size 0 at the origin: every bin is empty.
    """
    f = rois.dtype.type
    limit = f(COORDINATE_LIMIT)
    x1 = rois[k, 1] * spatial_scale
    y1 = rois[k, 2] * spatial_scale
    x2 = rois[k, 3] * spatial_scale
    y2 = rois[k, 4] * spatial_scale
    if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
        return int(rois[k, 0]), 0, 0, f(0), f(0)
    x_start = round_half_away(min(max(x1, -limit), limit))
    y_start = round_half_away(min(max(y1, -limit), limit))
    roi_w = max(round_half_away(min(max(x2, -limit), limit)) - x_start + plus_one, 1)
    roi_h = max(round_half_away(min(max(y2, -limit), limit)) - y_start + plus_one, 1)
    return int(rois[k, 0]), y_start, x_start, f(roi_h) / f(pooled_h), f(roi_w) / f(pooled_w)


@jitable
def pool_bin(start, bin_size, index, size):
    """``(low, high)``: bin ``index`` of an axis, pixels ``low <= i < high``, clipped to ``[0, size]``."""
    f = type(bin_size)
    low = floor_int(f(index) * bin_size) + start
    high = ceil_int(f(index + 1) * bin_size) + start
    return min(max(low, 0), size), min(max(high, 0), size)


@jitable
def pool_window(box, ph, pw, height, width):
    """``(h_low, h_high, w_low, w_high)`` of bin ``(ph, pw)`` of the box ``pool_box`` gave."""
    _, y_start, x_start, bin_h, bin_w = box
    h_low, h_high = pool_bin(y_start, bin_h, ph, height)
    w_low, w_high = pool_bin(x_start, bin_w, pw, width)
    return h_low, h_high, w_low, w_high


@jitable_inlined_on_cpu
def roi_pool_window(features, n, c, h_low, h_high, w_low, w_high):
    """``(maximum, argmax)`` of ``features[n, c, h_low:h_high, w_low:w_high]``, scanned row-major with
    strict ``>`` (the first maximum wins); ``(0, -1)`` for an empty window."""
    if h_high <= h_low or w_high <= w_low:
        return features.dtype.type(0), -1
    best = features[n, c, h_low, w_low]
    best_index = h_low * features.shape[3] + w_low
    for h in range(h_low, h_high):
        for w in range(w_low, w_high):
            if features[n, c, h, w] > best:
                best = features[n, c, h, w]
                best_index = h * features.shape[3] + w
    return best, best_index


@jitable_inlined_on_cpu
def roi_pool_scatter(grad, grad_input, n, c, index, atomic=True):
    """Add ``grad`` at flat ``index = h*W + w`` of ``grad_input[n, c]`` (atomically on the GPU unless
    ``atomic`` is False); nothing for -1."""
    if index >= 0:
        width = grad_input.shape[3]
        h = index // width
        add_4d(grad_input, n, c, h, index - h * width, grad, atomic)


# -- cuda schedule ---------------------------------------------------------------------------------

@cuda_kernel("F4 F2 f F4 J4")
def roi_pool_forward_cuda(features, rois, spatial_scale, output, argmax):
    for index in range(thread_start(), output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, output.shape)
        box = pool_box(rois, k, spatial_scale, 1, output.shape[2], output.shape[3])
        h_low, h_high, w_low, w_high = pool_window(box, ph, pw, features.shape[2], features.shape[3])
        output[k, c, ph, pw], index = roi_pool_window(features, box[0], c, h_low, h_high, w_low,
                                                      w_high)
        if argmax.size:
            argmax[k, c, ph, pw] = index


@cuda_kernel("F4 F2 J4 F4")
def roi_pool_backward_cuda(grad_output, rois, argmax, grad_input):
    for index in range(thread_start(), grad_output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, grad_output.shape)
        roi_pool_scatter(grad_output[k, c, ph, pw], grad_input, int(rois[k, 0]), c,
                         argmax[k, c, ph, pw])


@cuda_kernel("F4 F2 J4 F4")
def roi_pool_backward_deterministic_cuda(grad_output, rois, argmax, grad_input):
    # One thread per plane grad_input[n, c], boxes in order, no atomics (see kernels/roi_align.py).
    channels = grad_input.shape[1]
    for plane in range(thread_start(), grad_input.shape[0] * channels, thread_stride()):
        n = plane // channels
        c = plane - n * channels
        for k in range(grad_output.shape[0]):
            if int(rois[k, 0]) != n:
                continue
            for ph in range(grad_output.shape[2]):
                for pw in range(grad_output.shape[3]):
                    roi_pool_scatter(grad_output[k, c, ph, pw], grad_input, n, c, argmax[k, c, ph, pw],
                                     False)


# -- cpu fast path: the body's values by another schedule ------------------------------------------

# The cpu forward is box-outer over a channels-last copy of the features: each bin is scanned once
# for all channels (every box's bins computed first). The cpu backward gives each parallel iteration
# one channel, so that no two iterations write the same input-gradient element; it zeroes the
# channel's planes again in order before the boxes add at their argmaxes (see zero_in_order).

@cpu_function
def pool_bounds(rois, spatial_scale, plus_one, pooled_h, pooled_w, height, width):
    """Every box's bins as ``pool_window`` gives them, for cpu drivers that reuse them across channels:
    rows ``bounds[k, 0, ph] <= h < bounds[k, 1, ph]`` of bin row ``ph``, columns ``bounds[k, 2, pw]
    <= w < bounds[k, 3, pw]`` of bin column ``pw`` (a window is a row range times a column range)."""
    bounds = np.empty((rois.shape[0], 4, max(pooled_h, pooled_w)), np.int64)
    for k in range(rois.shape[0]):
        _, y_start, x_start, bin_h, bin_w = pool_box(rois, k, spatial_scale, plus_one, pooled_h,
                                                     pooled_w)
        for ph in range(pooled_h):
            bounds[k, 0, ph], bounds[k, 1, ph] = pool_bin(y_start, bin_h, ph, height)
        for pw in range(pooled_w):
            bounds[k, 2, pw], bounds[k, 3, pw] = pool_bin(x_start, bin_w, pw, width)
    return bounds


@jitable_inlined_on_cpu(by_numba=True)
def roi_pool_window_channels(best, best_index, pixels, width, h_low, h_high, w_low, w_high):
    """``roi_pool_window`` of every channel of a channels-last image ``pixels[h*W + w, c]`` at once,
    into ``best[c]`` and ``best_index[c]``: the same scan, so the same maximum and argmax."""
    if h_high <= h_low or w_high <= w_low:
        best[:] = best.dtype.type(0)
        best_index[:] = -1
    else:
        start = h_low * width + w_low
        for c in range(best.shape[0]):  # (an element loop: an array copy would compile its error path)
            best[c] = pixels[start, c]
            best_index[c] = start
        for h in range(h_low, h_high):
            for w in range(w_low, w_high):
                position = h * width + w
                values = pixels[position]
                for c in range(best.shape[0]):
                    larger = values[c] > best[c]
                    best[c] = values[c] if larger else best[c]
                    best_index[c] = position if larger else best_index[c]


def roi_pool_forward_cpu(features, rois, spatial_scale, output, argmax):
    bounds = pool_bounds(rois, spatial_scale, 1, *output.shape[2:], *features.shape[2:])
    parallel_for(_roi_pool_forward_boxes, rois.shape[0], channels_last(features), features.shape[3], rois,
                 bounds, output, argmax)


@cpu_function
def _roi_pool_forward_boxes(start, stop, pixels, width, rois, bounds, output, argmax):
    channels, pooled_h, pooled_w = output.shape[1:]
    store_argmax = argmax.size > 0
    for k in range(start, stop):
        image = pixels[int(rois[k, 0]), 0]
        best = np.empty(channels, pixels.dtype)
        best_index = np.empty(channels, np.int32)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                roi_pool_window_channels(best, best_index, image, width, bounds[k, 0, ph],
                                         bounds[k, 1, ph], bounds[k, 2, pw], bounds[k, 3, pw])
                for c in range(channels):
                    output[k, c, ph, pw] = best[c]
                if store_argmax:
                    for c in range(channels):
                        argmax[k, c, ph, pw] = best_index[c]


def roi_pool_backward_cpu(grad_output, rois, argmax, grad_input):
    parallel_for(_roi_pool_backward_channels, grad_output.shape[1], grad_output, rois, argmax, grad_input)


@cpu_function
def _roi_pool_backward_channels(start, stop, grad_output, rois, argmax, grad_input):
    boxes, channels, pooled_h, pooled_w = grad_output.shape
    grad_planes = grad_input.reshape((-1, grad_input.shape[2] * grad_input.shape[3]))
    for c in range(start, stop):
        for n in range(grad_input.shape[0]):
            zero_in_order(grad_planes[n * channels + c])
        for k in range(boxes):
            grad_plane = grad_planes[int(rois[k, 0]) * channels + c]
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    index = argmax[k, c, ph, pw]  # flat in the plane, as roi_pool_scatter reads it
                    if index >= 0:
                        grad_plane[index] += grad_output[k, c, ph, pw]


KERNELS = {
    "forward": {"cpu": roi_pool_forward_cpu, "cuda": roi_pool_forward_cuda},
    "backward": {"cpu": roi_pool_backward_cpu, "cuda": roi_pool_backward_cuda,
                 "cuda_deterministic": roi_pool_backward_deterministic_cuda},
}
