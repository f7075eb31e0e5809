"""RoI Align kernels, in three parts.

* The body, shared by the targets: ``roi_align_box`` (a box's geometry), ``roi_align_sample``,
  ``roi_align_bin`` (one output element) and ``roi_align_bin_backward`` (the scatter of its gradient,
  atomic on the GPU), written from the definition (docs/operators.md). PS RoI Align and deformable RoI
  pooling use them too.
* The cuda schedule: ``*_cuda`` kernels, a thread per output element around the body (a grid-stride
  loop); the deterministic backward, a thread per gradient plane.
* The cpu fast path: ``*_cpu`` drivers (Python functions that run compiled loops on the cpu threads,
  ``_backend.parallel_for``) and the helpers above them, which compute the body's values by another
  schedule: every box's separable sampling grid tabulated once, the forward box by box over a
  channels-last copy of the features, the backward by blocks of channels into a channels-last
  gradient, a box's bins added by their sample rows and columns (separable: each pixel once per bin
  row, not once per bin).

The tests run the cuda kernels themselves on the cpu (``_backend.cuda_kernels_on_cpu``) and require
the cpu fast path to give their outputs bit for bit and their gradients to rounding.

Kernel arguments: ``(features, rois, spatial_scale, sampling_ratio, aligned, output)`` and
``(grad_output, rois, spatial_scale, sampling_ratio, aligned, grad_input)``, with ``spatial_scale`` of
the features' dtype and ``grad_input`` zero-filled.
"""
import math

import numpy as np

from .._backend import (ceil_int, cpu_function, cuda_kernel, get_num_threads, jitable, jitable_inlined_on_cpu,
                        parallel_for, thread_start, thread_stride)
from .bilinear import (b1_add_rows_channels, b1_axis_inside, b1_axis_weights, b1_interpolate_rows,
                       b1_scatter, b1_scatter_pixel_channels, b1_scatter_rows, b1_value, b1_weights)

# The most samples per bin side. The adaptive grid ``ceil(bin size)`` is capped at it and an explicit
# sampling_ratio above it is refused (ops level), so that an absurdly large finite box (coordinates of
# 1e30, say) costs bounded time and memory instead of an astronomical grid. Bins of real feature maps
# are far smaller; torchvision has no such bound (and never finishes on such a box).
MAX_SAMPLING_RATIO = 256


# -- body: one output element and its gradient, from the definition --------------------------------

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
    grid_h, grid_w = sampling_grid(bin_h, bin_w, sampling_ratio, finite)
    return int(rois[k, 0]), y1, x1, bin_h, bin_w, grid_h, grid_w


@jitable
def roi_align_size_free(rois, k, spatial_scale, aligned):
    """``(free_h, free_w)``: whether box ``k``'s height and width, as ``roi_align_box`` uses them, are
    its own (always when aligned), not the least size of 1 it clamps them up to (not aligned): where
    they follow the box's far edges."""
    if aligned:
        return True, True
    f = rois.dtype.type
    return (rois[k, 4] * spatial_scale - rois[k, 2] * spatial_scale > f(1),
            rois[k, 3] * spatial_scale - rois[k, 1] * spatial_scale > f(1))


@jitable
def sampling_grid(bin_h, bin_w, sampling_ratio, finite):
    """``(grid_h, grid_w)`` of a bin: ``sampling_ratio`` samples per side if positive, else
    ``ceil(bin)``; at most ``MAX_SAMPLING_RATIO``; none for a box that is not ``finite``."""
    f = type(bin_h)
    if not finite:
        return 0, 0
    # reversed boxes of aligned mode have negative bins: an empty grid
    # (capped as a float: the int of a huge float is undefined)
    limit = f(MAX_SAMPLING_RATIO)
    if sampling_ratio > 0:
        return min(sampling_ratio, MAX_SAMPLING_RATIO), min(sampling_ratio, MAX_SAMPLING_RATIO)
    return ceil_int(min(max(bin_h, f(0)), limit)), ceil_int(min(max(bin_w, f(0)), limit))


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


# -- cuda schedule ---------------------------------------------------------------------------------

# The cuda kernels give each thread one output element.

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


# -- cpu fast path: the body's values by another schedule ------------------------------------------

