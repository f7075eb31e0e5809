"""Deformable RoI pooling kernels (RoI-Align form, optionally modulated), in three parts.

* The body, shared by the targets: a bin is roi_align's bin (``aligned=True``) whose box start is
  moved by the bin's offset. ``deform_roi_pool_bin_box`` builds that moved box, roi_align's
  ``roi_align_bin`` and ``roi_align_bin_backward`` pool it and scatter its gradient, and
  ``deform_roi_pool_bin_gradient`` gives the sums over channels and samples that the bin's offset,
  mask and box gradients are made of (``bin_coordinate_gradients``). roi_align's box gradient is
  this one with zero offsets (and its own ``aligned``).
* The cuda schedule: ``*_cuda`` kernels, a thread per output element for the forward and the input
  gradient (atomic scatter), a thread per (box, bin) for the coordinate gradients (looping over
  channels: every thread of a bin would otherwise add into the same two offset elements, a worst case
  for atomics; each bin writes its own part of its box's gradient, which the ops level sums); the
  deterministic backward, a thread per gradient plane.
* The cpu fast path: ``*_cpu`` drivers and the helpers above them, a parallel iteration per box for
  the forward and for the coordinate gradients, per block of channels for the input gradient (so that
  no two iterations write the same element), over channels-last copies.

The tests run the cuda kernels themselves on the cpu (``_backend.cuda_kernels_on_cpu``) and require
the cpu fast path to give their outputs bit for bit and their gradients to rounding.

Kernel arguments: ``(features, rois, offset, mask, spatial_scale, sampling_ratio, gamma, output)``,
``(grad_output, rois, offset, mask, spatial_scale, sampling_ratio, gamma, grad_input)`` and
``(features, grad_output, rois, offset, mask, spatial_scale, sampling_ratio, gamma, aligned,
grad_offset, grad_mask, grad_box)``, ``grad_box`` of shape ``(K, 4, PH, PW)`` (each bin's part of
``d/d(x1, y1, x2, y2)``); a missing offset is passed as zeros and a missing mask as ones,
``grad_input`` is zero-filled.
"""
import numpy as np

from .._backend import cpu_function, cuda_kernel, jitable, parallel_for, thread_start, thread_stride
from .bilinear import (b1_axis_inside, b1_axis_weights, b1_coordinate_gradient, b1_gradient_of_corners,
                       b1_value)
from .roi_align import (channels_first, channels_last, merged_axis_scratch, roi_align_bin,
                        roi_align_bin_backward, roi_align_bin_backward_channels_from_tables,
                        roi_align_bin_channels_from_tables, roi_align_box, roi_align_sample,
                        roi_align_size_free, thread_channel_block, unravel_output_index)


# -- body: one output element and its gradient, from the definition --------------------------------

@jitable
def deform_roi_pool_bin_box(rois, offset, k, ph, pw, spatial_scale, sampling_ratio, gamma, aligned=True):
    """roi_align's geometry of box ``k`` (aligned, as deformable pooling always is; roi_align's box
    gradient passes its own ``aligned`` and zero offsets) with its start moved by the offset of bin
    ``(ph, pw)``.

    Returns ``(box, scale_y, scale_x)``: ``box`` as ``roi_align_box`` gives it (the sampling grid is
    fixed by the RoI before the offset), and ``scale = gamma * roi_size``, the derivative of the start
    with respect to the offset. A non-finite offset moves the samples out of the map: the bin gives 0.
    """
    f = rois.dtype.type
    pooled_h, pooled_w = offset.shape[2], offset.shape[3]
    n, y_start, x_start, bin_h, bin_w, grid_h, grid_w = roi_align_box(
        rois, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w)
    scale_y = gamma * (bin_h * f(pooled_h))
    scale_x = gamma * (bin_w * f(pooled_w))
    y_start += scale_y * offset[k, 1, ph, pw]
    x_start += scale_x * offset[k, 0, ph, pw]
    return (n, y_start, x_start, bin_h, bin_w, grid_h, grid_w), scale_y, scale_x


@jitable
def sample_place(p, i, grid, pooled):
    """``u = (p + (i + 0.5) / grid) / pooled``: where sample ``i`` of bin ``p`` lies along its axis of
    the box, as a fraction of the box's size (the derivative of its coordinate in that size)."""
    f = type(grid)
    return (f(p) + (f(i) + f(0.5)) / grid) / f(pooled)


