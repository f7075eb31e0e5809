"""Deformable im2col and its adjoints, in three parts.

The column array of a batch of ``nb`` images is ``columns[b, c * taps + tap, oy, ox]`` (``taps = kh *
kw``, ``tap = i * kw + j``): the input of channel ``c`` sampled by rule B2 at the position of kernel tap
``(i, j)`` for output pixel ``(oy, ox)``, moved by the offset and multiplied by the mask of its offset
group. A grouped matrix product with the weight turns it into the convolution's output (ops level).

* The body, shared by the targets: ``deform_sample`` (where a tap samples, and its modulation),
  ``deform_im2col_element`` (one column element), ``deform_im2col_element_backward`` (the scatter of
  its gradient into the input gradient, atomic on the GPU) and ``deform_coordinate_gradient`` (the
  offset and mask gradients of one tap at one output pixel, a sum over the channels of its group).
* The cuda schedule: ``deform_im2col_cuda`` fills ``columns``, ``deform_im2col_backward_cuda`` is its
  adjoint in the input (the deterministic one a thread per ``(b, c)`` plane), and
  ``deform_im2col_coordinate_gradient_cuda`` gives the offset and mask gradients (of those in use),
  a thread per ``(b, group, tap, oy, ox)`` writing only its own elements (no atomics).
* The cpu fast path: ``*_cpu`` drivers with the same loops ordered by planes: each parallel iteration
  owns one contiguous plane of the array it writes, with the per-plane indices taken out of the pixel
  loops, and the B2 cells of an (image, offset group, tap) plane computed once for all the group's
  channels (``deform_plane_cells``; for the input gradient, a table of every plane's cells first).
  Where the samples outnumber the weight, the backward instead works on channels-last columns
  (``*_channels_last_cpu``, see their section), whose loops over a sample's channels are vectorised.

The tests run the cuda kernels themselves on the cpu (``_backend.cuda_kernels_on_cpu``) and require
the cpu fast path to give their outputs bit for bit and their gradients to rounding.

Kernel arguments, after the arrays: ``kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
dilation_h, dilation_w`` (ints), then ``use_offset, use_mask`` (bools). Without offsets or without a
mask the corresponding array argument is any array of the right dtype and rank (e.g. shape
``(0, 0, 0, 0)``) that the kernel never reads: no zero offset array is materialised.
"""
import numpy as np

from .._backend import (cpu_function, cuda_kernel, get_num_threads, jitable, jitable_inlined_on_cpu,
                        parallel_for, thread_start, thread_stride)
from .bilinear import (b2_cell, b2_combine, b2_coordinate_gradient, b2_gradient_of_corners,
                       b2_scatter, b2_value)
from .lanes import LANES, lanes_b2_scatter
from .roi_align import unravel_output_index


# -- body: one column element and its gradients, from the definition -------------------------------

@jitable_inlined_on_cpu
def offset_groups(offset, mask, taps, use_offset, use_mask):
    """Number of offset groups: from the offsets' channels, else the mask's, else 1."""
    if use_offset:
        return offset.shape[1] // (2 * taps)
    if use_mask:
        return mask.shape[1] // taps
    return 1


@jitable_inlined_on_cpu
def deform_sample(input, offset, mask, b, g, tap, oy, ox, geometry, use_offset, use_mask):
    """``(y, x, modulation)`` of kernel tap ``tap`` of offset group ``g`` at output pixel ``(oy, ox)``
    of image ``b``: the sampling position (y offset first) and the mask value (1 without a mask)."""
    f = input.dtype.type
    kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w = geometry
    i = tap // kernel_w
    j = tap - i * kernel_w
    y = f(oy * stride_h - pad_h + i * dilation_h)
    x = f(ox * stride_w - pad_w + j * dilation_w)
    if use_offset:
        channel = 2 * (g * kernel_h * kernel_w + tap)
        y += offset[b, channel, oy, ox]
        x += offset[b, channel + 1, oy, ox]
    modulation = f(1)
    if use_mask:
        modulation = mask[b, g * kernel_h * kernel_w + tap, oy, ox]
    return y, x, modulation


@jitable
def deform_im2col_element(input, offset, mask, b, row, oy, ox, geometry, use_offset, use_mask):
    """``columns[b, row, oy, ox]``, with ``row = c * taps + tap``."""
    taps = geometry[0] * geometry[1]
    c = row // taps
    tap = row - c * taps
    g = c // (input.shape[1] // offset_groups(offset, mask, taps, use_offset, use_mask))
    y, x, modulation = deform_sample(input, offset, mask, b, g, tap, oy, ox, geometry, use_offset,
                                     use_mask)
    return modulation * b2_value(input, b, c, y, x)


