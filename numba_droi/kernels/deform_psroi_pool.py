"""Deformable position-sensitive RoI pooling kernels (MXNet's ``DeformablePSROIPooling``), in three parts.

* The body, shared by the targets: ``deform_psroi_bin`` says where output element ``(k, c, ph, pw)``
  samples; ``deform_psroi_bin_value`` averages its in-range samples (rule B3),
  ``deform_psroi_bin_backward`` scatters its gradient into the input gradient (atomic on the GPU), and
  ``deform_psroi_part_gradient`` sums the gradient of one per-class part offset over the channels and
  bins that use it.
* The cuda schedule: ``*_cuda`` kernels, a thread per output element for the forward and the input
  gradient, a thread per (box, class, part cell) for the trans gradient (looping over the channels and
  bins that share the cell, so without atomics); the deterministic backward, a thread per (image,
  output channel).
* The cpu fast path: ``*_cpu`` drivers and the helpers above them, a parallel iteration per box for
  the forward and the trans gradient, per (group, block of output channels) for the input gradient
  (they write disjoint input channels), over a copy of the features with each group's channels last.

The tests run the cuda kernels themselves on the cpu (``_backend.cuda_kernels_on_cpu``) and require
the cpu fast path to give their outputs bit for bit and their gradients to rounding.

Kernel arguments: ``(features, rois, trans, spatial_scale, trans_std, group_size, part_size,
sample_per_part, no_trans, output)``, the same with ``(grad_output, ..., grad_input)``, and ``(features,
grad_output, rois, trans, spatial_scale, trans_std, group_size, part_size, sample_per_part,
grad_trans)``; without offsets ``trans`` is a placeholder that is not read. Every element of
``grad_trans`` is written.
"""
import math

import numpy as np

from .._backend import (cpu_function, cuda_kernel, floor_int, jitable, jitable_inlined_on_cpu, parallel_for,
                        thread_start, thread_stride)
from .bilinear import (b3_add_cell_channels, b3_cell, b3_coordinate_gradient, b3_gradient_of_corners,
                       b3_inside, b3_scatter, b3_scatter_cell_channels, b3_value)
from .roi_align import channels_first, channels_last, unravel_output_index


# -- body: one output element and its gradient, from the definition --------------------------------

@jitable
def round_half_away(value):
    """C's ``round``: to the nearest integer, halves away from zero; non-finite values unchanged."""
    f = type(value)
    if not abs(value) < f(4503599627370496):  # 2**52: larger floats are integers (and inf, NaN)
        return value
    magnitude = f(floor_int(abs(value) + f(0.5)))
    return magnitude if value >= f(0) else -magnitude


@jitable_inlined_on_cpu
def deform_psroi_box(rois, k, spatial_scale):
    """``(batch, y_start, x_start, roi_h, roi_w)`` of box ``k``: rounded image coordinates, the end
    pixel included, scaled and shifted by -0.5; sizes at least 0.1. A box with a non-finite
    coordinate starts at infinity: none of its samples lies in the map."""
    f = rois.dtype.type
    half = f(0.5)
    x_start = round_half_away(rois[k, 1]) * spatial_scale - half
    y_start = round_half_away(rois[k, 2]) * spatial_scale - half
    x_end = (round_half_away(rois[k, 3]) + f(1)) * spatial_scale - half
    y_end = (round_half_away(rois[k, 4]) + f(1)) * spatial_scale - half
    if not (math.isfinite(x_end) and math.isfinite(y_end)):  # the minimum size would hide an end at -inf
        x_start = y_start = f(math.inf)
    return (int(rois[k, 0]), y_start, x_start, max(y_end - y_start, f(0.1)),
            max(x_end - x_start, f(0.1)))


@jitable_inlined_on_cpu
def deform_psroi_part(rois, p, pooled_size, part_size):
    """Part cell of bin row (or column) ``p``: ``floor(p / P * part_size)``, in the features' dtype as
    MXNet computes it."""
    f = rois.dtype.type
    return floor_int(f(p) / f(pooled_size) * f(part_size))


