"""Multi-scale deformable attention kernels (Deformable DETR), in three parts.

``value[n, s, m, d]`` holds the levels' maps flattened row-major and concatenated: level ``l`` of
``spatial_shapes[l] = (H_l, W_l)`` starts at ``s = level_start_index[l]``. Output element ``(n, q, m,
d)`` sums, over the levels ``l`` and points ``p``, ``attention_weights[n, q, m, l, p]`` times the value
of channel ``d`` of head ``m`` sampled by rule B2 at ``y = loc_y * H_l - 0.5``, ``x = loc_x * W_l -
0.5`` (``(loc_x, loc_y) = sampling_locations[n, q, m, l, p]``, normalised: 0 to 1 spans the map).

* The body, shared by the targets, on views of one query's and one head's data (fewer live strides
  in a cuda thread): ``msda_sample`` (where a point samples, and its B2 cell), ``msda_cell_rows`` (the
  value rows of the cell's corners, and whether each lies in the map), ``msda_element`` (one output
  element), ``msda_element_backward`` (the scatter of its gradient into the value gradient, atomic on
  the GPU) and ``msda_point_gradient`` (the gradients of one point's location and attention weight,
  sums over the head's channels).
* The cuda schedule: ``*_cuda`` kernels, a thread per output element for the forward and the value
  gradient, a thread per ``(n, q, m, l, p)`` for the location and weight gradients (looping over the
  channels, so without atomics); the deterministic value gradient, a thread per ``(n, m, d)`` column
  of the value gradient, which it owns.
* The cpu fast path: ``*_cpu`` drivers, a parallel iteration per ``(n, m)`` (image and head), which
  copies its value rows into a zero-bordered slab that stays in cache while its queries sample it,
  and owns its value gradient; each sample's cell computed once for all the head's channels
  (contiguous in the slab), and, where all three gradients are wanted, used once for all of them
  (``backward_all``, a cpu-only stage).

The tests run the cuda kernels themselves on the cpu (``_backend.cuda_kernels_on_cpu``) and require
the cpu fast path to give their outputs bit for bit and their gradients to rounding.

Kernel arguments: ``(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
normalised, output)``, ``(grad_output, spatial_shapes, level_start_index, sampling_locations,
attention_weights, normalised, grad_value)`` and ``(value, grad_output, spatial_shapes,
level_start_index, sampling_locations, attention_weights, normalised, grad_locations, grad_weights)``
(``backward_all``: ``value``, then the second's arguments, then the two point gradients);
``output`` and ``grad_output`` are ``(N, Lq, M, D)``, ``spatial_shapes`` and ``level_start_index``
int64, ``output`` (which the cpu forward adds into) and ``grad_value`` zero-filled; the other
gradients are written whole. ``normalised`` (a bool):
the locations are normalised as above (ms_deform_attn), or else in pixels, ``(x, y)`` sampled as
they are (dcnv3 and dcnv4, one level whose rows are the input's pixels), their gradients without the
factors ``W_l``, ``H_l``.
"""
import numpy as np

from .._backend import (add_1d, cpu_function, cuda_kernel, jitable, jitable_inlined_on_cpu, parallel_for,
                        thread_start, thread_stride)
from .bilinear import b2_cell_of, b2_combine, b2_gradient_of_corners
from .lanes import LANES, lanes_b2_add, lanes_b2_scatter, lanes_corner_sums
from .roi_align import unravel_output_index


# -- body: one output element and its gradient, from the definition --------------------------------
#
# ``locations = sampling_locations[n, q, m]`` (L, P, 2) and ``weights = attention_weights[n, q, m]``
# (L, P) are one query's and head's points; ``column = value[n, :, m, d]`` one channel's rows,
# ``pixels = value[n, :, m, :]`` all the head's. Rows, levels and points are counted in int32: fewer
# registers in a cuda thread.

