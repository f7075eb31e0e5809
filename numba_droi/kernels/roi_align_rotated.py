"""Rotated RoI Align kernels (mmcv's ``roi_align_rotated``), in three parts.

* The body, shared by the targets: ``rotated_box`` (a box's geometry: RoI Align's unrotated grid about
  the box centre, and the rotation), ``rotated_sample``, ``roi_align_rotated_bin`` (one output element)
  and ``roi_align_rotated_bin_backward`` (the scatter of its gradient, atomic on the GPU).
* The cuda schedule: a thread per output element; the deterministic backward, a thread per gradient
  plane.
* The cpu drivers: the forward box by box over a channels-last copy of the features (each bin for
  every channel at once, the body's values bit for bit), the backward by blocks of channels into a
  channels-last gradient (each iteration owns its channels, and walks the boxes in order, as the
  deterministic cuda backward does; a bin's corner weights summed per pixel first: the same sums to
  rounding).

Kernel arguments: ``(features, rois, turns, spatial_scale, sampling_ratio, aligned, output)`` and
``(grad_output, rois, turns, spatial_scale, sampling_ratio, aligned, grad_input)``, with ``rois``
``(K, 6) = [batch, cx, cy, w, h, angle]``, ``turns`` ``(K, 2)``, each box's ``(cos, sin)`` of its
counter-clockwise angle (computed before the launch: the kernels call no trigonometric function,
whose float32 forms in libdevice carry a float64 path for huge arguments), ``spatial_scale`` of the
features' dtype and ``grad_input`` zero-filled.
"""
import math

import numpy as np

from .._backend import (cpu_function, cuda_kernel, jitable, jitable_inlined_on_cpu, parallel_for,
                       thread_start, thread_stride)
from .bilinear import (b1_add_rows_channels, b1_axis_weights, b1_scatter, b1_scatter_pixel_channels, b1_value,
                       b1_weights)
from .roi_align import (channels_first, channels_last, roi_align_sample, sampling_grid, thread_channel_block,
                        unravel_output_index)


# -- body ------------------------------------------------------------------------------------------

@jitable
def rotated_box(rois, turns, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w):
    """Geometry of box ``k``: ``(grid, centre_y, centre_x, cos, sin)``, ``grid`` the box of
    ``roi_align_box``'s form for the unrotated box centred at the origin.

    A box with a non-finite coordinate or angle gets an empty sampling grid, so its output is 0. The
    grid has at most ``MAX_SAMPLING_RATIO`` samples per side.
    """
    f = rois.dtype.type
    offset = f(0.5) if aligned else f(0)
    centre_x = rois[k, 1] * spatial_scale - offset
    centre_y = rois[k, 2] * spatial_scale - offset
    roi_w = rois[k, 3] * spatial_scale
    roi_h = rois[k, 4] * spatial_scale
    cos_theta = turns[k, 0]
    sin_theta = turns[k, 1]
    finite = (math.isfinite(centre_x) and math.isfinite(centre_y) and math.isfinite(roi_w)
              and math.isfinite(roi_h) and math.isfinite(cos_theta) and math.isfinite(sin_theta))
    if not aligned:
        roi_w = max(roi_w, f(1))
        roi_h = max(roi_h, f(1))
    bin_h = roi_h / f(pooled_h)
    bin_w = roi_w / f(pooled_w)
    grid_h, grid_w = sampling_grid(bin_h, bin_w, sampling_ratio, finite)
    grid = (int(rois[k, 0]), -roi_h / f(2), -roi_w / f(2), bin_h, bin_w, grid_h, grid_w)
    return grid, centre_y, centre_x, cos_theta, sin_theta


@jitable
def rotated_sample(box, ph, pw, iy, ix):
    """``(y, x)`` of sample ``(iy, ix)`` in bin ``(ph, pw)``: RoI Align's sample of the unrotated grid,
    rotated by the angle about the origin and moved to the box centre."""
    grid, centre_y, centre_x, cos_theta, sin_theta = box
    yy, xx = roi_align_sample(grid, ph, pw, iy, ix)
    return yy * cos_theta - xx * sin_theta + centre_y, yy * sin_theta + xx * cos_theta + centre_x


@jitable
def roi_align_rotated_bin(features, c, ph, pw, box):
    """Output of bin ``(ph, pw)`` in channel ``c`` of the box whose geometry ``rotated_box`` gave."""
    f = features.dtype.type
    grid = box[0]
    n, grid_h, grid_w = grid[0], grid[5], grid[6]
    total = f(0)
    for sample in range(grid_h * grid_w):  # (one loop: fewer registers than two)
        iy = sample // grid_w
        y, x = rotated_sample(box, ph, pw, iy, sample - iy * grid_w)
        total += b1_value(features, n, c, y, x)
    return total / f(max(grid_h * grid_w, 1))