@jitable
def deform_im2col_element_backward(grad, grad_input, offset, mask, b, row, oy, ox, geometry,
                                   use_offset, use_mask, atomic=True):
    """Scatter ``grad``, the gradient of ``columns[b, row, oy, ox]``, into ``grad_input`` (atomically
    on the GPU unless ``atomic`` is False)."""
    taps = geometry[0] * geometry[1]
    c = row // taps
    tap = row - c * taps
    g = c // (grad_input.shape[1] // offset_groups(offset, mask, taps, use_offset, use_mask))
    y, x, modulation = deform_sample(grad_input, offset, mask, b, g, tap, oy, ox, geometry,
                                     use_offset, use_mask)
    b2_scatter(grad_input, b, c, y, x, modulation * grad, atomic)


@jitable
def deform_coordinate_gradient(grad_columns, input, offset, mask, b, g, tap, oy, ox, geometry,
                               use_offset, use_mask):
    """``(d/d offset_y, d/d offset_x, d/d mask)`` of ``sum(grad_columns * columns)`` for tap ``tap``
    of offset group ``g`` at ``(b, oy, ox)``: sums over the channels of the group."""
    f = input.dtype.type
    taps = geometry[0] * geometry[1]
    per_group = input.shape[1] // offset_groups(offset, mask, taps, use_offset, use_mask)
    y, x, modulation = deform_sample(input, offset, mask, b, g, tap, oy, ox, geometry, use_offset,
                                     use_mask)
    grad_y = f(0)
    grad_x = f(0)
    grad_mask = f(0)
    for c in range(g * per_group, (g + 1) * per_group):
        grad = grad_columns[b, c * taps + tap, oy, ox]
        if use_offset:
            dy, dx = b2_coordinate_gradient(input, b, c, y, x)
            grad_y += grad * dy
            grad_x += grad * dx
        if use_mask:
            grad_mask += grad * b2_value(input, b, c, y, x)
    return grad_y * modulation, grad_x * modulation, grad_mask


# The cuda kernels give each thread one element of the array they loop over.

# -- cuda schedule ---------------------------------------------------------------------------------

@cuda_kernel("F4 F4 F4 i i i i i i i i b b F4")
def deform_im2col_cuda(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w, use_offset, use_mask, columns):
    geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    for index in range(thread_start(), columns.size, thread_stride()):
        b, row, oy, ox = unravel_output_index(index, columns.shape)
        columns[b, row, oy, ox] = deform_im2col_element(input, offset, mask, b, row, oy, ox, geometry,
                                                        use_offset, use_mask)


@cuda_kernel("F4 F4 F4 i i i i i i i i b b F4")
def deform_im2col_backward_cuda(grad_columns, offset, mask, kernel_h, kernel_w, stride_h, stride_w,
                                pad_h, pad_w, dilation_h, dilation_w, use_offset, use_mask,
                                grad_input):
    geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    for index in range(thread_start(), grad_columns.size, thread_stride()):
        b, row, oy, ox = unravel_output_index(index, grad_columns.shape)
        deform_im2col_element_backward(grad_columns[b, row, oy, ox], grad_input, offset, mask, b, row,
                                       oy, ox, geometry, use_offset, use_mask)


@cuda_kernel("F4 F4 F4 i i i i i i i i b b F4")
def deform_im2col_backward_deterministic_cuda(grad_columns, offset, mask, kernel_h, kernel_w, stride_h,
                                              stride_w, pad_h, pad_w, dilation_h, dilation_w,
                                              use_offset, use_mask, grad_input):
    # One thread per plane grad_input[b, c]: only the rows of channel c scatter into it, in a fixed
    # order and without atomics (deterministic algorithms), as deform_im2col_backward_cpu.
    geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    taps = kernel_h * kernel_w
    channels = grad_input.shape[1]
    for plane in range(thread_start(), grad_input.shape[0] * channels, thread_stride()):
        b = plane // channels
        c = plane - b * channels
        for tap in range(taps):
            for oy in range(grad_columns.shape[2]):
                for ox in range(grad_columns.shape[3]):
                    deform_im2col_element_backward(grad_columns[b, c * taps + tap, oy, ox], grad_input,
                                                   offset, mask, b, c * taps + tap, oy, ox, geometry,
                                                   use_offset, use_mask, False)


@jitable
def coordinate_gradient_shape(grad_offset, grad_mask, use_offset):
    """``(N, G*kh*kw, Ho, Wo)``: one element per (image, group, tap, output pixel)."""
    if use_offset:
        return (grad_offset.shape[0], grad_offset.shape[1] // 2, grad_offset.shape[2],
                grad_offset.shape[3])
    return grad_mask.shape[0], grad_mask.shape[1], grad_mask.shape[2], grad_mask.shape[3]