@jitable_inlined_on_cpu
def msda_sample(spatial_shapes, locations, level, p, normalised):
    """Where point ``p`` of level ``level`` samples: ``(inside, y_low, x_low, ly, lx, height,
    width)``, the B2 cell of ``(loc_y * H - 0.5, loc_x * W - 0.5)`` in the level's map, or of
    ``(loc_y, loc_x)`` unless ``normalised`` (locations in pixels)."""
    f = locations.dtype.type
    height = np.int32(spatial_shapes[level, 0])
    width = np.int32(spatial_shapes[level, 1])
    x = locations[level, p, 0]
    y = locations[level, p, 1]
    if normalised:
        x = x * f(width) - f(0.5)
        y = y * f(height) - f(0.5)
    inside, y_low, x_low, ly, lx = b2_cell_of(height, width, y, x)
    return inside, np.int32(y_low), np.int32(x_low), ly, lx, height, width


@jitable_inlined_on_cpu
def msda_cell_rows(start, height, width, y_low, x_low):
    """The value rows of a B2 cell's corners in the level that starts at row ``start``, each with
    whether it lies in the map: ``(row_ll, in_ll, row_lh, in_lh, row_hl, in_hl, row_hh, in_hh)`` (a
    cell of ``b2_cell_of`` has ``-1 <= y_low <= H - 1``, the same for x)."""
    top = y_low >= 0
    bottom = y_low < height - 1
    left = x_low >= 0
    right = x_low < width - 1
    row = start + y_low * width + x_low
    return (row, top and left, row + 1, top and right, row + width, bottom and left, row + width + 1,
            bottom and right)


@jitable_inlined_on_cpu
def msda_corners(column, start, height, width, y_low, x_low):
    """The four corner values of a B2 cell in ``column`` (``ll, lh, hl, hh``), 0 outside the map."""
    f = column.dtype.type
    r_ll, in_ll, r_lh, in_lh, r_hl, in_hl, r_hh, in_hh = msda_cell_rows(start, height, width, y_low,
                                                                        x_low)
    return (column[r_ll] if in_ll else f(0), column[r_lh] if in_lh else f(0),
            column[r_hl] if in_hl else f(0), column[r_hh] if in_hh else f(0))


@jitable
def msda_element(column, spatial_shapes, level_start_index, locations, weights, normalised):
    """Output element ``(n, q, m, d)``: the attention-weighted sum of the samples of every level and
    point in ``column = value[n, :, m, d]``."""
    total = column.dtype.type(0)
    for level in range(np.int32(weights.shape[0])):
        start = np.int32(level_start_index[level])
        for p in range(np.int32(weights.shape[1])):
            inside, y_low, x_low, ly, lx, height, width = msda_sample(spatial_shapes, locations, level, p,
                                                                      normalised)
            if inside:
                v_ll, v_lh, v_hl, v_hh = msda_corners(column, start, height, width, y_low, x_low)
                total += weights[level, p] * b2_combine(v_ll, v_lh, v_hl, v_hh, ly, lx)
    return total


@jitable
def msda_element_backward(grad, grad_column, spatial_shapes, level_start_index, locations, weights,
                          normalised, atomic=True):
    """Scatter ``grad``, the gradient of ``msda_element``, into ``grad_column = grad_value[n, :, m,
    d]`` with each sample's B2 corner weights (atomically on the GPU unless ``atomic`` is False),
    nothing for corners outside the map."""
    f = grad_column.dtype.type
    for level in range(np.int32(weights.shape[0])):
        start = np.int32(level_start_index[level])
        for p in range(np.int32(weights.shape[1])):
            inside, y_low, x_low, ly, lx, height, width = msda_sample(spatial_shapes, locations, level, p,
                                                                      normalised)
            if inside:
                g = weights[level, p] * grad
                hy = f(1) - ly
                hx = f(1) - lx
                r_ll, in_ll, r_lh, in_lh, r_hl, in_hl, r_hh, in_hh = msda_cell_rows(start, height, width,
                                                                                    y_low, x_low)
                if in_ll:
                    add_1d(grad_column, r_ll, hy * hx * g, atomic)
                if in_lh:
                    add_1d(grad_column, r_lh, hy * lx * g, atomic)
                if in_hl:
                    add_1d(grad_column, r_hl, ly * hx * g, atomic)
                if in_hh:
                    add_1d(grad_column, r_hh, ly * lx * g, atomic)