@jitable
def roi_align_rotated_bin_backward(grad, grad_input, c, ph, pw, box, atomic=True):
    """Scatter ``grad``, the gradient of ``roi_align_rotated_bin(..., c, ph, pw, box)``, into
    ``grad_input`` (atomically on the GPU unless ``atomic`` is False)."""
    f = grad_input.dtype.type
    grid = box[0]
    n, grid_h, grid_w = grid[0], grid[5], grid[6]
    grad = grad / f(max(grid_h * grid_w, 1))
    for iy in range(grid_h):
        for ix in range(grid_w):
            y, x = rotated_sample(box, ph, pw, iy, ix)
            y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh, _, _ = b1_weights(grad_input, y, x)
            b1_scatter(grad_input, n, c, y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh, grad,
                       atomic)


# -- cuda schedule ---------------------------------------------------------------------------------

@cuda_kernel("F4 F2 F2 f i b F4")
def roi_align_rotated_forward_cuda(features, rois, turns, spatial_scale, sampling_ratio, aligned,
                                   output):
    for index in range(thread_start(), output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, output.shape)
        box = rotated_box(rois, turns, k, spatial_scale, sampling_ratio, aligned, output.shape[2],
                          output.shape[3])
        output[k, c, ph, pw] = roi_align_rotated_bin(features, c, ph, pw, box)


@cuda_kernel("F4 F2 F2 f i b F4")
def roi_align_rotated_backward_cuda(grad_output, rois, turns, spatial_scale, sampling_ratio, aligned,
                                    grad_input):
    for index in range(thread_start(), grad_output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, grad_output.shape)
        box = rotated_box(rois, turns, k, spatial_scale, sampling_ratio, aligned, grad_output.shape[2],
                          grad_output.shape[3])
        roi_align_rotated_bin_backward(grad_output[k, c, ph, pw], grad_input, c, ph, pw, box)


@cuda_kernel("F4 F2 F2 f i b F4")
def roi_align_rotated_backward_deterministic_cuda(grad_output, rois, turns, spatial_scale, sampling_ratio,
                                                  aligned, grad_input):
    # One thread per plane grad_input[n, c], boxes in order, no atomics (see kernels/roi_align.py).
    channels = grad_input.shape[1]
    for plane in range(thread_start(), grad_input.shape[0] * channels, thread_stride()):
        n = plane // channels
        c = plane - n * channels
        for k in range(grad_output.shape[0]):
            if int(rois[k, 0]) != n:
                continue
            box = rotated_box(rois, turns, k, spatial_scale, sampling_ratio, aligned,
                              grad_output.shape[2], grad_output.shape[3])
            for ph in range(grad_output.shape[2]):
                for pw in range(grad_output.shape[3]):
                    roi_align_rotated_bin_backward(grad_output[k, c, ph, pw], grad_input, c, ph, pw, box,
                                                   False)


# -- cpu drivers -----------------------------------------------------------------------------------

def roi_align_rotated_forward_cpu(features, rois, turns, spatial_scale, sampling_ratio, aligned,
                                  output):
    parallel_for(_forward_boxes, rois.shape[0], channels_last(features), features, rois, turns,
                 spatial_scale, sampling_ratio, aligned, output)


@cpu_function
def _forward_boxes(start, stop, pixels, features, rois, turns, spatial_scale, sampling_ratio, aligned,
                   output):
    # Each bin for every channel at once from a channels-last copy: a sample's B1 weights are the
    # products of its row's and column's (b1_axis_weights), and each channel gets the body's sums in
    # the body's order, so the body's values bit for bit.
    channels, pooled_h, pooled_w = output.shape[1:]
    height, width = features.shape[2], features.shape[3]
    total = np.empty(channels, pixels.dtype)
    for k in range(start, stop):
        box = rotated_box(rois, turns, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w)
        grid = box[0]
        image, grid_h, grid_w = pixels[grid[0], 0], grid[5], grid[6]
        count = pixels.dtype.type(max(grid_h * grid_w, 1))
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                total[:] = 0
                for sample in range(grid_h * grid_w):
                    iy = sample // grid_w
                    y, x = rotated_sample(box, ph, pw, iy, sample - iy * grid_w)
                    y_low, y_high, hy, ly, _ = b1_axis_weights(features, y, height)
                    x_low, x_high, hx, lx, _ = b1_axis_weights(features, x, width)
                    if hy + ly != 0 and hx + lx != 0:
                        b1_add_rows_channels(total, image, 0, y_low * width, y_high * width, hy, ly, x_low,
                                             x_high, hx, lx)
                for c in range(channels):
                    output[k, c, ph, pw] = total[c] / count


