"""dcnv3 and dcnv4: their sample positions, and their cpu fast path.

``dcnv_position`` is the formula of a sample's position from its offset, InternImage's CUDA kernels'
grouping of the terms. On the GPU the ops layer applies it to whole CuPy arrays and samples with
``ms_deform_attn``'s kernels (one level whose rows are the input's pixels); on the cpu one pass
computes each position where it samples it (below).
"""
import numpy as np

from .._backend import cpu_function, jitable, jitable_inlined_on_cpu, parallel_for
from .bilinear import b2_cell_of, b2_combine, b2_gradient_of_corners
from .ms_deform_attn import (msda_copy_head, msda_slab_add, msda_slab_backward, msda_slab_row,
                             padded_levels)


@jitable
def dcnv_position(start, tap, offset, scale):
    """A sample's ``x`` (or ``y``) in pixels: its window's start ``start`` (``wo*stride_w - pad_w +
    c_w - c_w*offset_scale``), the point's place ``tap`` in the window (``i*dilation_w``), its offset,
    the scale ``offset_scale``."""
    return (tap + offset) * scale + start


# -- cpu fast path: positions and sampling in one pass ---------------------------------------------
#
# ms_deform_attn's cpu schedule (a parallel iteration per image and group, sampling a zero-bordered
# slab of the group's channels) with each position computed where it is sampled, from the offsets as
# given (DCNv4's a strided view of its packed array), and the offset and mask gradients written
# where they belong (DCNv4's into its packed gradient): no array of positions, no copies. The same
# positions, so the same output bits as the cuda kernels' (positions, then ms_deform_attn's).

def dcnv_forward_cpu(value, spatial_shapes, level_start_index, offset, mask, grid, scale, output):
    """``output (N, Ho, Wo, G, C)`` (zero-filled) from ``value``, the input as one level of
    ms_deform_attn (``(N, H*W, G, C)`` and its level arrays), ``offset (N, Ho, Wo, G, K, 2)``,
    ``mask (N, Ho, Wo, G, K)`` and ``grid = (start_x, start_y, tap_x, tap_y)`` (``dcnv_position``'s
    terms)."""
    padded_starts, rows = padded_levels(spatial_shapes)
    parallel_for(_dcnv_forward_groups, output.shape[0] * output.shape[3], value, spatial_shapes,
                 level_start_index, padded_starts, rows, offset, mask, *grid, scale, output)


def dcnv_backward_cpu(value, grad_output, spatial_shapes, level_start_index, offset, mask, grid, scale,
                      grad_value, grad_offset, grad_mask):
    """The gradients of ``dcnv_forward_cpu`` for ``grad_output (N, Ho, Wo, G, C)``: ``grad_value``
    (zero-filled; None if not wanted), ``grad_offset`` and ``grad_mask`` (written whole; both None if
    not wanted), in the shapes of ``value``, ``offset`` and ``mask``."""
    padded_starts, rows = padded_levels(spatial_shapes)
    dtype = grad_output.dtype
    want_value, want_points = grad_value is not None, grad_mask is not None
    parallel_for(_dcnv_backward_groups, grad_output.shape[0] * grad_output.shape[3], value, grad_output,
                 spatial_shapes, level_start_index, padded_starts, rows, offset, mask, *grid, scale,
                 grad_value if want_value else np.empty((0,) * 4, dtype),
                 grad_offset if want_points else np.empty((0,) * 6, dtype),
                 grad_mask if want_points else np.empty((0,) * 5, dtype), want_value, want_points)


@jitable_inlined_on_cpu
def dcnv_cell(offset, n, ho, wo, g, k, start_x, start_y, tap_x, tap_y, scale, height, width):
    """``(inside, ll, ly, lx)``: point ``k``'s B2 cell in the slab (``ll`` its top-left corner's row)
    and its fractions."""
    x = dcnv_position(start_x[wo], tap_x[k], offset[n, ho, wo, g, k, 0], scale)
    y = dcnv_position(start_y[ho], tap_y[k], offset[n, ho, wo, g, k, 1], scale)
    inside, y_low, x_low, ly, lx = b2_cell_of(height, width, y, x)
    return inside, msda_slab_row(0, width, np.int32(y_low), np.int32(x_low)), ly, lx