@jitable
def msda_point_gradient(pixels, grad_row, spatial_shapes, level_start_index, locations, weights, level,
                        p, normalised):
    """``(d/d loc_x, d/d loc_y, d/d weight)`` of ``sum(grad_output * output)`` for point ``p`` of level
    ``level``, from ``pixels = value[n, :, m, :]`` and ``grad_row = grad_output[n, q, m, :]``; 0 for a
    sample outside its support. All three are linear in the corner values, so they come from the sums
    over the head's channels of ``grad_row`` times each corner's values."""
    f = pixels.dtype.type
    inside, y_low, x_low, ly, lx, height, width = msda_sample(spatial_shapes, locations, level, p,
                                                              normalised)
    if not inside:
        return f(0), f(0), f(0)
    r_ll, in_ll, r_lh, in_lh, r_hl, in_hl, r_hh, in_hh = msda_cell_rows(
        np.int32(level_start_index[level]), height, width, y_low, x_low)
    s_ll = f(0)
    s_lh = f(0)
    s_hl = f(0)
    s_hh = f(0)
    for d in range(pixels.shape[1]):
        g = grad_row[d]
        if in_ll:
            s_ll += g * pixels[r_ll, d]
        if in_lh:
            s_lh += g * pixels[r_lh, d]
        if in_hl:
            s_hl += g * pixels[r_hl, d]
        if in_hh:
            s_hh += g * pixels[r_hh, d]
    dy, dx = b2_gradient_of_corners(s_ll, s_lh, s_hl, s_hh, ly, lx)
    weight = weights[level, p]
    value = b2_combine(s_ll, s_lh, s_hl, s_hh, ly, lx)
    if normalised:
        return weight * f(width) * dx, weight * f(height) * dy, value
    return weight * dx, weight * dy, value


# -- cuda schedule ---------------------------------------------------------------------------------

@cuda_kernel("F4 I2 I1 F6 F5 b F4")
def ms_deform_attn_forward_cuda(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, normalised, output):
    for index in range(thread_start(), output.size, thread_stride()):
        n, q, m, d = unravel_output_index(index, output.shape)
        output[n, q, m, d] = msda_element(value[n, :, m, d], spatial_shapes, level_start_index,
                                          sampling_locations[n, q, m], attention_weights[n, q, m],
                                          normalised)


@cuda_kernel("F4 I2 I1 F6 F5 b F4")
def ms_deform_attn_backward_cuda(grad_output, spatial_shapes, level_start_index, sampling_locations,
                                 attention_weights, normalised, grad_value):
    for index in range(thread_start(), grad_output.size, thread_stride()):
        n, q, m, d = unravel_output_index(index, grad_output.shape)
        msda_element_backward(grad_output[n, q, m, d], grad_value[n, :, m, d], spatial_shapes,
                              level_start_index, sampling_locations[n, q, m], attention_weights[n, q, m],
                              normalised)


@cuda_kernel("F4 I2 I1 F6 F5 b F4")
def ms_deform_attn_backward_deterministic_cuda(grad_output, spatial_shapes, level_start_index,
                                               sampling_locations, attention_weights, normalised, grad_value):
    # One thread per column grad_value[n, :, m, d], which only the queries of image n and head m add
    # to: it walks them in order and adds without atomics (the order of the cpu driver).
    heads, channels = grad_value.shape[2], grad_value.shape[3]
    for column in range(thread_start(), grad_value.shape[0] * heads * channels, thread_stride()):
        n = column // (heads * channels)
        m = column // channels - n * heads
        d = column - (n * heads + m) * channels
        for q in range(grad_output.shape[1]):
            msda_element_backward(grad_output[n, q, m, d], grad_value[n, :, m, d], spatial_shapes,
                                  level_start_index, sampling_locations[n, q, m], attention_weights[n, q, m],
                                  normalised, False)


