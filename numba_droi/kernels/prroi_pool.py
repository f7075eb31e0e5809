"""Precise RoI Pooling kernels (Jiang et al., ECCV 2018), in three parts.

* The body, shared by the targets: ``prroi_box`` (a box's bins), ``prroi_bin`` (one output element: the
  exact integral of the zero-padded bilinear interpolant over the bin, cell by cell, divided by the
  bin's area), ``prroi_bin_backward`` (the scatter of its input gradient, atomic on the GPU) and
  ``prroi_bin_box_gradient`` (its derivative in the box's four coordinates, from the integrals along
  the bin's edges).
* The cuda schedule: a thread per output element (the box gradient added atomically into its box's
  row); the deterministic backwards, a thread per gradient plane and a thread per box.
* The cpu drivers: the forward box by box, the input gradient by blocks of channels (boxes in order,
  each pixel of a bin added to once), the box gradient box by box (its sums over channels and bins
  reassociated, so vectorised: the deterministic cuda kernel's to rounding).

Kernel arguments: ``(features, rois, spatial_scale, output)``; ``(grad_output, rois, spatial_scale,
grad_input)``; ``(grad_output, features, rois, spatial_scale, grad_rois)``, with ``spatial_scale`` of
the features' dtype and the gradients zero-filled (``grad_rois`` of the rois' ``(K, 5)`` shape, its
batch column left 0).
"""
import math

import numpy as np

from .._backend import (add_2d, ceil_int, cpu_function, cuda_kernel, floor_int, jitable,
                        jitable_inlined_on_cpu, parallel_for, thread_start, thread_stride)
from .bilinear import b1_scatter_pixel_channels, b2_corner, b2_scatter_corner
from .roi_align import channel_block, channels_first, channels_last, unravel_output_index


# -- body ------------------------------------------------------------------------------------------

@jitable
def prroi_box(rois, k, spatial_scale, pooled_h, pooled_w):
    """Box ``k``: ``(batch, y1, x1, bin_h, bin_w)`` in feature coordinates, the size clamped to at
    least 0; a box with a non-finite coordinate (or size) gets bins of size 0 (its output is 0)."""
    f = rois.dtype.type
    x1 = rois[k, 1] * spatial_scale
    y1 = rois[k, 2] * spatial_scale
    x2 = rois[k, 3] * spatial_scale
    y2 = rois[k, 4] * spatial_scale
    bin_h = max(y2 - y1, f(0)) / f(pooled_h)
    bin_w = max(x2 - x1, f(0)) / f(pooled_w)
    # (the last bin's end checks the size too, which overflows for ends near the dtype's largest)
    if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(y1 + bin_h * f(pooled_h))
            and math.isfinite(x1 + bin_w * f(pooled_w))):
        return int(rois[k, 0]), f(0), f(0), f(0), f(0)
    return int(rois[k, 0]), y1, x1, bin_h, bin_w


@jitable
def cells(start, end, size):
    """``(first, stop)``: the cells ``first <= i < stop`` (between pixels ``i`` and ``i + 1``) that the
    interval ``[start, end]`` overlaps and that touch the map of ``size`` pixels (``-1 <= i < size``:
    the others have only zero corners)."""
    f = type(start)
    return (floor_int(min(max(start, f(-1)), f(size))),
            ceil_int(min(max(end, f(-1)), f(size))))


@jitable
def integral_weights(low, high):
    """``(w_low, w_high)``: the integrals of the linear weights ``1 - t`` and ``t`` over ``[low, high]``
    (within one cell, ``0 <= low <= high <= 1``)."""
    f = type(low)
    half = f(0.5)
    return (high - half * high * high) - (low - half * low * low), half * (high * high - low * low)


@jitable
def bin_edges(box, ph, pw):
    """``(y_start, y_end, x_start, x_end, area)`` of bin ``(ph, pw)``."""
    _, y1, x1, bin_h, bin_w = box
    f = type(bin_h)
    y_start = y1 + f(ph) * bin_h
    x_start = x1 + f(pw) * bin_w
    return y_start, y_start + bin_h, x_start, x_start + bin_w, bin_h * bin_w