@cuda_kernel("F4 F4 F4 F4 i i i i i i i i b b F4 F4")
def deform_im2col_coordinate_gradient_cuda(grad_columns, input, offset, mask, kernel_h, kernel_w,
                                           stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                                           use_offset, use_mask, grad_offset, grad_mask):
    geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    taps = kernel_h * kernel_w
    shape = coordinate_gradient_shape(grad_offset, grad_mask, use_offset)
    for index in range(thread_start(), shape[0] * shape[1] * shape[2] * shape[3], thread_stride()):
        b, group_tap, oy, ox = unravel_output_index(index, shape)
        g = group_tap // taps
        grad_y, grad_x, grad_m = deform_coordinate_gradient(
            grad_columns, input, offset, mask, b, g, group_tap - g * taps, oy, ox, geometry,
            use_offset, use_mask)
        if use_offset:
            grad_offset[b, 2 * group_tap, oy, ox] = grad_y
            grad_offset[b, 2 * group_tap + 1, oy, ox] = grad_x
        if use_mask:
            grad_mask[b, group_tap, oy, ox] = grad_m


# -- cpu fast path: the body's values by another schedule ------------------------------------------

def deform_im2col_cpu(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                      dilation_h, dilation_w, use_offset, use_mask, columns):
    # Per (image, offset group, tap), the B2 cell of every output pixel is computed once and reused
    # for all the group's channels (the same helpers as deform_im2col_element, in another order): as
    # the index of its top-left corner in a channels-last copy of the input with a border of zeros (a
    # corner outside the map reads a zero, without a test) and its four corner weights. A tile of
    # pixels is computed for all the group's channels at once (the corners' channels contiguous), then
    # written into the columns' rows, each a contiguous run of the tile's pixels.
    taps = kernel_h * kernel_w
    parallel_for(_deform_im2col_planes, columns.shape[0] * offset_groups(offset, mask, taps, use_offset,
                                                                         use_mask) * taps,
                 input, channels_last_bordered(input), offset, mask, kernel_h, kernel_w, stride_h, stride_w,
                 pad_h, pad_w, dilation_h, dilation_w, use_offset, use_mask, columns)


IM2COL_TILE = 16  # pixels: the tile of all a group's channels stays in the first-level cache


def zero_bordered(input):
    """A copy of ``(N, C, H, W)`` planes with a border of one zero all round and a second zero row at
    the bottom, ``(N, C, H + 3, W + 2)``: every corner of a B2 cell in ``(-1, H) x (-1, W)`` lies in
    it, and a sample outside the map reads its last two rows (``bordered_cells``)."""
    images, channels, height, width = input.shape
    bordered = np.zeros((images, channels, height + 3, width + 2), input.dtype)
    bordered[:, :, 1:height + 1, 1:-1] = input
    return bordered


@jitable
def deform_plane_cells(input, offset, mask, b, g, tap, geometry, use_offset, use_mask, corners,
                       fractions):
    """The B2 cell of tap ``tap`` of offset group ``g`` at every output pixel of image ``b``:
    ``corners[oy, ox] = (y_low, x_low)`` and ``fractions[oy, ox] = (ly, lx, modulation)``; a sample
    outside the map gets the cell at ``(-2, -2)``, all of whose corners are outside (its value 0, its
    gradient 0, nothing scattered)."""
    f = input.dtype.type
    for oy in range(corners.shape[0]):
        for ox in range(corners.shape[1]):
            y, x, modulation = deform_sample(input, offset, mask, b, g, tap, oy, ox, geometry, use_offset,
                                             use_mask)
            inside, y_low, x_low, ly, lx = b2_cell(input, y, x)
            if not inside:
                y_low, x_low, ly, lx = -2, -2, f(0), f(0)
            corners[oy, ox, 0] = y_low
            corners[oy, ox, 1] = x_low
            fractions[oy, ox, 0] = ly
            fractions[oy, ox, 1] = lx
            fractions[oy, ox, 2] = modulation


@jitable
def plane_scratch(input, out_h, out_w):
    """Empty ``(corners, fractions, firsts, weights)`` for ``plane_cells`` of an ``out_h x out_w`` output
    (``fractions``: ``ly, lx, modulation`` per pixel)."""
    return (np.empty((out_h, out_w, 2), np.int64), np.empty((out_h, out_w, 3), input.dtype),
            np.empty(out_h * out_w, np.int64), np.empty((out_h * out_w, 5), input.dtype))


@jitable
def plane_cells(input, offset, mask, b, g, tap, geometry, use_offset, use_mask, corners, fractions, firsts,
                weights):
    """``deform_plane_cells`` of plane ``(b, g, tap)`` and their ``bordered_cells``."""
    deform_plane_cells(input, offset, mask, b, g, tap, geometry, use_offset, use_mask, corners, fractions)
    bordered_cells(corners, fractions, input.shape[2], input.shape[3], firsts, weights)


