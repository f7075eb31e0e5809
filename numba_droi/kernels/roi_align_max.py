"""Max-mode RoI Align kernels (mmcv's ``RoIAlign(pool_mode="max")``), in three parts.

* The body, shared by the targets: RoI Align's box geometry and samples (kernels/roi_align.py);
  ``roi_align_max_bin``, one output element and its argmax (the winning sample); and
  ``roi_align_max_scatter``, the backward's add of an output's gradient at that sample's four corners
  (atomic on the GPU).
* The cuda schedule: a thread per output element; the deterministic backward, a thread per gradient
  plane.
* The cpu drivers: the forward box by box over a channels-last copy of the features (each bin for
  every channel at once, the body's values bit for bit), the backward channel by channel from roi_align's
  tables of the boxes' sample rows and columns (boxes in order, as the deterministic cuda backward).

Kernel arguments: ``(features, rois, spatial_scale, sampling_ratio, aligned, output, argmax)`` and
``(grad_output, rois, spatial_scale, sampling_ratio, aligned, argmax, grad_input)``, with
``spatial_scale`` of the features' dtype, ``argmax`` int32 of the output's shape (the winning
sample's index ``iy*grid_w + ix`` in its bin, -1 for a bin that none won), flat in the forward (its
index is the output element's: fewer registers), or empty when only the output is wanted, and
``grad_input`` zero-filled.
"""
import math

import numpy as np

from .._backend import cpu_function, cuda_kernel, jitable, parallel_for, thread_start, thread_stride
from .bilinear import (b1_add_rows_channels, b1_axis_inside, b1_axis_weights, b1_scatter, b1_scatter_rows,
                       b1_value, b1_weights)
from .roi_align import channels_last, fill_tables, roi_align_box, roi_align_sample, unravel_output_index


# -- body ------------------------------------------------------------------------------------------

@jitable
def roi_align_max_bin(features, c, ph, pw, box):
    """``(maximum, argmax)`` over the samples of bin ``(ph, pw)`` in channel ``c`` of the box whose
    geometry ``roi_align_box`` gave, in row-major order with strict ``>`` from -inf (the first maximum
    wins; NaN samples never do, and a bin of only NaN and -inf samples gives ``(-inf, -1)``); ``(0,
    -1)`` for an empty grid."""
    f = features.dtype.type
    n, _, _, _, _, grid_h, grid_w = box
    if grid_h * grid_w == 0:
        return f(0), -1
    best = f(-math.inf)
    best_index = -1
    for sample in range(grid_h * grid_w):  # (one loop: fewer registers than two)
        iy = sample // grid_w
        y, x = roi_align_sample(box, ph, pw, iy, sample - iy * grid_w)
        value = b1_value(features, n, c, y, x)
        if value > best:
            best = value
            best_index = sample
    return best, best_index


@jitable
def roi_align_max_scatter(grad, grad_input, c, ph, pw, box, index, atomic=True):
    """Add ``grad`` times the B1 weights of sample ``index`` of bin ``(ph, pw)`` into ``grad_input``
    (atomically on the GPU unless ``atomic`` is False); nothing for -1 or an index outside the
    grid."""
    n, _, _, _, _, grid_h, grid_w = box
    if 0 <= index < grid_h * grid_w:
        iy = index // grid_w
        y, x = roi_align_sample(box, ph, pw, iy, index - iy * grid_w)
        y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh, _, _ = b1_weights(grad_input, y, x)
        b1_scatter(grad_input, n, c, y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh, grad, atomic)


# -- cuda schedule ---------------------------------------------------------------------------------

@cuda_kernel("F4 F2 f i b F4 J1")
def roi_align_max_forward_cuda(features, rois, spatial_scale, sampling_ratio, aligned, output, argmax):
    for index in range(thread_start(), output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, output.shape)
        box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, output.shape[2],
                            output.shape[3])
        output[k, c, ph, pw], winner = roi_align_max_bin(features, c, ph, pw, box)
        if argmax.size:
            argmax[index] = winner


@cuda_kernel("F4 F2 f i b J4 F4")
def roi_align_max_backward_cuda(grad_output, rois, spatial_scale, sampling_ratio, aligned, argmax,
                                grad_input):
    for index in range(thread_start(), grad_output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, grad_output.shape)
        box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, grad_output.shape[2],
                            grad_output.shape[3])
        roi_align_max_scatter(grad_output[k, c, ph, pw], grad_input, c, ph, pw, box, argmax[k, c, ph, pw])


@cuda_kernel("F4 F2 f i b J4 F4")
def roi_align_max_backward_deterministic_cuda(grad_output, rois, spatial_scale, sampling_ratio, aligned,
                                              argmax, grad_input):
    # One thread per plane grad_input[n, c], boxes in order, no atomics (see kernels/roi_align.py).
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
                    roi_align_max_scatter(grad_output[k, c, ph, pw], grad_input, c, ph, pw, box,
                                          argmax[k, c, ph, pw], False)


# -- cpu drivers -----------------------------------------------------------------------------------