@cuda_kernel("F4 F4 I2 I1 F6 F5 b F6 F5")
def ms_deform_attn_location_weight_grad_cuda(value, grad_output, spatial_shapes, level_start_index,
                                             sampling_locations, attention_weights, normalised,
                                             grad_locations, grad_weights):
    for index in range(thread_start(), grad_weights.size, thread_stride()):
        n, q, m, point = unravel_output_index(index, (grad_weights.shape[0], grad_weights.shape[1],
                                                      grad_weights.shape[2],
                                                      grad_weights.shape[3] * grad_weights.shape[4]))
        level = point // grad_weights.shape[4]
        p = point - level * grad_weights.shape[4]
        grad_x, grad_y, grad_weight = msda_point_gradient(
            value[n, :, m, :], grad_output[n, q, m, :], spatial_shapes, level_start_index,
            sampling_locations[n, q, m], attention_weights[n, q, m], level, p, normalised)
        grad_locations[n, q, m, level, p, 0] = grad_x
        grad_locations[n, q, m, level, p, 1] = grad_y
        grad_weights[n, q, m, level, p] = grad_weight


# -- cpu fast path: the body's values by another schedule ------------------------------------------
#
# Each (image, head) first copies its value rows ``value[n, :, m, :]`` into a slab of its own, every
# level's map surrounded by a ring of zero rows: a sample's four corners are then rows of the slab
# whatever the cell (``b2_cell_of`` gives ``-1 <= y_low <= H - 1``), read (and, for the value
# gradient, added to: the ring's rows are dropped) without a branch, and the head's channels,
# contiguous in the slab, go in blocks of ``LANES`` vectors (lanes.py), the rest one by one. Corners
# outside the map read zeros, as the body's do: the same products and sums per channel.

def padded_levels(spatial_shapes):
    """``(starts, rows)``: the start row of each level in a head's slab, where level ``l`` takes
    ``(H_l + 2) * (W_l + 2)`` rows, and the slab's rows."""
    sizes = (np.asarray(spatial_shapes[:, 0]) + 2) * (np.asarray(spatial_shapes[:, 1]) + 2)
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64), int(sizes.sum())


@jitable
def msda_slab_row(padded_start, width, y, x):
    """The slab row of pixel ``(y, x)`` (``-1 <= y <= H``, the same for x) of a level."""
    return padded_start + (y + 1) * (width + 2) + x + 1


@jitable
def msda_copy_head(array, n, m, spatial_shapes, level_start_index, padded_starts, slab, into_slab):
    """Head ``m``'s rows ``array[n, :, m, :]`` into the interior of ``slab`` (rows, D), whose ring rows
    stay zero (``into_slab``), or else the slab's interior (a value gradient) back into them, the
    ring's adds dropped."""
    for level in range(spatial_shapes.shape[0]):
        height, width = spatial_shapes[level, 0], spatial_shapes[level, 1]
        for y in range(height):
            row = level_start_index[level] + y * width
            slab_row = msda_slab_row(padded_starts[level], width, y, 0)
            for x in range(width):
                for d in range(slab.shape[1]):
                    if into_slab:
                        slab[slab_row + x, d] = array[n, row + x, m, d]
                    else:
                        array[n, row + x, m, d] = slab[slab_row + x, d]


@jitable_inlined_on_cpu
def msda_slab_add(total, slab, ll, hl, ly, lx, weight):
    """``total[d] += weight *`` channel ``d``'s B2 value in the cell whose top corners are the slab's
    rows ``ll, ll + 1`` and bottom ones ``hl, hl + 1`` (fractions ``ly, lx``), for every channel."""
    channels = total.shape[0]
    blocked = channels - channels % LANES
    for d in range(0, blocked, LANES):
        lanes_b2_add(total, d, slab, ll, ll + 1, hl, hl + 1, d, ly, lx, weight)
    for d in range(blocked, channels):
        total[d] += weight * b2_combine(slab[ll, d], slab[ll + 1, d], slab[hl, d], slab[hl + 1, d], ly, lx)