@jitable
def plane_of(plane, group_taps, taps):
    """``(b, g, tap)`` of an (image, offset group, tap) plane numbered ``(b * G + g) * taps + tap``."""
    b = plane // group_taps
    group_tap = plane - b * group_taps
    g = group_tap // taps
    return b, g, group_tap - g * taps


@jitable
def bordered_cells(corners, fractions, height, width, firsts, weights):
    """``deform_plane_cells``' cells in a ``zero_bordered`` plane of an ``height x width`` map, flat
    over the output pixels: ``firsts[p]``, the index of the cell's top-left corner, and
    ``weights[p]``, ``b2_combine``'s four corner weights then the modulation. A sample outside the map
    (its cell at (-2, -2)) gets a cell in the two zero rows at the bottom, so that all its corners
    read (or take) zeros."""
    f = fractions.dtype.type
    out_w = corners.shape[1]
    row_length = width + 2
    for oy in range(corners.shape[0]):
        for ox in range(out_w):
            p = oy * out_w + ox
            ly, lx = fractions[oy, ox, 0], fractions[oy, ox, 1]
            hy, hx = f(1) - ly, f(1) - lx
            firsts[p] = (height + 1) * row_length if corners[oy, ox, 0] < -1 else (
                (corners[oy, ox, 0] + 1) * row_length + corners[oy, ox, 1] + 1)
            weights[p, 0], weights[p, 1] = hy * hx, hy * lx
            weights[p, 2], weights[p, 3] = ly * hx, ly * lx
            weights[p, 4] = fractions[oy, ox, 2]


@cpu_function
def _deform_im2col_planes(start, stop, input, bordered, offset, mask, kernel_h, kernel_w, stride_h, stride_w,
                          pad_h, pad_w, dilation_h, dilation_w, use_offset, use_mask, columns):
    geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    taps = kernel_h * kernel_w
    out_h, out_w = columns.shape[2], columns.shape[3]
    pixels = out_h * out_w
    row_length = bordered.shape[2]
    group_taps = offset_groups(offset, mask, taps, use_offset, use_mask) * taps
    per_group = input.shape[1] // (group_taps // taps)
    corners, fractions, firsts, weights = plane_scratch(input, out_h, out_w)
    tile = np.empty((IM2COL_TILE, per_group), input.dtype)
    flat_columns = columns.reshape((columns.shape[0], columns.shape[1], pixels))
    channels = np.uint64(per_group)  # (unsigned indices: no wraparound tests, which keep loops scalar)
    for plane in range(start, stop):
        b, g, tap = plane_of(plane, group_taps, taps)
        plane_cells(input, offset, mask, b, g, tap, geometry, use_offset, use_mask, corners, fractions,
                    firsts, weights)
        rows = bordered[b].reshape((-1, bordered.shape[3]))
        first_channel = np.uint64(g * per_group)
        for tile_start in range(0, pixels, IM2COL_TILE):
            tile_stop = min(tile_start + IM2COL_TILE, pixels)
            for p in range(tile_start, tile_stop):
                first = firsts[p]
                corner_ll, corner_lh = rows[first], rows[first + 1]
                corner_hl, corner_hh = rows[first + row_length], rows[first + row_length + 1]
                w_ll, w_lh, w_hl, w_hh, modulation = (weights[p, 0], weights[p, 1], weights[p, 2],
                                                      weights[p, 3], weights[p, 4])
                values = tile[p - tile_start]
                for i in range(np.uint64(0), channels):
                    c = first_channel + i
                    # b2_combine's products and sums, in its order
                    values[i] = modulation * (w_ll * corner_ll[c] + w_lh * corner_lh[c]
                                              + w_hl * corner_hl[c] + w_hh * corner_hh[c])
            for i in range(np.uint64(0), channels):
                target = flat_columns[b, (first_channel + i) * np.uint64(taps) + np.uint64(tap)]
                for p in range(tile_start, tile_stop):
                    target[p] = tile[p - tile_start, i]


def deform_im2col_backward_cpu(grad_columns, offset, mask, kernel_h, kernel_w, stride_h, stride_w,
                               pad_h, pad_w, dilation_h, dilation_w, use_offset, use_mask,
                               grad_input):
    # The cells of every (image, offset group, tap) first (bordered_cells), then an iteration per
    # plane grad_input[b, c], which it owns: only the rows of channel c scatter into it, into a
    # zero-bordered plane (no bounds tests) whose inside is then copied out.
    taps = kernel_h * kernel_w
    planes = grad_input.shape[0] * offset_groups(offset, mask, taps, use_offset, use_mask) * taps
    pixels = grad_columns.shape[2] * grad_columns.shape[3]
    firsts = np.empty((planes, pixels), np.int64)
    weights = np.empty((planes, pixels, 5), grad_input.dtype)
    parallel_for(_deform_cells_planes, planes, grad_input, offset, mask, kernel_h, kernel_w, stride_h,
                 stride_w, pad_h, pad_w, dilation_h, dilation_w, use_offset, use_mask, grad_columns.shape[2],
                 grad_columns.shape[3], firsts, weights)
    parallel_for(_deform_im2col_backward_planes, grad_input.shape[0] * grad_input.shape[1], grad_columns,
                 taps, firsts, weights, grad_input)