@jitable
def prroi_bin(features, c, ph, pw, box):
    """Output of bin ``(ph, pw)`` in channel ``c``: the integral of the interpolant over the bin over
    its area (0 for a bin of area 0)."""
    f = features.dtype.type
    n = box[0]
    y_start, y_end, x_start, x_end, area = bin_edges(box, ph, pw)
    if not area > f(0):
        return f(0)
    h_first, h_stop = cells(y_start, y_end, features.shape[2])
    w_first, w_stop = cells(x_start, x_end, features.shape[3])
    total = f(0)
    columns = max(w_stop - w_first, 0)
    for cell in range(max(h_stop - h_first, 0) * columns):  # (one loop: fewer registers than two)
        h = h_first + cell // columns
        w = w_first + cell % columns
        wy_low, wy_high = integral_weights(max(y_start - f(h), f(0)), min(y_end - f(h), f(1)))
        wx_low, wx_high = integral_weights(max(x_start - f(w), f(0)), min(x_end - f(w), f(1)))
        total += (wy_low * (wx_low * b2_corner(features, n, c, h, w)
                            + wx_high * b2_corner(features, n, c, h, w + 1))
                  + wy_high * (wx_low * b2_corner(features, n, c, h + 1, w)
                               + wx_high * b2_corner(features, n, c, h + 1, w + 1)))
    return total / area


@jitable
def prroi_bin_backward(grad, grad_input, c, ph, pw, box, atomic=True):
    """Scatter ``grad``, the gradient of ``prroi_bin(..., c, ph, pw, box)``, into ``grad_input``."""
    f = grad_input.dtype.type
    n = box[0]
    y_start, y_end, x_start, x_end, area = bin_edges(box, ph, pw)
    if not area > f(0):
        return
    grad = grad / area
    h_first, h_stop = cells(y_start, y_end, grad_input.shape[2])
    w_first, w_stop = cells(x_start, x_end, grad_input.shape[3])
    for h in range(h_first, h_stop):
        wy_low, wy_high = integral_weights(max(y_start - f(h), f(0)), min(y_end - f(h), f(1)))
        for w in range(w_first, w_stop):
            wx_low, wx_high = integral_weights(max(x_start - f(w), f(0)), min(x_end - f(w), f(1)))
            b2_scatter_corner(grad_input, n, c, h, w, grad * wy_low * wx_low, atomic)
            b2_scatter_corner(grad_input, n, c, h, w + 1, grad * wy_low * wx_high, atomic)
            b2_scatter_corner(grad_input, n, c, h + 1, w, grad * wy_high * wx_low, atomic)
            b2_scatter_corner(grad_input, n, c, h + 1, w + 1, grad * wy_high * wx_high, atomic)


@jitable
def edge_integral(features, n, c, at, start, end, vertical):
    """The integral of the interpolant along a bin edge: over ``y`` in ``[start, end]`` at ``x = at``
    (``vertical``), or over ``x`` at ``y = at``."""
    f = features.dtype.type
    size = features.shape[2] if vertical else features.shape[3]
    if not (f(-1) <= at <= f(features.shape[3] if vertical else features.shape[2])):
        return f(0)  # the interpolant is 0 beyond the pixels next to the map
    across = floor_int(at)
    t = at - f(across)
    first, stop = cells(start, end, size)
    total = f(0)
    for i in range(first, stop):
        low = max(start - f(i), f(0))
        high = min(end - f(i), f(1))
        if vertical:
            here = ((f(1) - t) * b2_corner(features, n, c, i, across)
                    + t * b2_corner(features, n, c, i, across + 1))
            after = ((f(1) - t) * b2_corner(features, n, c, i + 1, across)
                     + t * b2_corner(features, n, c, i + 1, across + 1))
        else:
            here = ((f(1) - t) * b2_corner(features, n, c, across, i)
                    + t * b2_corner(features, n, c, across + 1, i))
            after = ((f(1) - t) * b2_corner(features, n, c, across, i + 1)
                     + t * b2_corner(features, n, c, across + 1, i + 1))
        w_here, w_after = integral_weights(low, high)
        total += w_here * here + w_after * after
    return total