@jitable
def deform_roi_pool_bin_gradient(features, grad_output, k, ph, pw, box):
    """For bin ``(ph, pw)`` of box ``k`` (``box`` from ``deform_roi_pool_bin_box``), with
    ``g = grad_output[k, :, ph, pw]``, the means over the bin's samples of ``sum_c g_c * d pooled_c /
    dx``, of the same in y, of those times the sample's ``sample_place`` along the axis, and of
    ``sum_c g_c * pooled_c``: ``(d_x, d_y, moment_x, moment_y, weighted)``, the sums that the offset,
    mask and box gradients are made of (``bin_coordinate_gradients``)."""
    f = features.dtype.type
    n, _, _, _, _, grid_h, grid_w = box
    d_x = f(0)
    d_y = f(0)
    moment_x = f(0)
    moment_y = f(0)
    weighted = f(0)
    if grid_h * grid_w == 0:  # also a non-finite box
        return d_x, d_y, moment_x, moment_y, weighted
    for iy in range(grid_h):
        place_y = sample_place(ph, iy, f(grid_h), grad_output.shape[2])
        for ix in range(grid_w):
            y, x = roi_align_sample(box, ph, pw, iy, ix)
            sample_y = f(0)
            sample_x = f(0)
            for c in range(features.shape[1]):
                g = grad_output[k, c, ph, pw]
                dy, dx = b1_coordinate_gradient(features, n, c, y, x)
                sample_y += g * dy
                sample_x += g * dx
                weighted += g * b1_value(features, n, c, y, x)
            d_y += sample_y
            d_x += sample_x
            moment_y += place_y * sample_y
            moment_x += sample_place(pw, ix, f(grid_w), grad_output.shape[3]) * sample_x
    count = f(grid_h * grid_w)
    return d_x / count, d_y / count, moment_x / count, moment_y / count, weighted / count


@jitable
def scaled(scale, derivative):
    """``scale * derivative``, 0 where the derivative is (a NaN scale of a sample outside the map, whose
    coordinate does not matter, gives no NaN)."""
    return scale * derivative if derivative != type(derivative)(0) else derivative


@jitable
def bin_coordinate_gradients(rois, offset, mask, k, ph, pw, spatial_scale, gamma, aligned, sums, scale_y,
                             scale_x, grad_offset, grad_mask, grad_box):
    """Write the gradients of bin ``(ph, pw)`` of box ``k`` from its ``sums``
    (``deform_roi_pool_bin_gradient``): its offset's, its mask's, and its part of the box's,
    ``grad_box[k, :, ph, pw] = d/d(x1, y1, x2, y2)``.

    A sample at ``y = y1*s - 0.5 + roi_h * (gamma*offset_y + u)`` (``u`` its ``sample_place``,
    ``roi_h = (y2 - y1) * s``; no half pixel unless aligned) moves by ``s * (1 - gamma*offset_y - u)``
    with ``y1`` and by ``s * (gamma*offset_y + u)`` with ``y2``; where roi_align clamps the size to 1
    (not aligned) it follows ``y1`` alone. The sampling grid counts as fixed: the adaptive grid's size
    is piecewise constant in the box's."""
    f = rois.dtype.type
    d_x, d_y, moment_x, moment_y, weighted = sums
    m = mask[k, 0, ph, pw]
    grad_offset[k, 0, ph, pw] = m * scaled(scale_x, d_x)
    grad_offset[k, 1, ph, pw] = m * scaled(scale_y, d_y)
    grad_mask[k, 0, ph, pw] = weighted
    free_h, free_w = roi_align_size_free(rois, k, spatial_scale, aligned)
    # the derivatives in the far edges (x2, y2): the samples' places, offsets included
    far_x = scaled(gamma * offset[k, 0, ph, pw], d_x) + moment_x if free_w else f(0)
    far_y = scaled(gamma * offset[k, 1, ph, pw], d_y) + moment_y if free_h else f(0)
    grad_box[k, 0, ph, pw] = m * (spatial_scale * (d_x - far_x))
    grad_box[k, 1, ph, pw] = m * (spatial_scale * (d_y - far_y))
    grad_box[k, 2, ph, pw] = m * (spatial_scale * far_x)
    grad_box[k, 3, ph, pw] = m * (spatial_scale * far_y)


# -- cuda schedule ---------------------------------------------------------------------------------