@cpu_function
def _deform_cells_planes(start, stop, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                         pad_w, dilation_h, dilation_w, use_offset, use_mask, out_h, out_w, firsts, weights):
    geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    taps = kernel_h * kernel_w
    group_taps = offset_groups(offset, mask, taps, use_offset, use_mask) * taps
    corners = np.empty((out_h, out_w, 2), np.int64)
    fractions = np.empty((out_h, out_w, 3), input.dtype)
    for plane in range(start, stop):
        b, g, tap = plane_of(plane, group_taps, taps)
        plane_cells(input, offset, mask, b, g, tap, geometry, use_offset, use_mask, corners, fractions,
                    firsts[plane], weights[plane])


@cpu_function
def _deform_im2col_backward_planes(start, stop, grad_columns, taps, firsts, weights, grad_input):
    channels, height, width = grad_input.shape[1:]
    groups = firsts.shape[0] // (grad_input.shape[0] * taps)
    per_group = channels // groups
    pixels = grad_columns.shape[2] * grad_columns.shape[3]
    row_length = width + 2
    flat_grad_columns = grad_columns.reshape((grad_columns.shape[0], grad_columns.shape[1], pixels))
    bordered = np.empty((height + 3) * row_length, grad_input.dtype)  # as zero_bordered's planes
    for plane in range(start, stop):
        b = plane // channels
        c = plane - b * channels
        g = c // per_group
        bordered[:] = 0
        for tap in range(taps):
            cells = (b * groups + g) * taps + tap
            plane_firsts, plane_weights = firsts[cells], weights[cells]
            grads = flat_grad_columns[b, c * taps + tap]
            for p in range(pixels):
                # b2_scatter_cell's products, into the corners in its order
                grad = plane_weights[p, 4] * grads[p]
                first = plane_firsts[p]
                below = first + row_length
                bordered[first] += plane_weights[p, 0] * grad
                bordered[first + 1] += plane_weights[p, 1] * grad
                bordered[below] += plane_weights[p, 2] * grad
                bordered[below + 1] += plane_weights[p, 3] * grad
        for y in range(height):
            for x in range(width):
                grad_input[b, c, y, x] = bordered[(y + 1) * row_length + x + 1]


def deform_im2col_coordinate_gradient_cpu(grad_columns, input, offset, mask, kernel_h, kernel_w,
                                          stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                                          use_offset, use_mask, grad_offset, grad_mask):
    # Each iteration owns one (image, group, tap): its two offset planes and its mask plane, which
    # must be zero-filled. It computes the plane's cells once (bordered_cells, on a zero-bordered copy
    # of the input, as the im2col), then sums over the group's channels in the order of
    # deform_coordinate_gradient, plane by plane (contiguous reads), then applies the mask.
    images, group_taps, _, _ = coordinate_gradient_shape(grad_offset, grad_mask, use_offset)
    parallel_for(_deform_im2col_coordinate_gradient_planes, images * group_taps, grad_columns, input,
                 zero_bordered(input), offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                 dilation_h, dilation_w, use_offset, use_mask, grad_offset, grad_mask)