@jitable
def prroi_bin_box_gradient(features, c, ph, pw, box, pooled_h, pooled_w):
    """``(d/dx1, d/dy1, d/dx2, d/dy2)`` of ``prroi_bin(..., c, ph, pw, box)`` in the box's feature
    coordinates: with ``I`` the bin's integral and ``A`` its area, ``d out = (dI - out dA) / A``, where
    moving an edge changes ``I`` by the integral along that edge. 0 for a bin of area 0."""
    f = features.dtype.type
    n = box[0]
    y_start, y_end, x_start, x_end, area = bin_edges(box, ph, pw)
    if not area > f(0):
        return f(0), f(0), f(0), f(0)
    value = prroi_bin(features, c, ph, pw, box)
    left = edge_integral(features, n, c, x_start, y_start, y_end, True)
    right = edge_integral(features, n, c, x_end, y_start, y_end, True)
    top = edge_integral(features, n, c, y_start, x_start, x_end, False)
    bottom = edge_integral(features, n, c, y_end, x_start, x_end, False)
    return box_gradient_of_bin(value, left, right, top, bottom, area, box[3], box[4], ph, pw, pooled_h,
                               pooled_w)


@jitable
def box_gradient_of_bin(value, left, right, top, bottom, area, bin_h, bin_w, ph, pw, pooled_h, pooled_w):
    """``(d/dx1, d/dy1, d/dx2, d/dy2)`` of a bin of ``area`` whose output is ``value``, from the
    integrals of the interpolant along its left, right, top and bottom edges."""
    f = type(value)
    # a bin's edges move with the box's: x_start = x1 + pw/PW (x2 - x1), x_end = x1 + (pw+1)/PW (x2 - x1)
    at_start_x, at_end_x = f(pw) / f(pooled_w), f(pw + 1) / f(pooled_w)
    at_start_y, at_end_y = f(ph) / f(pooled_h), f(ph + 1) / f(pooled_h)
    d_area_x = bin_h / f(pooled_w)  # d area / d x2 = -d area / d x1
    d_area_y = bin_w / f(pooled_h)
    d_x1 = (right * (f(1) - at_end_x) - left * (f(1) - at_start_x) + value * d_area_x) / area
    d_x2 = (right * at_end_x - left * at_start_x - value * d_area_x) / area
    d_y1 = (bottom * (f(1) - at_end_y) - top * (f(1) - at_start_y) + value * d_area_y) / area
    d_y2 = (bottom * at_end_y - top * at_start_y - value * d_area_y) / area
    return d_x1, d_y1, d_x2, d_y2


# -- cuda schedule ---------------------------------------------------------------------------------

@cuda_kernel("F4 F2 f F4")
def prroi_pool_forward_cuda(features, rois, spatial_scale, output):
    for index in range(thread_start(), output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, output.shape)
        box = prroi_box(rois, k, spatial_scale, output.shape[2], output.shape[3])
        output[k, c, ph, pw] = prroi_bin(features, c, ph, pw, box)


@cuda_kernel("F4 F2 f F4")
def prroi_pool_backward_cuda(grad_output, rois, spatial_scale, grad_input):
    for index in range(thread_start(), grad_output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, grad_output.shape)
        box = prroi_box(rois, k, spatial_scale, grad_output.shape[2], grad_output.shape[3])
        prroi_bin_backward(grad_output[k, c, ph, pw], grad_input, c, ph, pw, box)


@cuda_kernel("F4 F2 f F4")
def prroi_pool_backward_deterministic_cuda(grad_output, rois, spatial_scale, grad_input):
    # One thread per plane grad_input[n, c], boxes in order, no atomics (see kernels/roi_align.py).
    channels = grad_input.shape[1]
    for plane in range(thread_start(), grad_input.shape[0] * channels, thread_stride()):
        n = plane // channels
        c = plane - n * channels
        for k in range(grad_output.shape[0]):
            if int(rois[k, 0]) != n:
                continue
            box = prroi_box(rois, k, spatial_scale, grad_output.shape[2], grad_output.shape[3])
            for ph in range(grad_output.shape[2]):
                for pw in range(grad_output.shape[3]):
                    prroi_bin_backward(grad_output[k, c, ph, pw], grad_input, c, ph, pw, box, False)