@cuda_kernel("F4 F2 F4 F4 f i f F4")
def deform_roi_pool_forward_cuda(features, rois, offset, mask, spatial_scale, sampling_ratio, gamma,
                                 output):
    for index in range(thread_start(), output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, output.shape)
        box, _, _ = deform_roi_pool_bin_box(rois, offset, k, ph, pw, spatial_scale, sampling_ratio,
                                            gamma)
        pooled = roi_align_bin(features, c, ph, pw, box)  # then the mask: not held across the loop
        output[k, c, ph, pw] = mask[k, 0, ph, pw] * pooled


@cuda_kernel("F4 F2 F4 F4 f i f F4")
def deform_roi_pool_backward_cuda(grad_output, rois, offset, mask, spatial_scale, sampling_ratio,
                                  gamma, grad_input):
    for index in range(thread_start(), grad_output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, grad_output.shape)
        box, _, _ = deform_roi_pool_bin_box(rois, offset, k, ph, pw, spatial_scale, sampling_ratio,
                                            gamma)
        roi_align_bin_backward(mask[k, 0, ph, pw] * grad_output[k, c, ph, pw], grad_input, c, ph, pw,
                               box)


@cuda_kernel("F4 F4 F2 F4 F4 f i f b F4 F4 F4")
def deform_roi_pool_coordinate_grad_cuda(features, grad_output, rois, offset, mask, spatial_scale,
                                         sampling_ratio, gamma, aligned, grad_offset, grad_mask, grad_box):
    for index in range(thread_start(), grad_mask.size, thread_stride()):
        k, _, ph, pw = unravel_output_index(index, grad_mask.shape)
        box, scale_y, scale_x = deform_roi_pool_bin_box(rois, offset, k, ph, pw, spatial_scale,
                                                        sampling_ratio, gamma, aligned)
        sums = deform_roi_pool_bin_gradient(features, grad_output, k, ph, pw, box)
        bin_coordinate_gradients(rois, offset, mask, k, ph, pw, spatial_scale, gamma, aligned, sums, scale_y,
                                 scale_x, grad_offset, grad_mask, grad_box)


@cuda_kernel("F4 F2 F4 F4 f i f F4")
def deform_roi_pool_backward_deterministic_cuda(grad_output, rois, offset, mask, spatial_scale,
                                                sampling_ratio, gamma, grad_input):
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
                    box, _, _ = deform_roi_pool_bin_box(rois, offset, k, ph, pw, spatial_scale,
                                                        sampling_ratio, gamma)
                    roi_align_bin_backward(mask[k, 0, ph, pw] * grad_output[k, c, ph, pw], grad_input,
                                           c, ph, pw, box, False)


# -- cpu fast path: the body's values by another schedule ------------------------------------------

@jitable
def deform_roi_pool_box_samples(features, rois, offset, k, spatial_scale, sampling_ratio, gamma,
                                aligned=True):
    """Rule B1 along each axis at the row and column samples of every (moved) bin of box ``k``, for
    cpu drivers that reuse them across channels: ``(batch, grid_h, grid_w, corners, weights, free)``.
    Bin ``(ph, pw)`` has its ``grid_h`` row samples at ``rows = (ph*PW + pw) * (grid_h + grid_w)``
    and its ``grid_w`` column samples after them; ``corners[s] = (low, high)`` (unsigned; rows as
    offsets ``y*W`` into a flat plane), ``weights[s] = (w_low, w_high)`` and ``free[s]`` as
    ``b1_axis_weights`` gives them."""
    pooled_h, pooled_w = offset.shape[2], offset.shape[3]
    height, width = features.shape[2], features.shape[3]
    first, _, _ = deform_roi_pool_bin_box(rois, offset, k, 0, 0, spatial_scale, sampling_ratio, gamma,
                                          aligned)
    n, _, _, _, _, grid_h, grid_w = first
    size = pooled_h * pooled_w * (grid_h + grid_w)
    corners = np.empty((size, 2), np.uint32)
    weights = np.empty((size, 2), features.dtype)
    free = np.empty(size, np.bool_)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            box, _, _ = deform_roi_pool_bin_box(rois, offset, k, ph, pw, spatial_scale,
                                                sampling_ratio, gamma, aligned)
            rows = (ph * pooled_w + pw) * (grid_h + grid_w)
            for iy in range(grid_h):
                y, _ = roi_align_sample(box, ph, pw, iy, 0)
                low, high, weights[rows + iy, 0], weights[rows + iy, 1], free[rows + iy] = (
                    b1_axis_weights(features, y, height))
                corners[rows + iy, 0], corners[rows + iy, 1] = low * width, high * width
            for ix in range(grid_w):
                _, x = roi_align_sample(box, ph, pw, 0, ix)
                s = rows + grid_h + ix
                corners[s, 0], corners[s, 1], weights[s, 0], weights[s, 1], free[s] = b1_axis_weights(
                    features, x, width)
    return n, grid_h, grid_w, corners, weights, free