@cpu_function
def _deform_im2col_coordinate_gradient_planes(start, stop, grad_columns, input, bordered, offset, mask,
                                              kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                              dilation_h, dilation_w, use_offset, use_mask, grad_offset,
                                              grad_mask):
    geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    taps = kernel_h * kernel_w
    _, group_taps, out_h, out_w = coordinate_gradient_shape(grad_offset, grad_mask, use_offset)
    pixels = out_h * out_w
    row_length = input.shape[3] + 2
    per_group = input.shape[1] // (group_taps // taps)
    corners, fractions, firsts, weights = plane_scratch(input, out_h, out_w)
    flat_fractions = fractions.reshape((pixels, 3))
    flat_columns = grad_columns.reshape((grad_columns.shape[0], grad_columns.shape[1], pixels))
    flat_bordered = bordered.reshape((bordered.shape[0], bordered.shape[1], -1))
    # (the one not in use is a placeholder of size 0)
    flat_offset = grad_offset.reshape((grad_offset.shape[0], grad_offset.shape[1],
                                       grad_offset.shape[2] * grad_offset.shape[3]))
    flat_mask = grad_mask.reshape((grad_mask.shape[0], grad_mask.shape[1],
                                   grad_mask.shape[2] * grad_mask.shape[3]))
    for plane in range(start, stop):
        b, g, tap = plane_of(plane, group_taps, taps)
        group_tap = g * taps + tap
        plane_cells(input, offset, mask, b, g, tap, geometry, use_offset, use_mask, corners, fractions,
                    firsts, weights)
        for c in range(g * per_group, (g + 1) * per_group):
            source = flat_bordered[b, c]
            grads = flat_columns[b, c * taps + tap]
            for p in range(pixels):
                grad = grads[p]
                first = firsts[p]
                below = first + row_length
                v_ll, v_lh = source[first], source[first + 1]
                v_hl, v_hh = source[below], source[below + 1]
                ly, lx = flat_fractions[p, 0], flat_fractions[p, 1]
                if use_offset:
                    dy, dx = b2_gradient_of_corners(v_ll, v_lh, v_hl, v_hh, ly, lx)
                    flat_offset[b, 2 * group_tap, p] += grad * dy
                    flat_offset[b, 2 * group_tap + 1, p] += grad * dx
                if use_mask:
                    flat_mask[b, group_tap, p] += grad * b2_combine(v_ll, v_lh, v_hl, v_hh, ly, lx)
        if use_offset and use_mask:
            for oy in range(out_h):
                for ox in range(out_w):
                    modulation = mask[b, group_tap, oy, ox]
                    grad_offset[b, 2 * group_tap, oy, ox] *= modulation
                    grad_offset[b, 2 * group_tap + 1, oy, ox] *= modulation


# -- cpu backward, channels last ------------------------------------------------------------------
#
# The cpu backward's column arrays are channels-last, ``columns[b, p, k]`` for output pixel ``p``, with
# ``k = (gw * taps + tap) * Cg + c - gw * Cg`` for channel ``c`` of weight group ``gw`` (of ``Cg``
# channels): the matrix products give either layout, and in this one a sample's channels are
# contiguous, as they are in a channels-last copy of the input. Each sample then reads (or adds into)
# four contiguous corner rows, and the loops over the channels are vectorised; in the planes' layout a
# sample's channels are a plane apart. The cells come from the same helpers as the planes' im2col.

def channels_last_bordered(input):
    """``zero_bordered``'s copy with the channels last: ``(N, H + 3, W + 2, C)``."""
    images, channels, height, width = input.shape
    bordered = np.zeros((images, height + 3, width + 2, channels), input.dtype)
    parallel_for(_bordered_rows, images * height, input, bordered, True)
    return bordered


def channels_first_inside(bordered, features):
    """The inverse of ``channels_last_bordered``: its inside written into ``(N, C, H, W)`` features."""
    parallel_for(_bordered_rows, features.shape[0] * features.shape[2], features, bordered, False)


@cpu_function
def _bordered_rows(start, stop, features, bordered, into_bordered):
    channels, height, width = features.shape[1:]
    for image_row in range(start, stop):
        n = image_row // height
        h = image_row - n * height
        for c in range(channels):
            for w in range(width):
                if into_bordered:
                    bordered[n, h + 1, w + 1, c] = features[n, c, h, w]
                else:
                    features[n, c, h, w] = bordered[n, h + 1, w + 1, c]


@jitable
def channels_last_run(c, last, tap, taps, group_channels):
    """``(shift, end)``: channels ``c .. end - 1`` (at most ``last``, all in ``c``'s weight group of
    ``group_channels``) have their columns at tap ``tap`` at ``shift + c ..``, contiguous; unsigned,
    so that indexing with them needs no wraparound test (which would keep the loops scalar)."""
    group = c // group_channels
    return (np.uint64((group * taps + tap - group) * group_channels),
            np.uint64(min(last, (group + 1) * group_channels)))


def deform_im2col_channels_last_cpu(input, bordered, offset, mask, kernel_h, kernel_w, stride_h, stride_w,
                                    pad_h, pad_w, dilation_h, dilation_w, use_offset, use_mask, out_h, out_w,
                                    group_channels, columns):
    """The im2col into channels-last ``columns (nb, Ho*Wo, C*kh*kw)`` from ``channels_last_bordered``'s
    copy of ``input``: the products and sums of ``deform_im2col_cpu``, in another layout."""
    taps = kernel_h * kernel_w
    parallel_for(_im2col_channels_last_planes, columns.shape[0] * offset_groups(
        offset, mask, taps, use_offset, use_mask) * taps, input, bordered, offset, mask, kernel_h, kernel_w,
        stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, use_offset, use_mask, out_h, out_w,
        group_channels, columns)