@jitable
def _add_box_gradient(grad, features, rois, spatial_scale, k, c, ph, pw, pooled_h, pooled_w, grad_rois,
                      atomic):
    """Add ``grad`` times the box gradient of output ``(k, c, ph, pw)`` into row ``k`` of
    ``grad_rois``, scaled back to image coordinates."""
    box = prroi_box(rois, k, spatial_scale, pooled_h, pooled_w)
    d_x1, d_y1, d_x2, d_y2 = prroi_bin_box_gradient(features, c, ph, pw, box, pooled_h, pooled_w)
    grad = grad * spatial_scale
    add_2d(grad_rois, k, 1, grad * d_x1, atomic)
    add_2d(grad_rois, k, 2, grad * d_y1, atomic)
    add_2d(grad_rois, k, 3, grad * d_x2, atomic)
    add_2d(grad_rois, k, 4, grad * d_y2, atomic)


@cuda_kernel("F4 F4 F2 f F2")
def prroi_pool_box_backward_cuda(grad_output, features, rois, spatial_scale, grad_rois):
    for index in range(thread_start(), grad_output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, grad_output.shape)
        _add_box_gradient(grad_output[k, c, ph, pw], features, rois, spatial_scale, k, c, ph, pw,
                          grad_output.shape[2], grad_output.shape[3], grad_rois, True)


@cuda_kernel("F4 F4 F2 f F2")
def prroi_pool_box_backward_deterministic_cuda(grad_output, features, rois, spatial_scale, grad_rois):
    # One thread per box, its outputs in order, no atomics.
    for k in range(thread_start(), grad_output.shape[0], thread_stride()):
        for c in range(grad_output.shape[1]):
            for ph in range(grad_output.shape[2]):
                for pw in range(grad_output.shape[3]):
                    _add_box_gradient(grad_output[k, c, ph, pw], features, rois, spatial_scale, k, c, ph,
                                      pw, grad_output.shape[2], grad_output.shape[3], grad_rois, False)


# -- cpu drivers -----------------------------------------------------------------------------------

@jitable_inlined_on_cpu
def _pixel(h, w, height, width):
    """The row of pixel ``(h, w)`` in an image of ``channels_last(..., zero_pixels=1)``, the zero row
    outside the map."""
    if h >= 0 and h < height and w >= 0 and w < width:
        return h * width + w
    return height * width


@jitable_inlined_on_cpu(by_numba=True)
def _add_cell_channels(total, image, p00, p01, p10, p11, wy_low, wy_high, wx_low, wx_high):
    """``total[c] +=`` the body's sum of one cell for every channel ``c``."""
    v00, v01, v10, v11 = image[p00], image[p01], image[p10], image[p11]
    for c in range(total.shape[0]):
        total[c] += (wy_low * (wx_low * v00[c] + wx_high * v01[c])
                     + wy_high * (wx_low * v10[c] + wx_high * v11[c]))


@jitable_inlined_on_cpu
def prroi_bin_channels(total, image, height, width, box, ph, pw):
    """``total[c] = prroi_bin(features, c, ph, pw, box)`` for every channel from a padded channels-last
    ``image``: the same sums in the same order (a corner outside the map reads the zero row)."""
    f = total.dtype.type
    total[:] = f(0)
    y_start, y_end, x_start, x_end, area = bin_edges(box, ph, pw)
    if not area > f(0):
        return
    h_first, h_stop = cells(y_start, y_end, height)
    w_first, w_stop = cells(x_start, x_end, width)
    columns = max(w_stop - w_first, 0)
    for cell in range(max(h_stop - h_first, 0) * columns):
        h = h_first + cell // columns
        w = w_first + cell % columns
        wy_low, wy_high = integral_weights(max(y_start - f(h), f(0)), min(y_end - f(h), f(1)))
        wx_low, wx_high = integral_weights(max(x_start - f(w), f(0)), min(x_end - f(w), f(1)))
        _add_cell_channels(total, image, _pixel(h, w, height, width), _pixel(h, w + 1, height, width),
                           _pixel(h + 1, w, height, width), _pixel(h + 1, w + 1, height, width), wy_low,
                           wy_high, wx_low, wx_high)
    for c in range(total.shape[0]):
        total[c] /= area


def prroi_pool_forward_cpu(features, rois, spatial_scale, output):
    parallel_for(_forward_boxes, rois.shape[0], channels_last(features, zero_pixels=1), features.shape[2],
                 features.shape[3], rois, spatial_scale, output)