# Sample positions are separable (a bin's rows and columns), so the cpu drivers tabulate every box's
# B1 row and column weights once, before the channels, and reuse them for all of them. The forward
# gives each parallel iteration a box and computes each bin for all channels at once from a
# channels-last copy of the features (the innermost loop, over contiguous channels, is vectorised).
# The backward gives each parallel iteration a block of channels, so that no two iterations write the
# same element, and adds each box's gradient by the grid's rows and columns (roi_align_backward_cpu).

@jitable
def roi_align_tables(features, rois, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w):
    """Every box's tables of rule B1's row and column weights, allocated: ``(layout, corners,
    weights)``, ``layout[k] = (first, grid_h, grid_w)``: box ``k``'s ``PH*grid_h`` row samples start
    at ``first``, its ``PW*grid_w`` column samples follow them; ``fill_tables`` fills them."""
    layout = np.empty((rois.shape[0], 3), np.int64)
    size = 0
    for k in range(rois.shape[0]):
        box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w)
        grid_h, grid_w = box[5], box[6]
        layout[k, 0], layout[k, 1], layout[k, 2] = size, grid_h, grid_w
        size += pooled_h * grid_h + pooled_w * grid_w
    return layout, np.empty((size, 2), np.uint32), np.empty((size, 2), features.dtype)


@jitable
def roi_align_fill_tables(features, rois, k, spatial_scale, sampling_ratio, aligned, pooled_h,
                          pooled_w, layout, corners, weights):
    """Box ``k``'s row and column samples as ``b1_axis_weights`` gives them: ``corners[s] = (low,
    high)`` (unsigned), rows as offsets ``y*W`` into a flat plane, and ``weights[s] = (w_low,
    w_high)``."""
    box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w)
    first, grid_h, grid_w = layout[k, 0], layout[k, 1], layout[k, 2]
    for ph in range(pooled_h):
        for iy in range(grid_h):
            y, _ = roi_align_sample(box, ph, 0, iy, 0)
            s = first + ph * grid_h + iy
            low, high, weights[s, 0], weights[s, 1], _ = b1_axis_weights(features, y,
                                                                         features.shape[2])
            corners[s, 0], corners[s, 1] = low * features.shape[3], high * features.shape[3]
    first += pooled_h * grid_h
    for pw in range(pooled_w):
        for ix in range(grid_w):
            _, x = roi_align_sample(box, 0, pw, 0, ix)
            s = first + pw * grid_w + ix
            corners[s, 0], corners[s, 1], weights[s, 0], weights[s, 1], _ = b1_axis_weights(
                features, x, features.shape[3])


@jitable_inlined_on_cpu
def roi_align_bin_from_tables(plane, rows, columns, grid_h, grid_w, corners, weights):
    """``roi_align_bin`` of a flat feature plane from the tables: the bin's ``grid_h`` row samples
    start at ``rows``, its ``grid_w`` column samples at ``columns``."""
    f = plane.dtype.type
    total = f(0)
    for r in range(rows, rows + grid_h):
        if not b1_axis_inside(weights, r):
            continue
        for s in range(columns, columns + grid_w):
            if b1_axis_inside(weights, s):
                total += b1_interpolate_rows(plane, corners[r, 0], corners[r, 1], weights[r, 0],
                                             weights[r, 1], corners[s, 0], corners[s, 1],
                                             weights[s, 0], weights[s, 1])
    return total / f(max(grid_h * grid_w, 1))