@cpu_function
def _im2col_channels_last_planes(start, stop, input, bordered, offset, mask, kernel_h, kernel_w, stride_h,
                                 stride_w, pad_h, pad_w, dilation_h, dilation_w, use_offset, use_mask, out_h,
                                 out_w, group_channels, columns):
    geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    taps = kernel_h * kernel_w
    pixels = out_h * out_w
    row_length = bordered.shape[2]
    group_taps = offset_groups(offset, mask, taps, use_offset, use_mask) * taps
    per_group = input.shape[1] // (group_taps // taps)
    corners, fractions, firsts, weights = plane_scratch(input, out_h, out_w)
    for plane in range(start, stop):
        b, g, tap = plane_of(plane, group_taps, taps)
        plane_cells(input, offset, mask, b, g, tap, geometry, use_offset, use_mask, corners, fractions,
                    firsts, weights)
        rows = bordered[b].reshape((-1, bordered.shape[3]))
        last = (g + 1) * per_group
        for p in range(pixels):
            first = firsts[p]
            corner_ll, corner_lh = rows[first], rows[first + 1]
            corner_hl, corner_hh = rows[first + row_length], rows[first + row_length + 1]
            w_ll, w_lh, w_hl, w_hh, modulation = (weights[p, 0], weights[p, 1], weights[p, 2], weights[p, 3],
                                                  weights[p, 4])
            target = columns[b, p]
            c = g * per_group
            while c < last:
                shift, end = channels_last_run(c, last, tap, taps, group_channels)
                for i in range(np.uint64(c), end):
                    # b2_combine's products and sums, in its order
                    target[shift + i] = modulation * (w_ll * corner_ll[i] + w_lh * corner_lh[i]
                                                      + w_hl * corner_hl[i] + w_hh * corner_hh[i])
                c = np.int64(end)