@jitable_inlined_on_cpu
def msda_slab_backward(grads, values, grad_row, ll, width, ly, lx, weight, want_value, want_points):
    """The backward of ``msda_slab_add`` (``hl = ll + width + 2``) for ``grad_row``, the gradient of
    ``total``: its weighted corners added into the slab ``grads`` if ``want_value``, and ``(s_ll,
    s_lh, s_hl, s_hh)`` returned, the sums over the channels of ``grad_row`` times each corner's row
    of ``values`` if ``want_points`` (in another order than the body's), else zeros."""
    f = grad_row.dtype.type
    channels = grad_row.shape[0]
    blocked = channels - channels % LANES
    hl = ll + width + 2
    s_ll = f(0)
    s_lh = f(0)
    s_hl = f(0)
    s_hh = f(0)
    if want_points:
        for d in range(0, blocked, LANES):
            b_ll, b_lh, b_hl, b_hh = lanes_corner_sums(grad_row, d, values, ll, ll + 1, hl, hl + 1, d)
            s_ll += b_ll
            s_lh += b_lh
            s_hl += b_hl
            s_hh += b_hh
        for d in range(blocked, channels):
            g = grad_row[d]
            s_ll += g * values[ll, d]
            s_lh += g * values[ll + 1, d]
            s_hl += g * values[hl, d]
            s_hh += g * values[hl + 1, d]
    if want_value:
        hy = f(1) - ly
        hx = f(1) - lx
        for d in range(0, blocked, LANES):
            lanes_b2_scatter(grads, ll, ll + 1, hl, hl + 1, d, grad_row, d, ly, lx, weight)
        for d in range(blocked, channels):
            g = weight * grad_row[d]
            grads[ll, d] += hy * hx * g
            grads[ll + 1, d] += hy * lx * g
            grads[hl, d] += ly * hx * g
            grads[hl + 1, d] += ly * lx * g
    return s_ll, s_lh, s_hl, s_hh


def ms_deform_attn_forward_cpu(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights, normalised, output):
    padded_starts, rows = padded_levels(spatial_shapes)
    parallel_for(_ms_deform_attn_forward_heads, output.shape[0] * output.shape[2], value, spatial_shapes,
                 level_start_index, padded_starts, rows, sampling_locations, attention_weights, normalised,
                 output)


@cpu_function
def _ms_deform_attn_forward_heads(start, stop, value, spatial_shapes, level_start_index, padded_starts, rows,
                                  sampling_locations, attention_weights, normalised, output):
    queries, heads, channels = output.shape[1:]
    slab = np.zeros((rows, channels), value.dtype)
    for owner in range(start, stop):
        n = owner // heads
        m = owner - n * heads
        msda_copy_head(value, n, m, spatial_shapes, level_start_index, padded_starts, slab, True)
        for q in range(queries):
            locations = sampling_locations[n, q, m]
            weights = attention_weights[n, q, m]
            total = output[n, q, m]  # zero-filled
            for level in range(weights.shape[0]):
                padded_start = padded_starts[level]
                for p in range(weights.shape[1]):
                    inside, y_low, x_low, ly, lx, height, width = msda_sample(spatial_shapes, locations,
                                                                              level, p, normalised)
                    if not inside:
                        continue
                    ll = msda_slab_row(padded_start, width, y_low, x_low)
                    msda_slab_add(total, slab, ll, ll + width + 2, ly, lx, weights[level, p])


def ms_deform_attn_backward_cpu(grad_output, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, normalised, grad_value):
    _backward(None, grad_output, spatial_shapes, level_start_index, sampling_locations, attention_weights,
              normalised, grad_value, None, None)


def ms_deform_attn_location_weight_grad_cpu(value, grad_output, spatial_shapes, level_start_index,
                                            sampling_locations, attention_weights, normalised, grad_locations,
                                            grad_weights):
    _backward(value, grad_output, spatial_shapes, level_start_index, sampling_locations, attention_weights,
              normalised, None, grad_locations, grad_weights)


def ms_deform_attn_backward_all_cpu(value, grad_output, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights, normalised, grad_value, grad_locations, grad_weights):
    """All three gradients in one pass over the samples (cpu only)."""
    _backward(value, grad_output, spatial_shapes, level_start_index, sampling_locations, attention_weights,
              normalised, grad_value, grad_locations, grad_weights)