def channels_last(features, groups=1, zero_pixels=0):
    """A copy of ``(N, C, H, W)`` features with channels last, for cpu drivers that compute a bin for
    many channels at once (their innermost loop runs over contiguous channels): ``pixels[n, g, h*W + w,
    c] = features[n, c*groups + g, h, w]``, of shape ``(N, groups, H*W + zero_pixels, C // groups)``,
    the ``zero_pixels`` after the map's 0 (where corners outside the map read). With groups, the
    channels that position-sensitive pooling reads in one bin (one per class) are adjacent."""
    images, channels, height, width = features.shape
    pixels = np.empty((images, groups, height * width + zero_pixels, channels // groups), features.dtype)
    pixels[:, :, height * width:] = 0
    parallel_for(_channels_last_rows, images * height, features, pixels)
    return pixels


@cpu_function
def _channels_last_rows(start, stop, features, pixels):
    height, width = features.shape[2], features.shape[3]
    groups, per_group = pixels.shape[1], pixels.shape[3]
    for image_row in range(start, stop):
        n = image_row // height
        h = image_row - n * height
        for c in range(per_group):
            for g in range(groups):
                for w in range(width):
                    pixels[n, g, h * width + w, c] = features[n, c * groups + g, h, w]


def channels_first(pixels, features):
    """The inverse of ``channels_last``: write ``pixels`` into ``(N, C, H, W)`` ``features``."""
    parallel_for(_channels_first_rows, features.shape[0] * features.shape[2], pixels, features)


@cpu_function
def _channels_first_rows(start, stop, pixels, features):
    height, width = features.shape[2], features.shape[3]
    groups, per_group = pixels.shape[1], pixels.shape[3]
    for image_row in range(start, stop):
        n = image_row // height
        h = image_row - n * height
        for c in range(per_group):
            for g in range(groups):
                for w in range(width):
                    features[n, c * groups + g, h, w] = pixels[n, g, h * width + w, c]


@jitable_inlined_on_cpu
def roi_align_bin_channels_from_tables(total, pixels, rows, columns, grid_h, grid_w, corners,
                                       weights):
    """``total[c] = roi_align_bin_from_tables(plane of channel c, ...)`` for every channel of a
    channels-last image ``pixels``: the same sums in the same order."""
    f = total.dtype.type
    total[:] = f(0)
    for r in range(rows, rows + grid_h):
        if not b1_axis_inside(weights, r):
            continue
        for s in range(columns, columns + grid_w):
            if b1_axis_inside(weights, s):
                b1_add_rows_channels(total, pixels, 0, corners[r, 0], corners[r, 1], weights[r, 0],
                                     weights[r, 1], corners[s, 0], corners[s, 1], weights[s, 0],
                                     weights[s, 1])
    count = f(max(grid_h * grid_w, 1))
    for c in range(total.shape[0]):
        total[c] /= count


@jitable_inlined_on_cpu
def roi_align_bin_backward_from_tables(grad, grad_plane, rows, columns, grid_h, grid_w, corners,
                                       weights):
    """``roi_align_bin_backward`` from the tables, as ``roi_align_bin_from_tables`` reads them."""
    grad = grad / grad_plane.dtype.type(max(grid_h * grid_w, 1))
    for r in range(rows, rows + grid_h):
        if not b1_axis_inside(weights, r):
            continue
        for s in range(columns, columns + grid_w):
            if b1_axis_inside(weights, s):
                b1_scatter_rows(grad_plane, corners[r, 0], corners[r, 1], weights[r, 0],
                                weights[r, 1], corners[s, 0], corners[s, 1], weights[s, 0],
                                weights[s, 1], grad)


@jitable
def merged_axis_scratch(dtype):
    """Scratch ``(offsets, sums)`` for ``merged_axis``: a row each for a bin's rows and columns, of
    the most distinct corners a bin side can have."""
    return (np.empty((2, 2 * MAX_SAMPLING_RATIO + 2), np.uint32),
            np.empty((2, 2 * MAX_SAMPLING_RATIO + 2), dtype))


@jitable_inlined_on_cpu
def merged_axis(corners, weights, start, count, offsets, sums):
    """The distinct corners of tabulated rows (or columns) ``start .. start + count - 1`` that lie in
    the map, each with the sum of its weights: ``offsets[:n]``, ``sums[:n]``; returns ``n``. The rows
    come in increasing order, so a repeated corner is one of the last two kept (were it not, it would
    only be kept twice: the sums stay right)."""
    n = 0
    for r in range(start, start + count):
        if not b1_axis_inside(weights, r):
            continue
        for side in range(2):
            offset, weight = corners[r, side], weights[r, side]
            if n > 0 and offsets[n - 1] == offset:
                sums[n - 1] += weight
            elif n > 1 and offsets[n - 2] == offset:
                sums[n - 2] += weight
            else:
                offsets[n] = offset
                sums[n] = weight
                n += 1
    return n


@jitable_inlined_on_cpu
def roi_align_bin_backward_channels_from_tables(grads, grad_pixels, first, last, rows, columns, grid_h,
                                                grid_w, corners, weights, offsets, sums):
    """``roi_align_bin_backward_from_tables(grads[c - first], plane of channel c, ...)`` for every
    ``first <= c < last`` of a channels-last gradient ``grad_pixels``, to rounding: the samples'
    weights are first summed per distinct pixel (a bin's samples share most of their corners), so
    that each pixel's channels are added to once. ``grads`` is scaled in place; ``offsets`` and
    ``sums`` come from ``merged_axis_scratch``."""
    count = grads.dtype.type(max(grid_h * grid_w, 1))
    for c in range(first, last):
        grads[c - first] /= count
    rows_kept = merged_axis(corners, weights, rows, grid_h, offsets[0], sums[0])
    columns_kept = merged_axis(corners, weights, columns, grid_w, offsets[1], sums[1])
    for i in range(rows_kept):
        for j in range(columns_kept):
            b1_scatter_pixel_channels(grad_pixels, first, last, grads, offsets[0, i] + offsets[1, j],
                                      sums[0, i] * sums[1, j])


@cpu_function
def fill_tables(features, rois, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w):
    """``roi_align_tables``, filled (``roi_align_fill_tables``) box by box: in one thread, as they
    cost a small part of what uses them (which has a factor of channels more work)."""
    layout, corners, weights = roi_align_tables(features, rois, spatial_scale, sampling_ratio, aligned,
                                                pooled_h, pooled_w)
    for k in range(rois.shape[0]):
        roi_align_fill_tables(features, rois, k, spatial_scale, sampling_ratio, aligned, pooled_h,
                              pooled_w, layout, corners, weights)
    return layout, corners, weights


def roi_align_forward_cpu(features, rois, spatial_scale, sampling_ratio, aligned, output):
    tables = fill_tables(features, rois, spatial_scale, sampling_ratio, aligned, *output.shape[2:])
    parallel_for(_roi_align_forward_boxes, rois.shape[0], channels_last(features), rois, *tables, output)


@cpu_function
def _roi_align_forward_boxes(start, stop, pixels, rois, layout, corners, weights, output):
    channels, pooled_h, pooled_w = output.shape[1:]
    for k in range(start, stop):
        image = pixels[int(rois[k, 0]), 0]
        total = np.empty(channels, pixels.dtype)
        first, grid_h, grid_w = layout[k, 0], layout[k, 1], layout[k, 2]
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                roi_align_bin_channels_from_tables(total, image, first + ph * grid_h,
                                                   first + pooled_h * grid_h + pw * grid_w, grid_h,
                                                   grid_w, corners, weights)
                for c in range(channels):
                    output[k, c, ph, pw] = total[c]


def channel_block(channels):
    """Channels per parallel iteration of a cpu input gradient that adds into a channels-last
    gradient for all of a block's channels at once, reading each box's samples once per block: two
    blocks per thread (a wide block shares each sample's table reads among more channels), from 16 to
    64 channels, a multiple of 8. The values do not depend on it: every element's sum has the same
    order."""
    return min(64, max(16, channels // (2 * get_num_threads()) // 8 * 8))


def thread_channel_block(channels):
    """Channels per parallel iteration of a cpu input gradient whose iterations each walk every box:
    a block per thread (the per-box work, done once per block, is then done least often), a multiple
    of 8."""
    return -(-channels // (8 * get_num_threads())) * 8


def roi_align_backward_cpu(grad_output, rois, spatial_scale, sampling_ratio, aligned, grad_input):
    # A parallel iteration per block of channels, which own disjoint elements of a channels-last
    # gradient. A box's sample grid is separable, the same rows for every bin of a bin row and the same
    # columns for every bin of a bin column, so each box's gradient is added in two steps:
    #   column sums  t[ph, x, c] = sum over pw of  g[c, ph, pw] * (weight of column x in bin column pw)
    #   then         grad[y, x, c] += (weight of row y in bin row ph) * t[ph, x, c]
    # (g the output's gradient over the bin's samples). Each of the box's pixels is then added to once
    # per bin row instead of once per bin; small boxes, whose bins share most of their corners, gain
    # most. The same sums as roi_align_bin_backward, in another order: equal to rounding.
    tables = fill_tables(grad_input, rois, spatial_scale, sampling_ratio, aligned, *grad_output.shape[2:])
    channels = grad_output.shape[1]
    grad_pixels = np.zeros((grad_input.shape[0], 1, grad_input.shape[2] * grad_input.shape[3], channels),
                           grad_input.dtype)
    width = thread_channel_block(channels)
    parallel_for(_roi_align_backward_blocks, (channels + width - 1) // width, width, grad_output, rois,
                 *tables, grad_pixels, grad_input)


@cpu_function
def _roi_align_backward_blocks(start, stop, width, grad_output, rois, layout, corners, weights,
                               grad_pixels, grad_input):
    boxes, channels, pooled_h, pooled_w = grad_output.shape
    map_width = grad_input.shape[3]
    grad_planes = grad_input.reshape((grad_input.shape[0], channels, -1))
    f = grad_pixels.dtype.type
    most = 2 * MAX_SAMPLING_RATIO + 2  # distinct corners of a bin side
    for block in range(start, stop):
        first = block * width
        last = min(first + width, channels)
        grads = np.empty((pooled_h, pooled_w, width), grad_pixels.dtype)
        bin_columns = np.empty((pooled_w, most), np.uint32)  # a bin column's distinct columns,
        bin_column_weights = np.empty((pooled_w, most), grad_pixels.dtype)  # their summed weights,
        bin_column_slots = np.empty((pooled_w, most), np.int64)  # and their places in box_columns
        bin_column_counts = np.empty(pooled_w, np.int64)
        box_columns = np.empty(map_width, np.uint32)  # the box's distinct columns
        slot_of_column = np.full(map_width, -1, np.int64)
        column_sums = np.empty((map_width, width), grad_pixels.dtype)
        row_offsets, row_weights = merged_axis_scratch(grad_pixels.dtype)
        for k in range(boxes):
            grad_image = grad_pixels[int(rois[k, 0]), 0]
            rows, grid_h, grid_w = layout[k, 0], layout[k, 1], layout[k, 2]
            columns = rows + pooled_h * grid_h
            count = f(max(grid_h * grid_w, 1))
            for c in range(first, last):  # read in order, written across
                for ph in range(pooled_h):
                    for pw in range(pooled_w):
                        grads[ph, pw, c - first] = grad_output[k, c, ph, pw] / count
            distinct = 0
            for pw in range(pooled_w):
                kept = merged_axis(corners, weights, columns + pw * grid_w, grid_w, bin_columns[pw],
                                   bin_column_weights[pw])
                bin_column_counts[pw] = kept
                for j in range(kept):
                    x = bin_columns[pw, j]
                    if slot_of_column[x] < 0:
                        slot_of_column[x] = distinct
                        box_columns[distinct] = x
                        distinct += 1
                    bin_column_slots[pw, j] = slot_of_column[x]
            for ph in range(pooled_h):
                column_sums[:distinct] = f(0)
                for pw in range(pooled_w):
                    for j in range(bin_column_counts[pw]):
                        sums = column_sums[bin_column_slots[pw, j]]
                        weight = bin_column_weights[pw, j]
                        for c in range(last - first):
                            sums[c] += weight * grads[ph, pw, c]
                kept = merged_axis(corners, weights, rows + ph * grid_h, grid_h, row_offsets[0],
                                   row_weights[0])
                for i in range(kept):
                    for j in range(distinct):
                        b1_scatter_pixel_channels(grad_image, first, last, column_sums[j],
                                                  row_offsets[0, i] + box_columns[j], row_weights[0, i])
            for j in range(distinct):
                slot_of_column[box_columns[j]] = -1
        for n in range(grad_planes.shape[0]):  # the block's channels, channels first
            for pixel in range(grad_planes.shape[2]):
                values = grad_pixels[n, 0, pixel]
                for c in range(first, last):
                    grad_planes[n, c, pixel] = values[c]


KERNELS = {
    "forward": {"cpu": roi_align_forward_cpu, "cuda": roi_align_forward_cuda},
    "backward": {"cpu": roi_align_backward_cpu, "cuda": roi_align_backward_cuda,
                 "cuda_deterministic": roi_align_backward_deterministic_cuda},
}