def roi_align_rotated_backward_cpu(grad_output, rois, turns, spatial_scale, sampling_ratio, aligned,
                                   grad_input):
    # A parallel iteration per block of channels, which own disjoint elements of a channels-last
    # gradient; each sample's weights computed once per block (as roi_align's backward). A bin's
    # samples share most of their corners: the corner weights are first summed per distinct pixel
    # (up to MERGED at a time), so that each pixel's channels are added to once per bin. The same
    # sums as the body's to rounding.
    channels = grad_output.shape[1]
    grad_pixels = np.zeros((grad_input.shape[0], 1, grad_input.shape[2] * grad_input.shape[3], channels),
                           grad_input.dtype)
    width = thread_channel_block(channels)
    parallel_for(_backward_blocks, (channels + width - 1) // width, width, grad_output, grad_input, rois,
                 turns, spatial_scale, sampling_ratio, aligned, grad_pixels)
    channels_first(grad_pixels, grad_input)


MERGED = 16  # distinct pixels of a bin held before they are added (a sample has four corners)


@jitable_inlined_on_cpu
def _merged(pixels, sums, distinct, pixel, weight):
    """Add ``weight`` to the sum of ``pixel`` if it is among the first ``distinct`` of ``pixels``, else
    append both; return how many are now held."""
    for i in range(distinct):
        if pixels[i] == pixel:
            sums[i] += weight
            return distinct
    pixels[distinct] = pixel
    sums[distinct] = weight
    return distinct + 1


@cpu_function
def _backward_blocks(start, stop, width, grad_output, grad_input, rois, turns, spatial_scale,
                     sampling_ratio, aligned, grad_pixels):
    boxes, channels, pooled_h, pooled_w = grad_output.shape
    height, plane_width = grad_input.shape[2], grad_input.shape[3]
    grads = np.empty((pooled_h, pooled_w, width), grad_pixels.dtype)
    pixels = np.empty(MERGED, np.int64)
    sums = np.empty(MERGED, grad_pixels.dtype)
    for block in range(start, stop):
        first = block * width
        last = min(first + width, channels)
        for k in range(boxes):
            box = rotated_box(rois, turns, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w)
            grid = box[0]
            grad_image, grid_h, grid_w = grad_pixels[grid[0], 0], grid[5], grid[6]
            count = grad_pixels.dtype.type(max(grid_h * grid_w, 1))
            for c in range(first, last):  # read in order, written across
                for ph in range(pooled_h):
                    for pw in range(pooled_w):
                        grads[ph, pw, c - first] = grad_output[k, c, ph, pw] / count
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    bin_grads = grads[ph, pw]
                    distinct = 0
                    for sample in range(grid_h * grid_w):
                        iy = sample // grid_w
                        y, x = rotated_sample(box, ph, pw, iy, sample - iy * grid_w)
                        y_low, y_high, hy, ly, _ = b1_axis_weights(grad_input, y, height)
                        x_low, x_high, hx, lx, _ = b1_axis_weights(grad_input, x, plane_width)
                        if hy + ly == 0 or hx + lx == 0:
                            continue
                        if distinct > MERGED - 4:
                            for i in range(distinct):
                                b1_scatter_pixel_channels(grad_image, first, last, bin_grads, pixels[i],
                                                          sums[i])
                            distinct = 0
                        row_low, row_high = y_low * plane_width, y_high * plane_width
                        distinct = _merged(pixels, sums, distinct, row_low + x_low, hy * hx)
                        distinct = _merged(pixels, sums, distinct, row_low + x_high, hy * lx)
                        distinct = _merged(pixels, sums, distinct, row_high + x_low, ly * hx)
                        distinct = _merged(pixels, sums, distinct, row_high + x_high, ly * lx)
                    for i in range(distinct):
                        b1_scatter_pixel_channels(grad_image, first, last, bin_grads, pixels[i], sums[i])


KERNELS = {
    "forward": {"cpu": roi_align_rotated_forward_cpu, "cuda": roi_align_rotated_forward_cuda},
    "backward": {"cpu": roi_align_rotated_backward_cpu, "cuda": roi_align_rotated_backward_cuda,
                 "cuda_deterministic": roi_align_rotated_backward_deterministic_cuda},
}