@jitable
def deform_roi_pool_forward_cpu(features, rois, offset, mask, spatial_scale, sampling_ratio, gamma,
                                output):
    # Per box, the samples are tabulated once, and each bin is computed for all channels at once from
    # a channels-last copy of the features, as in roi_align's forward.
    parallel_for(_deform_roi_pool_forward_boxes, rois.shape[0], features, channels_last(features), rois,
                 offset, mask, spatial_scale, sampling_ratio, gamma, output)


@cpu_function
def _deform_roi_pool_forward_boxes(start, stop, features, pixels, rois, offset, mask, spatial_scale,
                                   sampling_ratio, gamma, output):
    channels, pooled_h, pooled_w = output.shape[1:]
    for k in range(start, stop):
        n, grid_h, grid_w, corners, weights, _ = deform_roi_pool_box_samples(
            features, rois, offset, k, spatial_scale, sampling_ratio, gamma)
        image = pixels[n, 0]
        total = np.empty(channels, features.dtype)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                rows = (ph * pooled_w + pw) * (grid_h + grid_w)
                roi_align_bin_channels_from_tables(total, image, rows, rows + grid_h, grid_h, grid_w,
                                                   corners, weights)
                for c in range(channels):
                    output[k, c, ph, pw] = mask[k, 0, ph, pw] * total[c]


def deform_roi_pool_backward_cpu(grad_output, rois, offset, mask, spatial_scale, sampling_ratio,
                                 gamma, grad_input):
    channels = grad_output.shape[1]
    grad_pixels = np.zeros((grad_input.shape[0], 1, grad_input.shape[2] * grad_input.shape[3], channels),
                           grad_input.dtype)
    width = thread_channel_block(channels)
    parallel_for(_deform_roi_pool_backward_blocks, (channels + width - 1) // width, width, grad_output, rois,
                 offset, mask, spatial_scale, sampling_ratio, gamma, grad_input, grad_pixels)
    channels_first(grad_pixels, grad_input)


@cpu_function
def _deform_roi_pool_backward_blocks(start, stop, width, grad_output, rois, offset, mask, spatial_scale,
                                     sampling_ratio, gamma, grad_input, grad_pixels):
    boxes, channels, pooled_h, pooled_w = grad_output.shape
    for block in range(start, stop):
        first = block * width
        last = min(first + width, channels)
        grads = np.empty((pooled_h, pooled_w, width), grad_input.dtype)
        offsets, sums = merged_axis_scratch(grad_input.dtype)
        for k in range(boxes):
            n, grid_h, grid_w, corners, weights, _ = deform_roi_pool_box_samples(
                grad_input, rois, offset, k, spatial_scale, sampling_ratio, gamma)
            grad_image = grad_pixels[n, 0]
            for c in range(first, last):  # read in order, written across
                for ph in range(pooled_h):
                    for pw in range(pooled_w):
                        grads[ph, pw, c - first] = mask[k, 0, ph, pw] * grad_output[k, c, ph, pw]
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    rows = (ph * pooled_w + pw) * (grid_h + grid_w)
                    roi_align_bin_backward_channels_from_tables(grads[ph, pw], grad_image, first, last, rows,
                                                                rows + grid_h, grid_h, grid_w, corners,
                                                                weights, offsets, sums)