def deform_col2im_channels_last_cpu(grad_columns, input, offset, mask, kernel_h, kernel_w, stride_h,
                                    stride_w, pad_h, pad_w, dilation_h, dilation_w, use_offset, use_mask,
                                    out_h, out_w, group_channels, grad_bordered):
    """The adjoint of ``deform_im2col_channels_last_cpu``: ``grad_columns (nb, Ho*Wo, C*kh*kw)``
    scattered into ``grad_bordered``, a zero-filled ``channels_last_bordered`` array (its inside is the
    input gradient), by a parallel iteration per image and block of channels, which owns them: each
    element's adds in ``deform_im2col_backward_cpu``'s order, 16 channels at a time as vectors
    (kernels/lanes.py: four rows of adds, which the compiler's vectoriser leaves scalar)."""
    images, channels = grad_columns.shape[0], input.shape[1]
    per_image = -(-get_num_threads() // images)  # blocks of each image's channels, a multiple of 8 wide
    width = -(-channels // (8 * per_image)) * 8
    blocks = -(-channels // width)
    parallel_for(_col2im_channels_last_blocks, images * blocks, blocks, width, grad_columns, input, offset,
                 mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                 use_offset, use_mask, out_h, out_w, group_channels, grad_bordered)


@cpu_function
def _col2im_channels_last_blocks(start, stop, blocks, width, grad_columns, input, offset, mask, kernel_h,
                                 kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                                 use_offset, use_mask, out_h, out_w, group_channels, grad_bordered):
    geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    taps = kernel_h * kernel_w
    pixels = out_h * out_w
    channels = grad_bordered.shape[3]
    groups = offset_groups(offset, mask, taps, use_offset, use_mask)
    per_group = channels // groups
    row_length = grad_bordered.shape[2]
    lanes = np.uint64(LANES)
    corners, fractions, firsts, weights = plane_scratch(input, out_h, out_w)
    flat_fractions = fractions.reshape((pixels, 3))
    for unit in range(start, stop):
        b = unit // blocks
        block = unit - b * blocks
        rows = grad_bordered[b].reshape((-1, channels))
        for g in range(groups):
            low = max(block * width, g * per_group)
            high = min((block + 1) * width, (g + 1) * per_group, channels)
            if low >= high:
                continue
            for tap in range(taps):
                plane_cells(input, offset, mask, b, g, tap, geometry, use_offset, use_mask, corners,
                            fractions, firsts, weights)
                for p in range(pixels):
                    first = firsts[p]
                    below = first + row_length
                    corner_ll, corner_lh = rows[first], rows[first + 1]
                    corner_hl, corner_hh = rows[below], rows[below + 1]
                    w_ll, w_lh, w_hl, w_hh, modulation = (weights[p, 0], weights[p, 1], weights[p, 2],
                                                          weights[p, 3], weights[p, 4])
                    ly, lx = flat_fractions[p, 0], flat_fractions[p, 1]
                    source = grad_columns[b, p]
                    c = low
                    while c < high:
                        shift, end = channels_last_run(c, high, tap, taps, group_channels)
                        i = np.uint64(c)
                        while i + lanes <= end:
                            lanes_b2_scatter(rows, first, first + 1, below, below + 1, i, source, shift + i,
                                             ly, lx, modulation)
                            i += lanes
                        for i in range(i, end):
                            # b2_scatter_cell's products, into the corners in its order
                            grad = modulation * source[shift + i]
                            corner_ll[i] += w_ll * grad
                            corner_lh[i] += w_lh * grad
                            corner_hl[i] += w_hl * grad
                            corner_hh[i] += w_hh * grad
                        c = np.int64(end)


def deform_coordinate_gradient_channels_last_cpu(grad_columns, input, bordered, offset, mask, kernel_h,
                                                 kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                                                 dilation_w, use_offset, use_mask, group_channels,
                                                 grad_offset, grad_mask):
    """The offset and mask gradients from channels-last ``grad_columns`` and ``channels_last_bordered``'s
    copy of ``input``, written whole. A sample's value and coordinate derivatives are linear in its four
    corner values, so each sample sums ``grad_columns`` times each corner row over its channels first
    (four sums, reassociated) and applies rule B2's derivative to them once: the sums of
    ``deform_coordinate_gradient`` in another order. An iteration per (image, offset group, tap)."""
    images, group_taps, _, _ = coordinate_gradient_shape(grad_offset, grad_mask, use_offset)
    parallel_for(_coordinate_gradient_channels_last_planes, images * group_taps, grad_columns, input,
                 bordered, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                 dilation_w, use_offset, use_mask, group_channels, grad_offset, grad_mask)


@cpu_function(reassociate=True)
def _coordinate_gradient_channels_last_planes(start, stop, grad_columns, input, bordered, offset, mask,
                                              kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                              dilation_h, dilation_w, use_offset, use_mask, group_channels,
                                              grad_offset, grad_mask):
    geometry = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    f = input.dtype.type
    taps = kernel_h * kernel_w
    _, group_taps, out_h, out_w = coordinate_gradient_shape(grad_offset, grad_mask, use_offset)
    pixels = out_h * out_w
    row_length = bordered.shape[2]
    per_group = input.shape[1] // (group_taps // taps)
    corners, fractions, firsts, weights = plane_scratch(input, out_h, out_w)
    flat_fractions = fractions.reshape((pixels, 3))
    for plane in range(start, stop):
        b, g, tap = plane_of(plane, group_taps, taps)
        group_tap = g * taps + tap
        plane_cells(input, offset, mask, b, g, tap, geometry, use_offset, use_mask, corners, fractions,
                    firsts, weights)
        rows = bordered[b].reshape((-1, bordered.shape[3]))
        last = (g + 1) * per_group
        for p in range(pixels):
            first = firsts[p]
            corner_ll, corner_lh = rows[first], rows[first + 1]
            corner_hl, corner_hh = rows[first + row_length], rows[first + row_length + 1]
            grads = grad_columns[b, p]
            v_ll = f(0)
            v_lh = f(0)
            v_hl = f(0)
            v_hh = f(0)
            c = g * per_group
            while c < last:
                shift, end = channels_last_run(c, last, tap, taps, group_channels)
                for i in range(np.uint64(c), end):
                    grad = grads[shift + i]
                    v_ll += grad * corner_ll[i]
                    v_lh += grad * corner_lh[i]
                    v_hl += grad * corner_hl[i]
                    v_hh += grad * corner_hh[i]
                c = np.int64(end)
            oy = p // out_w
            ox = p - oy * out_w
            ly, lx = flat_fractions[p, 0], flat_fractions[p, 1]
            if use_offset:
                dy, dx = b2_gradient_of_corners(v_ll, v_lh, v_hl, v_hh, ly, lx)
                modulation = flat_fractions[p, 2]
                grad_offset[b, 2 * group_tap, oy, ox] = dy * modulation
                grad_offset[b, 2 * group_tap + 1, oy, ox] = dx * modulation
            if use_mask:
                grad_mask[b, group_tap, oy, ox] = b2_combine(v_ll, v_lh, v_hl, v_hh, ly, lx)


KERNELS = {
    "im2col": {"cpu": deform_im2col_cpu, "cuda": deform_im2col_cuda},
    "col2im": {"cpu": deform_im2col_backward_cpu, "cuda": deform_im2col_backward_cuda,
               "cuda_deterministic": deform_im2col_backward_deterministic_cuda},
    "coordinate_gradient": {"cpu": deform_im2col_coordinate_gradient_cpu,
                            "cuda": deform_im2col_coordinate_gradient_cuda},
}