@cpu_function
def _forward_boxes(start, stop, pixels, height, width, rois, spatial_scale, output):
    channels, pooled_h, pooled_w = output.shape[1:]
    total = np.empty(channels, pixels.dtype)
    for k in range(start, stop):
        box = prroi_box(rois, k, spatial_scale, pooled_h, pooled_w)
        image = pixels[box[0], 0]
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                prroi_bin_channels(total, image, height, width, box, ph, pw)
                for c in range(channels):
                    output[k, c, ph, pw] = total[c]


@jitable_inlined_on_cpu(by_numba=True)
def _add_edge_channels(total, image, p_a, p_b, q_a, q_b, t, w_here, w_after):
    """``total[c] +=`` one cell's part of ``edge_integral`` for every channel ``c``: the interpolant along
    the edge at ``i`` (pixels ``p_a``, ``p_b`` across) and ``i + 1`` (``q_a``, ``q_b``)."""
    u = total.dtype.type(1) - t
    va, vb, wa, wb = image[p_a], image[p_b], image[q_a], image[q_b]
    for c in range(total.shape[0]):
        total[c] += w_here * (u * va[c] + t * vb[c]) + w_after * (u * wa[c] + t * wb[c])


@jitable_inlined_on_cpu
def edge_integral_channels(total, image, height, width, at, start, end, vertical):
    """``total[c] = edge_integral(features, n, c, at, start, end, vertical)`` for every channel from a
    padded channels-last ``image``."""
    f = total.dtype.type
    total[:] = f(0)
    along, across_size = (height, width) if vertical else (width, height)
    if not (f(-1) <= at <= f(across_size)):
        return
    across = floor_int(at)
    t = at - f(across)
    first, stop = cells(start, end, along)
    for i in range(first, stop):
        w_here, w_after = integral_weights(max(start - f(i), f(0)), min(end - f(i), f(1)))
        if vertical:
            _add_edge_channels(total, image, _pixel(i, across, height, width),
                               _pixel(i, across + 1, height, width), _pixel(i + 1, across, height, width),
                               _pixel(i + 1, across + 1, height, width), t, w_here, w_after)
        else:
            _add_edge_channels(total, image, _pixel(across, i, height, width),
                               _pixel(across + 1, i, height, width), _pixel(across, i + 1, height, width),
                               _pixel(across + 1, i + 1, height, width), t, w_here, w_after)


@jitable_inlined_on_cpu
def _pixel_weights(weights, start, end, first, stop):
    """``weights[i - first]``: the sum of the integral weights of pixel ``i`` (``first <= i <= stop``)
    over the cells ``first <= cell < stop`` that ``[start, end]`` overlaps, the pixel being a cell's
    low corner or its high one."""
    f = weights.dtype.type
    weights[:stop - first + 1] = f(0)
    for i in range(first, stop):
        low, high = integral_weights(max(start - f(i), f(0)), min(end - f(i), f(1)))
        weights[i - first] += low
        weights[i - first + 1] += high


def prroi_pool_backward_cpu(grad_output, rois, spatial_scale, grad_input):
    # A parallel iteration per block of channels, which own disjoint elements of a channels-last
    # gradient; boxes in order. A bin's corner weights are separable, a row's times a column's: each
    # row's and column's are first summed over the cells that share it, so that each pixel of the
    # bin is added to once (the same sums as the body's to rounding; pixels outside the map skipped).
    images, channels, height, width = grad_input.shape
    grad_pixels = np.zeros((images, 1, height * width, channels), grad_input.dtype)
    block = channel_block(channels)
    parallel_for(_backward_blocks, (channels + block - 1) // block, block, grad_output, height, width, rois,
                 spatial_scale, grad_pixels)
    channels_first(grad_pixels, grad_input)