def deform_roi_pool_coordinate_grad_cpu(features, grad_output, rois, offset, mask, spatial_scale,
                                        sampling_ratio, gamma, aligned, grad_offset, grad_mask, grad_box):
    # Per box: the samples tabulated once. A sample's value and coordinate derivatives are linear in
    # its four corner values, so the sums over channels of grad_output times them are those of the
    # channel sums of grad_output times each corner: one pass over the channels of a channels-last
    # copy (four contiguous corner rows) accumulates those four sums per sample, and rule B1 is
    # applied to them once. The same sums as deform_roi_pool_bin_gradient, in another order (and
    # reassociated, so that the channel loops' sums are vectorised).
    parallel_for(_deform_roi_pool_coordinate_grad_boxes, rois.shape[0], features, channels_last(features),
                 grad_output, rois, offset, mask, spatial_scale, sampling_ratio, gamma, aligned, grad_offset,
                 grad_mask, grad_box)


@cpu_function(reassociate=True)
def _deform_roi_pool_coordinate_grad_boxes(start, stop, features, pixels, grad_output, rois, offset, mask,
                                           spatial_scale, sampling_ratio, gamma, aligned, grad_offset,
                                           grad_mask, grad_box):
    f = features.dtype.type
    channels, pooled_h, pooled_w = grad_output.shape[1:]
    for k in range(start, stop):
        n, grid_h, grid_w, corners, weights, free = deform_roi_pool_box_samples(
            features, rois, offset, k, spatial_scale, sampling_ratio, gamma, aligned)
        if grid_h * grid_w == 0:
            continue  # every gradient stays 0 (a non-finite box has NaN scales)
        image = pixels[n, 0]
        grads = np.empty(channels, features.dtype)
        count = f(grid_h * grid_w)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                for c in range(channels):
                    grads[c] = grad_output[k, c, ph, pw]
                rows = (ph * pooled_w + pw) * (grid_h + grid_w)
                d_x = f(0)
                d_y = f(0)
                moment_x = f(0)
                moment_y = f(0)
                weighted = f(0)
                for iy in range(grid_h):
                    r = rows + iy
                    place_y = sample_place(ph, iy, f(grid_h), pooled_h)
                    for ix in range(grid_w):
                        s = rows + grid_h + ix
                        inside = b1_axis_inside(weights, r) and b1_axis_inside(weights, s)
                        v_ll = f(0)
                        v_lh = f(0)
                        v_hl = f(0)
                        v_hh = f(0)
                        if inside:  # else outside the map: nothing to read
                            pixel_ll = image[corners[r, 0] + corners[s, 0]]
                            pixel_lh = image[corners[r, 0] + corners[s, 1]]
                            pixel_hl = image[corners[r, 1] + corners[s, 0]]
                            pixel_hh = image[corners[r, 1] + corners[s, 1]]
                            for c in range(channels):
                                v_ll += grads[c] * pixel_ll[c]
                                v_lh += grads[c] * pixel_lh[c]
                                v_hl += grads[c] * pixel_hl[c]
                                v_hh += grads[c] * pixel_hh[c]
                        w_ll, w_lh = weights[r, 0] * weights[s, 0], weights[r, 0] * weights[s, 1]
                        w_hl, w_hh = weights[r, 1] * weights[s, 0], weights[r, 1] * weights[s, 1]
                        dy, dx = b1_gradient_of_corners(v_ll, v_lh, v_hl, v_hh, w_ll, w_lh, w_hl,
                                                        w_hh, inside and free[r], inside and free[s])
                        d_x += dx
                        d_y += dy
                        moment_x += sample_place(pw, ix, f(grid_w), pooled_w) * dx
                        moment_y += place_y * dy
                        weighted += w_ll * v_ll + w_lh * v_lh + w_hl * v_hl + w_hh * v_hh
                _, scale_y, scale_x = deform_roi_pool_bin_box(rois, offset, k, ph, pw, spatial_scale,
                                                              sampling_ratio, gamma, aligned)
                sums = (d_x / count, d_y / count, moment_x / count, moment_y / count, weighted / count)
                bin_coordinate_gradients(rois, offset, mask, k, ph, pw, spatial_scale, gamma, aligned, sums,
                                         scale_y, scale_x, grad_offset, grad_mask, grad_box)


KERNELS = {
    "forward": {"cpu": deform_roi_pool_forward_cpu, "cuda": deform_roi_pool_forward_cuda},
    "backward": {"cpu": deform_roi_pool_backward_cpu, "cuda": deform_roi_pool_backward_cuda,
                 "cuda_deterministic": deform_roi_pool_backward_deterministic_cuda},
    "coordinate_grad": {"cpu": deform_roi_pool_coordinate_grad_cpu,
                        "cuda": deform_roi_pool_coordinate_grad_cuda},
}