@cpu_function
def _dcnv_forward_groups(start, stop, value, spatial_shapes, level_start_index, padded_starts, rows, offset,
                         mask, start_x, start_y, tap_x, tap_y, scale, output):
    _, out_h, out_w, groups, points = mask.shape
    scale = value.dtype.type(scale)
    height = np.int32(spatial_shapes[0, 0])
    width = np.int32(spatial_shapes[0, 1])
    slab = np.zeros((rows, value.shape[3]), value.dtype)
    for owner in range(start, stop):
        n = owner // groups
        g = owner - n * groups
        msda_copy_head(value, n, g, spatial_shapes, level_start_index, padded_starts, slab, True)
        for ho in range(out_h):
            for wo in range(out_w):
                total = output[n, ho, wo, g]  # zero-filled
                for k in range(points):
                    inside, ll, ly, lx = dcnv_cell(offset, n, ho, wo, g, k, start_x, start_y, tap_x, tap_y,
                                                   scale, height, width)
                    if inside:
                        msda_slab_add(total, slab, ll, ll + width + 2, ly, lx, mask[n, ho, wo, g, k])


@cpu_function(reassociate=True)
def _dcnv_backward_groups(start, stop, value, grad_output, spatial_shapes, level_start_index, padded_starts,
                          rows, offset, mask, start_x, start_y, tap_x, tap_y, scale, grad_value, grad_offset,
                          grad_mask, want_value, want_points):
    _, out_h, out_w, groups, points = mask.shape
    f = grad_output.dtype.type
    scale = f(scale)
    height = np.int32(spatial_shapes[0, 0])
    width = np.int32(spatial_shapes[0, 1])
    channels = grad_output.shape[4]
    values = np.zeros((rows if want_points else 0, channels), grad_output.dtype)
    grads = np.empty((rows if want_value else 0, channels), grad_output.dtype)
    for owner in range(start, stop):
        n = owner // groups
        g = owner - n * groups
        if want_points:
            msda_copy_head(value, n, g, spatial_shapes, level_start_index, padded_starts, values, True)
        if want_value:
            grads[:] = 0
        for ho in range(out_h):
            for wo in range(out_w):
                grad_row = grad_output[n, ho, wo, g]
                for k in range(points):
                    inside, ll, ly, lx = dcnv_cell(offset, n, ho, wo, g, k, start_x, start_y, tap_x, tap_y,
                                                   scale, height, width)
                    weight = mask[n, ho, wo, g, k]
                    s_ll, s_lh, s_hl, s_hh = msda_slab_backward(grads, values, grad_row, ll, width, ly, lx,
                                                                weight, inside and want_value,
                                                                inside and want_points)
                    if want_points and inside:
                        dy, dx = b2_gradient_of_corners(s_ll, s_lh, s_hl, s_hh, ly, lx)
                        grad_offset[n, ho, wo, g, k, 0] = weight * dx * scale
                        grad_offset[n, ho, wo, g, k, 1] = weight * dy * scale
                        grad_mask[n, ho, wo, g, k] = b2_combine(s_ll, s_lh, s_hl, s_hh, ly, lx)
                    elif want_points:  # outside the support: no gradient (msda_point_gradient's zeros)
                        grad_offset[n, ho, wo, g, k, 0] = 0
                        grad_offset[n, ho, wo, g, k, 1] = 0
                        grad_mask[n, ho, wo, g, k] = 0
        if want_value:
            msda_copy_head(grad_value, n, g, spatial_shapes, level_start_index, padded_starts, grads, False)