@cpu_function
def _backward_blocks(start, stop, block, grad_output, height, width, rois, spatial_scale, grad_pixels):
    boxes, channels, pooled_h, pooled_w = grad_output.shape
    f = grad_pixels.dtype.type
    grads = np.empty((pooled_h, pooled_w, block), grad_pixels.dtype)
    row_weights = np.empty(height + 2, grad_pixels.dtype)
    column_weights = np.empty(width + 2, grad_pixels.dtype)
    for b in range(start, stop):
        first = b * block
        last = min(first + block, channels)
        for k in range(boxes):
            box = prroi_box(rois, k, spatial_scale, pooled_h, pooled_w)
            area = bin_edges(box, 0, 0)[4]  # every bin's
            if not area > f(0):
                continue
            grad_image = grad_pixels[box[0], 0]
            for c in range(first, last):  # read in order, written across
                for ph in range(pooled_h):
                    for pw in range(pooled_w):
                        grads[ph, pw, c - first] = grad_output[k, c, ph, pw] / area
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    y_start, y_end, x_start, x_end, _ = bin_edges(box, ph, pw)
                    h_first, h_stop = cells(y_start, y_end, height)
                    w_first, w_stop = cells(x_start, x_end, width)
                    _pixel_weights(row_weights, y_start, y_end, h_first, h_stop)
                    _pixel_weights(column_weights, x_start, x_end, w_first, w_stop)
                    for h in range(max(h_first, 0), min(h_stop, height - 1) + 1):
                        for w in range(max(w_first, 0), min(w_stop, width - 1) + 1):
                            b1_scatter_pixel_channels(grad_image, first, last, grads[ph, pw], h * width + w,
                                                      row_weights[h - h_first] * column_weights[w - w_first])


def prroi_pool_box_backward_cpu(grad_output, features, rois, spatial_scale, grad_rois):
    parallel_for(_box_backward_boxes, rois.shape[0], grad_output, channels_last(features, zero_pixels=1),
                 features.shape[2], features.shape[3], rois, spatial_scale, grad_rois)


@cpu_function(reassociate=True)
def _box_backward_boxes(start, stop, grad_output, pixels, height, width, rois, spatial_scale, grad_rois):
    # Each bin's output and edge integrals for every channel at once, from a padded channels-last copy;
    # the box's four sums over the channels and bins in registers, reassociated (vectorised).
    channels, pooled_h, pooled_w = grad_output.shape[1:]
    f = pixels.dtype.type
    value, left, right = np.empty(channels, pixels.dtype), np.empty(channels, pixels.dtype), np.empty(
        channels, pixels.dtype)
    top, bottom = np.empty(channels, pixels.dtype), np.empty(channels, pixels.dtype)
    for k in range(start, stop):
        box = prroi_box(rois, k, spatial_scale, pooled_h, pooled_w)
        image = pixels[box[0], 0]
        sum_x1, sum_y1, sum_x2, sum_y2 = f(0), f(0), f(0), f(0)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                y_start, y_end, x_start, x_end, area = bin_edges(box, ph, pw)
                if not area > f(0):
                    continue
                prroi_bin_channels(value, image, height, width, box, ph, pw)
                edge_integral_channels(left, image, height, width, x_start, y_start, y_end, True)
                edge_integral_channels(right, image, height, width, x_end, y_start, y_end, True)
                edge_integral_channels(top, image, height, width, y_start, x_start, x_end, False)
                edge_integral_channels(bottom, image, height, width, y_end, x_start, x_end, False)
                for c in range(channels):
                    d_x1, d_y1, d_x2, d_y2 = box_gradient_of_bin(value[c], left[c], right[c], top[c],
                                                                 bottom[c], area, box[3], box[4], ph, pw,
                                                                 pooled_h, pooled_w)
                    grad = grad_output[k, c, ph, pw] * spatial_scale
                    sum_x1 += grad * d_x1
                    sum_y1 += grad * d_y1
                    sum_x2 += grad * d_x2
                    sum_y2 += grad * d_y2
        grad_rois[k, 1] += sum_x1
        grad_rois[k, 2] += sum_y1
        grad_rois[k, 3] += sum_x2
        grad_rois[k, 4] += sum_y2


KERNELS = {
    "forward": {"cpu": prroi_pool_forward_cpu, "cuda": prroi_pool_forward_cuda},
    "backward": {"cpu": prroi_pool_backward_cpu, "cuda": prroi_pool_backward_cuda,
                 "cuda_deterministic": prroi_pool_backward_deterministic_cuda},
    "box_backward": {"cpu": prroi_pool_box_backward_cpu, "cuda": prroi_pool_box_backward_cuda,
                     "cuda_deterministic": prroi_pool_box_backward_deterministic_cuda},
}