@jitable_inlined_on_cpu
def deform_psroi_bin(rois, trans, k, c, ph, pw, spatial_scale, trans_std, group_size, part_size,
                     sample_per_part, no_trans, output_dim, pooled_size):
    """Where output element ``(k, c, ph, pw)`` samples: ``(batch, input_channel, h_start, w_start,
    sub_bin_h, sub_bin_w, sample_per_part)``; samples at ``start + i * sub_bin``, ``i < sample_per_part``.
    """
    f = rois.dtype.type
    n, y_start, x_start, roi_h, roi_w = deform_psroi_box(rois, k, spatial_scale)
    bin_h = roi_h / f(pooled_size)
    bin_w = roi_w / f(pooled_size)
    h_start = f(ph) * bin_h + y_start
    w_start = f(pw) * bin_w + x_start
    if not no_trans:
        class_id = c // (output_dim // (trans.shape[1] // 2))
        part_h = deform_psroi_part(rois, ph, pooled_size, part_size)
        part_w = deform_psroi_part(rois, pw, pooled_size, part_size)
        w_start += trans[k, 2 * class_id, part_h, part_w] * trans_std * roi_w
        h_start += trans[k, 2 * class_id + 1, part_h, part_w] * trans_std * roi_h
    return (n, deform_psroi_channel(c, ph, pw, group_size, pooled_size), h_start, w_start,
            bin_h / f(sample_per_part), bin_w / f(sample_per_part), sample_per_part)