def _backward(value, grad_output, spatial_shapes, level_start_index, sampling_locations, attention_weights,
              normalised, grad_value, grad_locations, grad_weights):
    # Per (image, head): the columns grad_value[n, :, m, :] are its own. Queries, levels and points in
    # order: every element of the value gradient gets the adds of msda_element_backward in the same
    # order. The location and weight gradients are msda_point_gradient's sums over the channels, in
    # another order. A gradient not wanted is None: an empty array of its dimensions goes instead.
    padded_starts, rows = padded_levels(spatial_shapes)
    dtype = grad_output.dtype
    want_value, want_points = grad_value is not None, grad_weights is not None
    parallel_for(_ms_deform_attn_backward_heads, grad_output.shape[0] * grad_output.shape[2],
                 value if want_points else np.empty((0,) * 4, dtype), grad_output, spatial_shapes,
                 level_start_index, padded_starts, rows, sampling_locations, attention_weights, normalised,
                 grad_value if want_value else np.empty((0,) * 4, dtype),
                 grad_locations if want_points else np.empty((0,) * 6, dtype),
                 grad_weights if want_points else np.empty((0,) * 5, dtype), want_value, want_points)


@cpu_function(reassociate=True)
def _ms_deform_attn_backward_heads(start, stop, value, grad_output, spatial_shapes, level_start_index,
                                   padded_starts, rows, sampling_locations, attention_weights, normalised,
                                   grad_value, grad_locations, grad_weights, want_value, want_points):
    queries, heads, channels = grad_output.shape[1:]
    levels, points = attention_weights.shape[3:]
    f = grad_output.dtype.type
    values = np.zeros((rows if want_points else 0, channels), grad_output.dtype)
    grads = np.empty((rows if want_value else 0, channels), grad_output.dtype)
    for owner in range(start, stop):
        n = owner // heads
        m = owner - n * heads
        if want_points:
            msda_copy_head(value, n, m, spatial_shapes, level_start_index, padded_starts, values, True)
        if want_value:
            grads[:] = 0
        for q in range(queries):
            locations = sampling_locations[n, q, m]
            weights = attention_weights[n, q, m]
            grad_row = grad_output[n, q, m]
            for level in range(levels):
                padded_start = padded_starts[level]
                for p in range(points):
                    inside, y_low, x_low, ly, lx, height, width = msda_sample(spatial_shapes, locations,
                                                                              level, p, normalised)
                    weight = weights[level, p]
                    s_ll, s_lh, s_hl, s_hh = msda_slab_backward(
                        grads, values, grad_row, msda_slab_row(padded_start, width, y_low, x_low), width, ly,
                        lx, weight, inside and want_value, inside and want_points)
                    if want_points:
                        dy, dx = b2_gradient_of_corners(s_ll, s_lh, s_hl, s_hh, ly, lx)
                        if normalised:
                            grad_locations[n, q, m, level, p, 0] = weight * f(width) * dx
                            grad_locations[n, q, m, level, p, 1] = weight * f(height) * dy
                        else:
                            grad_locations[n, q, m, level, p, 0] = weight * dx
                            grad_locations[n, q, m, level, p, 1] = weight * dy
                        grad_weights[n, q, m, level, p] = b2_combine(s_ll, s_lh, s_hl, s_hh, ly, lx)
        if want_value:
            msda_copy_head(grad_value, n, m, spatial_shapes, level_start_index, padded_starts, grads, False)


KERNELS = {
    "forward": {"cpu": ms_deform_attn_forward_cpu, "cuda": ms_deform_attn_forward_cuda},
    "backward": {"cpu": ms_deform_attn_backward_cpu, "cuda": ms_deform_attn_backward_cuda,
                 "cuda_deterministic": ms_deform_attn_backward_deterministic_cuda},
    "location_weight_grad": {"cpu": ms_deform_attn_location_weight_grad_cpu,
                             "cuda": ms_deform_attn_location_weight_grad_cuda},
    "backward_all": {"cpu": ms_deform_attn_backward_all_cpu},
}