def roi_align_max_forward_cpu(features, rois, spatial_scale, sampling_ratio, aligned, output, argmax):
    parallel_for(_forward_boxes, rois.shape[0], channels_last(features), features, rois, spatial_scale,
                 sampling_ratio, aligned, output, argmax)


@cpu_function
def _forward_boxes(start, stop, pixels, features, rois, spatial_scale, sampling_ratio, aligned, output,
                   argmax):
    # Each bin for every channel at once from a channels-last copy: every sample's value for all the
    # channels (the body's sums, see kernels/roi_align_rotated.py), then the body's comparisons.
    channels, pooled_h, pooled_w = output.shape[1:]
    height, width = features.shape[2], features.shape[3]
    f = pixels.dtype.type
    value = np.empty(channels, pixels.dtype)
    best = np.empty(channels, pixels.dtype)
    winner = np.empty(channels, np.int32)
    for k in range(start, stop):
        box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w)
        image, grid_h, grid_w = pixels[box[0], 0], box[5], box[6]
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                best[:] = -math.inf
                winner[:] = -1
                for sample in range(grid_h * grid_w):
                    iy = sample // grid_w
                    y, x = roi_align_sample(box, ph, pw, iy, sample - iy * grid_w)
                    y_low, y_high, hy, ly, _ = b1_axis_weights(features, y, height)
                    x_low, x_high, hx, lx, _ = b1_axis_weights(features, x, width)
                    value[:] = 0
                    if hy + ly != 0 and hx + lx != 0:
                        b1_add_rows_channels(value, image, 0, y_low * width, y_high * width, hy, ly, x_low,
                                             x_high, hx, lx)
                    for c in range(channels):
                        if value[c] > best[c]:
                            best[c] = value[c]
                            winner[c] = sample
                for c in range(channels):
                    output[k, c, ph, pw] = best[c] if grid_h * grid_w else f(0)
                    if argmax.size:
                        argmax[((k * channels + c) * pooled_h + ph) * pooled_w + pw] = winner[c]


def roi_align_max_backward_cpu(grad_output, rois, spatial_scale, sampling_ratio, aligned, argmax,
                               grad_input):
    # A parallel iteration per channel, which owns its gradient planes (in cache while every box adds
    # to them); the winning samples' rows and columns from roi_align's tables, computed once, and
    # found from the argmax through a table of each box's samples (no division per element).
    tables = fill_tables(grad_input, rois, spatial_scale, sampling_ratio, aligned, *grad_output.shape[2:])
    planes = grad_input.reshape(grad_input.shape[0], grad_input.shape[1], -1)
    parallel_for(_backward_channels, grad_input.shape[1], grad_output, rois, argmax, *tables,
                 *_sample_tables(tables[0], grad_output.shape[2]), planes)


@cpu_function
def _sample_tables(layout, pooled_h):
    """``(starts, rows, columns)``: box ``k``'s sample ``i = iy*grid_w + ix`` has its row and column
    in roi_align's tables at ``rows[starts[k] + i] + ph*grid_h`` and ``columns[starts[k] + i] +
    pw*grid_w`` in bin ``(ph, pw)``."""
    starts = np.empty(layout.shape[0], np.int64)
    size = 0
    for k in range(layout.shape[0]):
        starts[k] = size
        size += layout[k, 1] * layout[k, 2]
    rows, columns = np.empty(size, np.int64), np.empty(size, np.int64)
    for k in range(layout.shape[0]):
        first, grid_h, grid_w = layout[k, 0], layout[k, 1], layout[k, 2]
        for iy in range(grid_h):
            for ix in range(grid_w):
                rows[starts[k] + iy * grid_w + ix] = first + iy
                columns[starts[k] + iy * grid_w + ix] = first + pooled_h * grid_h + ix
    return starts, rows, columns


@cpu_function
def _backward_channels(start, stop, grad_output, rois, argmax, layout, corners, weights, starts, rows,
                       columns, planes):
    boxes, _, pooled_h, pooled_w = grad_output.shape
    for c in range(start, stop):
        for k in range(boxes):
            plane = planes[int(rois[k, 0]), c]
            grid_h, grid_w = layout[k, 1], layout[k, 2]
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    sample = argmax[k, c, ph, pw]
                    if not 0 <= sample < grid_h * grid_w:
                        continue
                    r = rows[starts[k] + sample] + ph * grid_h
                    s = columns[starts[k] + sample] + pw * grid_w
                    if b1_axis_inside(weights, r) and b1_axis_inside(weights, s):
                        b1_scatter_rows(plane, corners[r, 0], corners[r, 1], weights[r, 0], weights[r, 1],
                                        corners[s, 0], corners[s, 1], weights[s, 0], weights[s, 1],
                                        grad_output[k, c, ph, pw])


KERNELS = {
    "forward": {"cpu": roi_align_max_forward_cpu, "cuda": roi_align_max_forward_cuda},
    "backward": {"cpu": roi_align_max_backward_cpu, "cuda": roi_align_max_backward_cuda,
                 "cuda_deterministic": roi_align_max_backward_deterministic_cuda},
}