@jitable_inlined_on_cpu
def deform_psroi_channel(c, ph, pw, group_size, pooled_size):
    """The input channel that output channel ``c`` reads in bin ``(ph, pw)``: its group's."""
    group_h = min(max(ph * group_size // pooled_size, 0), group_size - 1)
    group_w = min(max(pw * group_size // pooled_size, 0), group_size - 1)
    return (c * group_size + group_h) * group_size + group_w


@jitable_inlined_on_cpu
def deform_psroi_sample(bin_, ih, iw):
    """``(h, w)`` of sample ``(ih, iw)``: a sub-bin corner."""
    _, _, h_start, w_start, sub_bin_h, sub_bin_w, _ = bin_
    f = type(h_start)
    return h_start + f(ih) * sub_bin_h, w_start + f(iw) * sub_bin_w


@jitable_inlined_on_cpu
def deform_psroi_bin_count(features, bin_):
    """How many samples of the bin rule B3 takes (a NaN or out-of-map sample is not counted)."""
    samples = bin_[6]
    count = 0
    for ih in range(samples):
        for iw in range(samples):
            h, w = deform_psroi_sample(bin_, ih, iw)
            if b3_inside(features, h, w):
                count += 1
    return count


@jitable_inlined_on_cpu
def deform_psroi_bin_value(features, bin_):
    """The mean of the bin's in-range samples, 0 if none."""
    f = features.dtype.type
    n, channel, _, _, _, _, samples = bin_
    total = f(0)
    count = 0
    for ih in range(samples):
        for iw in range(samples):
            h, w = deform_psroi_sample(bin_, ih, iw)
            if b3_inside(features, h, w):
                total += b3_value(features, n, channel, h, w)
                count += 1
    return total / f(count) if count > 0 else f(0)


@jitable_inlined_on_cpu
def deform_psroi_bin_backward(grad, grad_input, bin_, atomic=True):
    """Scatter ``grad``, the gradient of ``deform_psroi_bin_value(..., bin_)``, into ``grad_input``
    (atomically on the GPU unless ``atomic`` is False)."""
    f = grad_input.dtype.type
    n, channel, _, _, _, _, samples = bin_
    count = deform_psroi_bin_count(grad_input, bin_)
    if count == 0:
        return
    grad = grad / f(count)
    for ih in range(samples):
        for iw in range(samples):
            h, w = deform_psroi_sample(bin_, ih, iw)
            if b3_inside(grad_input, h, w):
                y_low, x_low, y_high, x_high, ly, lx = b3_cell(grad_input, h, w)
                b3_scatter(grad_input, n, channel, y_low, x_low, y_high, x_high, ly, lx, grad, atomic)


@jitable
def deform_psroi_part_gradient(features, grad_output, rois, trans, k, class_id, part_h, part_w,
                               spatial_scale, trans_std, group_size, part_size, sample_per_part):
    """``(d/d trans[k, 2*class_id, part_h, part_w], d/d trans[k, 2*class_id + 1, part_h, part_w])`` of
    ``sum(grad_output * output)``: a sum over the class's channels and the bins of the part cell."""
    f = features.dtype.type
    _, _, _, roi_h, roi_w = deform_psroi_box(rois, k, spatial_scale)
    if not (math.isfinite(roi_h) and math.isfinite(roi_w)):  # such a box takes no sample
        return f(0), f(0)
    output_dim, pooled_size = grad_output.shape[1], grad_output.shape[2]
    per_class = output_dim // (trans.shape[1] // 2)
    grad_y = f(0)
    grad_x = f(0)
    for ph in range(pooled_size):
        if deform_psroi_part(rois, ph, pooled_size, part_size) != part_h:
            continue
        for pw in range(pooled_size):
            if deform_psroi_part(rois, pw, pooled_size, part_size) != part_w:
                continue
            for c in range(class_id * per_class, (class_id + 1) * per_class):
                bin_ = deform_psroi_bin(rois, trans, k, c, ph, pw, spatial_scale, trans_std,
                                        group_size, part_size, sample_per_part, False, output_dim,
                                        pooled_size)
                count = deform_psroi_bin_count(features, bin_)
                if count == 0:
                    continue
                grad = grad_output[k, c, ph, pw] / f(count)
                n, channel = bin_[0], bin_[1]
                for ih in range(sample_per_part):
                    for iw in range(sample_per_part):
                        h, w = deform_psroi_sample(bin_, ih, iw)
                        if b3_inside(features, h, w):
                            dy, dx = b3_coordinate_gradient(features, n, channel, h, w)
                            grad_y += grad * dy
                            grad_x += grad * dx
    return trans_std * roi_w * grad_x, trans_std * roi_h * grad_y


@jitable
def trans_cells_shape(grad_trans):
    """``(K, num_classes, part_size, part_size)``: one entry per pair of trans elements."""
    return grad_trans.shape[0], grad_trans.shape[1] // 2, grad_trans.shape[2], grad_trans.shape[3]


# -- cuda schedule ---------------------------------------------------------------------------------

@cuda_kernel("F4 F2 F4 f f i i i b F4")
def deform_psroi_pool_forward_cuda(features, rois, trans, spatial_scale, trans_std, group_size,
                                   part_size, sample_per_part, no_trans, output):
    for index in range(thread_start(), output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, output.shape)
        bin_ = deform_psroi_bin(rois, trans, k, c, ph, pw, spatial_scale, trans_std, group_size,
                                part_size, sample_per_part, no_trans, output.shape[1], output.shape[2])
        output[k, c, ph, pw] = deform_psroi_bin_value(features, bin_)


@cuda_kernel("F4 F2 F4 f f i i i b F4")
def deform_psroi_pool_backward_cuda(grad_output, rois, trans, spatial_scale, trans_std, group_size,
                                    part_size, sample_per_part, no_trans, grad_input):
    for index in range(thread_start(), grad_output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, grad_output.shape)
        bin_ = deform_psroi_bin(rois, trans, k, c, ph, pw, spatial_scale, trans_std, group_size,
                                part_size, sample_per_part, no_trans, grad_output.shape[1],
                                grad_output.shape[2])
        deform_psroi_bin_backward(grad_output[k, c, ph, pw], grad_input, bin_)


@cuda_kernel("F4 F2 F4 f f i i i b F4")
def deform_psroi_pool_backward_deterministic_cuda(grad_output, rois, trans, spatial_scale, trans_std,
                                                  group_size, part_size, sample_per_part, no_trans,
                                                  grad_input):
    # One thread per (image, output channel): output channels read disjoint input channels, so the
    # thread owns what it adds to; boxes in order, no atomics (see kernels/roi_align.py).
    output_dim, pooled_size = grad_output.shape[1], grad_output.shape[2]
    for owner in range(thread_start(), grad_input.shape[0] * output_dim, thread_stride()):
        n = owner // output_dim
        c = owner - n * output_dim
        for k in range(grad_output.shape[0]):
            if int(rois[k, 0]) != n:
                continue
            for ph in range(pooled_size):
                for pw in range(pooled_size):
                    bin_ = deform_psroi_bin(rois, trans, k, c, ph, pw, spatial_scale, trans_std,
                                            group_size, part_size, sample_per_part, no_trans,
                                            output_dim, pooled_size)
                    deform_psroi_bin_backward(grad_output[k, c, ph, pw], grad_input, bin_, False)


@cuda_kernel("F4 F4 F2 F4 f f i i i F4")
def deform_psroi_pool_trans_grad_cuda(features, grad_output, rois, trans, spatial_scale, trans_std,
                                      group_size, part_size, sample_per_part, grad_trans):
    cells = trans_cells_shape(grad_trans)
    for index in range(thread_start(), grad_trans.size // 2, thread_stride()):
        k, class_id, part_h, part_w = unravel_output_index(index, cells)
        grad_x, grad_y = deform_psroi_part_gradient(
            features, grad_output, rois, trans, k, class_id, part_h, part_w, spatial_scale,
            trans_std, group_size, part_size, sample_per_part)
        grad_trans[k, 2 * class_id, part_h, part_w] = grad_x
        grad_trans[k, 2 * class_id + 1, part_h, part_w] = grad_y


# -- cpu fast path: the body's values by another schedule ------------------------------------------

@jitable
def deform_psroi_box_samples(features, rois, trans, k, spatial_scale, trans_std, group_size,
                             part_size, sample_per_part, no_trans, output_dim, cells, fractions,
                             counts):
    """The in-range samples of every (class, bin) of box ``k``, which the cpu drivers reuse for all
    channels of a class: ``counts[class, ph, pw]`` samples, the ``s``-th in B3's cell
    ``cells[class, ph, pw, s]`` (y_low, x_low, y_high, x_high) at fractions
    ``fractions[class, ph, pw, s]`` (ly, lx)."""
    classes, pooled_size = counts.shape[0], counts.shape[1]
    per_class = output_dim // classes
    for class_id in range(classes):
        for ph in range(pooled_size):
            for pw in range(pooled_size):
                bin_ = deform_psroi_bin(rois, trans, k, class_id * per_class, ph, pw, spatial_scale,
                                        trans_std, group_size, part_size, sample_per_part, no_trans,
                                        output_dim, pooled_size)
                count = 0
                for ih in range(sample_per_part):
                    for iw in range(sample_per_part):
                        h, w = deform_psroi_sample(bin_, ih, iw)
                        if b3_inside(features, h, w):
                            (cells[class_id, ph, pw, count, 0], cells[class_id, ph, pw, count, 1],
                             cells[class_id, ph, pw, count, 2], cells[class_id, ph, pw, count, 3],
                             fractions[class_id, ph, pw, count, 0],
                             fractions[class_id, ph, pw, count, 1]) = b3_cell(features, h, w)
                            count += 1
                counts[class_id, ph, pw] = count


@jitable
def deform_psroi_samples_tables(features, classes, pooled_size, sample_per_part):
    """Empty ``(cells, fractions, counts)`` for ``deform_psroi_box_samples``."""
    samples = sample_per_part * sample_per_part
    return (np.empty((classes, pooled_size, pooled_size, samples, 4), np.int32),
            np.empty((classes, pooled_size, pooled_size, samples, 2), features.dtype),
            np.empty((classes, pooled_size, pooled_size), np.int64))


# The cpu drivers read (and the input gradient writes) a copy of the features with each group's
# channels last (``channels_last(features, group_size**2)``): the channels that one bin of a box reads,
# one per output channel, are then adjacent, so the bin is computed for all of them at once.

def deform_psroi_pool_forward_cpu(features, rois, trans, spatial_scale, trans_std, group_size,
                                  part_size, sample_per_part, no_trans, output):
    parallel_for(_deform_psroi_pool_forward_boxes, rois.shape[0], features,
                 channels_last(features, group_size * group_size), rois, trans, spatial_scale, trans_std,
                 group_size, part_size, sample_per_part, no_trans, output)


@cpu_function
def _deform_psroi_pool_forward_boxes(start, stop, features, pixels, rois, trans, spatial_scale, trans_std,
                                     group_size, part_size, sample_per_part, no_trans, output):
    f = features.dtype.type
    output_dim, pooled_size = output.shape[1], output.shape[2]
    classes = 1 if no_trans else trans.shape[1] // 2
    per_class = output_dim // classes
    for k in range(start, stop):
        cells, fractions, counts = deform_psroi_samples_tables(features, classes, pooled_size,
                                                               sample_per_part)
        deform_psroi_box_samples(features, rois, trans, k, spatial_scale, trans_std, group_size,
                                 part_size, sample_per_part, no_trans, output_dim, cells, fractions,
                                 counts)
        n = int(rois[k, 0])
        total = np.empty(per_class, features.dtype)
        for class_id in range(classes):
            first = class_id * per_class
            for ph in range(pooled_size):
                for pw in range(pooled_size):
                    image = pixels[n, deform_psroi_channel(0, ph, pw, group_size, pooled_size)]
                    count = counts[class_id, ph, pw]
                    total[:] = f(0)
                    for s in range(count):
                        b3_add_cell_channels(
                            total, image, first, features.shape[3], cells[class_id, ph, pw, s, 0],
                            cells[class_id, ph, pw, s, 1], cells[class_id, ph, pw, s, 2],
                            cells[class_id, ph, pw, s, 3], fractions[class_id, ph, pw, s, 0],
                            fractions[class_id, ph, pw, s, 1])
                    for j in range(per_class):
                        output[k, first + j, ph, pw] = total[j] / f(count) if count > 0 else f(0)


# The input gradient on the cpu: a parallel iteration per (group, block of output channels), which
# own disjoint input channels. The boxes' sample tables (about ten times the size of their output) are
# made for BOX_CHUNK boxes at a time, in order, so that their memory does not grow with the boxes.
CHANNEL_BLOCK = 16
BOX_CHUNK = 256


def deform_psroi_pool_backward_cpu(grad_output, rois, trans, spatial_scale, trans_std, group_size,
                                   part_size, sample_per_part, no_trans, grad_input):
    boxes, output_dim, pooled_size, _ = grad_output.shape
    classes = 1 if no_trans else trans.shape[1] // 2
    groups = group_size * group_size
    samples = sample_per_part * sample_per_part
    chunk = max(1, min(boxes, BOX_CHUNK))
    cells = np.empty((chunk, classes, pooled_size, pooled_size, samples, 4), np.int32)
    fractions = np.empty((chunk, classes, pooled_size, pooled_size, samples, 2), grad_input.dtype)
    counts = np.empty((chunk, classes, pooled_size, pooled_size), np.int64)
    grad_pixels = np.zeros((grad_input.shape[0], groups, grad_input.shape[2] * grad_input.shape[3],
                            output_dim), grad_input.dtype)
    blocks = (output_dim + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    for start in range(0, boxes, chunk):
        stop = min(start + chunk, boxes)
        chunk_rois = rois[start:stop]
        chunk_trans = trans if no_trans else trans[start:stop]
        parallel_for(_deform_psroi_samples_boxes, stop - start, grad_input, chunk_rois, chunk_trans,
                     spatial_scale, trans_std, group_size, part_size, sample_per_part, no_trans, output_dim,
                     cells, fractions, counts)
        parallel_for(_deform_psroi_pool_backward_tasks, groups * blocks, grad_output[start:stop], chunk_rois,
                     group_size, classes, cells, fractions, counts, grad_pixels, grad_input.shape[3])
    channels_first(grad_pixels, grad_input)


@cpu_function
def _deform_psroi_samples_boxes(start, stop, features, rois, trans, spatial_scale, trans_std, group_size,
                                part_size, sample_per_part, no_trans, output_dim, cells, fractions, counts):
    for k in range(start, stop):
        deform_psroi_box_samples(features, rois, trans, k, spatial_scale, trans_std, group_size,
                                 part_size, sample_per_part, no_trans, output_dim, cells[k],
                                 fractions[k], counts[k])


@cpu_function
def _deform_psroi_pool_backward_tasks(start, stop, grad_output, rois, group_size, classes, cells,
                                      fractions, counts, grad_pixels, width):
    f = grad_pixels.dtype.type
    boxes, output_dim, pooled_size, _ = grad_output.shape
    per_class = output_dim // classes
    blocks = (output_dim + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    for task in range(start, stop):
        group = task // blocks
        block_start = (task - group * blocks) * CHANNEL_BLOCK
        block_end = min(block_start + CHANNEL_BLOCK, output_dim)
        grads = np.empty(CHANNEL_BLOCK, grad_pixels.dtype)
        for k in range(boxes):
            grad_image = grad_pixels[int(rois[k, 0]), group]
            for ph in range(pooled_size):
                for pw in range(pooled_size):
                    if deform_psroi_channel(0, ph, pw, group_size, pooled_size) != group:
                        continue
                    for class_id in range(block_start // per_class, (block_end - 1) // per_class + 1):
                        count = counts[k, class_id, ph, pw]
                        if count == 0:
                            continue
                        first = max(block_start, class_id * per_class)
                        last = min(block_end, (class_id + 1) * per_class)
                        for c in range(first, last):
                            grads[c - first] = grad_output[k, c, ph, pw] / f(count)
                        for s in range(count):
                            b3_scatter_cell_channels(
                                grad_image, first, last, grads, width, cells[k, class_id, ph, pw, s, 0],
                                cells[k, class_id, ph, pw, s, 1], cells[k, class_id, ph, pw, s, 2],
                                cells[k, class_id, ph, pw, s, 3], fractions[k, class_id, ph, pw, s, 0],
                                fractions[k, class_id, ph, pw, s, 1])


def deform_psroi_pool_trans_grad_cpu(features, grad_output, rois, trans, spatial_scale, trans_std,
                                     group_size, part_size, sample_per_part, grad_trans):
    # Per box: its trans gradient is its own, so boxes run in parallel without races. A sample's
    # derivatives are linear in its corner values: the sums over a class's channels of the gradient
    # times each corner first (vectorised), then rule B3's derivative of those once per sample. The
    # same sums as the cuda kernel's, in another order.
    parallel_for(_deform_psroi_pool_trans_grad_boxes, rois.shape[0], features,
                 channels_last(features, group_size * group_size), grad_output, rois, trans, spatial_scale,
                 trans_std, group_size, part_size, sample_per_part, grad_trans)


@cpu_function(reassociate=True)
def _deform_psroi_pool_trans_grad_boxes(start, stop, features, pixels, grad_output, rois, trans,
                                        spatial_scale, trans_std, group_size, part_size, sample_per_part,
                                        grad_trans):
    f = features.dtype.type
    output_dim, pooled_size = grad_output.shape[1], grad_output.shape[2]
    classes = trans.shape[1] // 2
    per_class = output_dim // classes
    width = features.shape[3]
    grads = np.empty(per_class, features.dtype)
    for k in range(start, stop):
        # Every entry of the box's gradient is written (as by the cuda kernel): zeros first, then the
        # sum over the bins of each part cell.
        grad_trans[k] = f(0)
        _, _, _, roi_h, roi_w = deform_psroi_box(rois, k, spatial_scale)
        if not (math.isfinite(roi_h) and math.isfinite(roi_w)):  # such a box takes no sample
            continue
        cells, fractions, counts = deform_psroi_samples_tables(features, classes, pooled_size,
                                                               sample_per_part)
        deform_psroi_box_samples(features, rois, trans, k, spatial_scale, trans_std, group_size,
                                 part_size, sample_per_part, False, output_dim, cells, fractions,
                                 counts)
        n = int(rois[k, 0])
        for class_id in range(classes):
            for ph in range(pooled_size):
                part_h = deform_psroi_part(rois, ph, pooled_size, part_size)
                for pw in range(pooled_size):
                    part_w = deform_psroi_part(rois, pw, pooled_size, part_size)
                    count = counts[class_id, ph, pw]
                    if count == 0:
                        continue
                    image = pixels[n, deform_psroi_channel(0, ph, pw, group_size, pooled_size)]
                    first = class_id * per_class
                    for c in range(per_class):
                        grads[c] = grad_output[k, first + c, ph, pw] / f(count)
                    grad_y = f(0)
                    grad_x = f(0)
                    for s in range(count):
                        y_low, x_low = cells[class_id, ph, pw, s, 0], cells[class_id, ph, pw, s, 1]
                        y_high, x_high = cells[class_id, ph, pw, s, 2], cells[class_id, ph, pw, s, 3]
                        pixel_ll, pixel_lh = image[y_low * width + x_low], image[y_low * width + x_high]
                        pixel_hl, pixel_hh = image[y_high * width + x_low], image[y_high * width + x_high]
                        v_ll = f(0)
                        v_lh = f(0)
                        v_hl = f(0)
                        v_hh = f(0)
                        for c in range(per_class):
                            v_ll += grads[c] * pixel_ll[first + c]
                            v_lh += grads[c] * pixel_lh[first + c]
                            v_hl += grads[c] * pixel_hl[first + c]
                            v_hh += grads[c] * pixel_hh[first + c]
                        dy, dx = b3_gradient_of_corners(v_ll, v_lh, v_hl, v_hh, y_low, x_low, y_high, x_high,
                                                        fractions[class_id, ph, pw, s, 0],
                                                        fractions[class_id, ph, pw, s, 1])
                        grad_y += dy
                        grad_x += dx
                    grad_trans[k, 2 * class_id, part_h, part_w] += trans_std * roi_w * grad_x
                    grad_trans[k, 2 * class_id + 1, part_h, part_w] += trans_std * roi_h * grad_y


KERNELS = {
    "forward": {"cpu": deform_psroi_pool_forward_cpu, "cuda": deform_psroi_pool_forward_cuda},
    "backward": {"cpu": deform_psroi_pool_backward_cpu, "cuda": deform_psroi_pool_backward_cuda,
                 "cuda_deterministic": deform_psroi_pool_backward_deterministic_cuda},
    "trans_grad": {"cpu": deform_psroi_pool_trans_grad_cpu, "cuda": deform_psroi_pool_trans_grad_cuda},
}
