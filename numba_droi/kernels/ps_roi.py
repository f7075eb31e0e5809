"""Position-sensitive RoI Pool and RoI Align kernels (R-FCN), in three parts.

* The body, shared by the targets: output channel ``c`` at bin ``(ph, pw)`` reads input channel
  ``ps_input_channel(c, ph, pw, PH, PW)``. PS RoI Pool averages the window that RoI Pool's geometry
  gives (``pool_box`` without the +1, ``pool_window``): ``ps_roi_pool_window`` and its scatter
  ``ps_roi_pool_window_backward``; PS RoI Align is roi_align's body (``roi_align_bin``,
  ``roi_align_bin_backward``) with ``aligned=True`` on the mapped channel.
* The cuda schedule: ``*_cuda`` kernels, a thread per output element; the deterministic backwards, a
  thread per gradient plane.
* The cpu fast path: ``*_cpu`` drivers, a parallel iteration per input channel (which belongs to
  exactly one output channel and bin, so no two iterations write the same element), with every box's
  bins or samples tabulated once before; each iteration first goes through its channel's planes in
  order (``read_in_order``, ``zero_in_order``).

The tests run the cuda kernels themselves on the cpu (``_backend.cuda_kernels_on_cpu``) and require
the cpu fast path to give their outputs bit for bit and their gradients to rounding.

Kernel arguments: ``(features, rois, spatial_scale, output)`` and ``(grad_output, rois, spatial_scale,
grad_input)`` for PS RoI Pool; PS RoI Align adds ``sampling_ratio`` after ``spatial_scale``.
``grad_input`` is zero-filled.
"""
from .._backend import (add_4d, cpu_function, cuda_kernel, jitable, jitable_inlined_on_cpu,
                        parallel_for, read_in_order, thread_start, thread_stride, zero_in_order)
from .roi_align import (fill_tables, roi_align_bin, roi_align_bin_backward,
                        roi_align_bin_backward_from_tables, roi_align_bin_from_tables, roi_align_box,
                        unravel_output_index)
from .roi_pool import pool_bounds, pool_box, pool_window


# -- body: one output element and its gradient, from the definition --------------------------------

@jitable
def ps_input_channel(c, ph, pw, pooled_h, pooled_w):
    """The input channel that output channel ``c`` reads at bin ``(ph, pw)``."""
    return (c * pooled_h + ph) * pooled_w + pw


@jitable
def ps_output_position(channel, pooled_h, pooled_w):
    """``(c, ph, pw)``: the output channel and bin that read input ``channel`` (inverse of
    ``ps_input_channel``)."""
    c_ph = channel // pooled_w
    c = c_ph // pooled_h
    return c, c_ph - c * pooled_h, channel - c_ph * pooled_w


@jitable_inlined_on_cpu
def ps_roi_pool_window(features, n, c, h_low, h_high, w_low, w_high):
    """Mean of ``features[n, c, h_low:h_high, w_low:w_high]``; 0 for an empty window."""
    f = features.dtype.type
    if h_high <= h_low or w_high <= w_low:
        return f(0)
    total = f(0)
    for h in range(h_low, h_high):
        for w in range(w_low, w_high):
            total += features[n, c, h, w]
    return total / f((h_high - h_low) * (w_high - w_low))


@jitable_inlined_on_cpu
def ps_roi_pool_window_backward(grad, grad_input, n, c, h_low, h_high, w_low, w_high, atomic=True):
    """Scatter ``grad``, the gradient of ``ps_roi_pool_window``, into ``grad_input`` (atomically on
    the GPU unless ``atomic`` is False)."""
    if h_high <= h_low or w_high <= w_low:
        return
    grad = grad / grad_input.dtype.type((h_high - h_low) * (w_high - w_low))
    for h in range(h_low, h_high):
        for w in range(w_low, w_high):
            add_4d(grad_input, n, c, h, w, grad, atomic)


# -- cuda schedule ---------------------------------------------------------------------------------

@cuda_kernel("F4 F2 f F4")
def ps_roi_pool_forward_cuda(features, rois, spatial_scale, output):
    pooled_h, pooled_w = output.shape[2], output.shape[3]
    for index in range(thread_start(), output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, output.shape)
        box = pool_box(rois, k, spatial_scale, 0, pooled_h, pooled_w)
        h_low, h_high, w_low, w_high = pool_window(box, ph, pw, features.shape[2], features.shape[3])
        output[k, c, ph, pw] = ps_roi_pool_window(
            features, box[0], ps_input_channel(c, ph, pw, pooled_h, pooled_w),
            h_low, h_high, w_low, w_high)


@cuda_kernel("F4 F2 f F4")
def ps_roi_pool_backward_cuda(grad_output, rois, spatial_scale, grad_input):
    pooled_h, pooled_w = grad_output.shape[2], grad_output.shape[3]
    for index in range(thread_start(), grad_output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, grad_output.shape)
        box = pool_box(rois, k, spatial_scale, 0, pooled_h, pooled_w)
        h_low, h_high, w_low, w_high = pool_window(box, ph, pw, grad_input.shape[2],
                                                   grad_input.shape[3])
        ps_roi_pool_window_backward(
            grad_output[k, c, ph, pw], grad_input, box[0],
            ps_input_channel(c, ph, pw, pooled_h, pooled_w), h_low, h_high, w_low, w_high)


@cuda_kernel("F4 F2 f F4")
def ps_roi_pool_backward_deterministic_cuda(grad_output, rois, spatial_scale, grad_input):
    # One thread per input plane grad_input[n, channel], which exactly one output channel and bin
    # read: boxes in order, no atomics (see kernels/roi_align.py).
    pooled_h, pooled_w = grad_output.shape[2], grad_output.shape[3]
    channels = grad_input.shape[1]
    for plane in range(thread_start(), grad_input.shape[0] * channels, thread_stride()):
        n = plane // channels
        channel = plane - n * channels
        c, ph, pw = ps_output_position(channel, pooled_h, pooled_w)
        for k in range(grad_output.shape[0]):
            if int(rois[k, 0]) != n:
                continue
            box = pool_box(rois, k, spatial_scale, 0, pooled_h, pooled_w)
            h_low, h_high, w_low, w_high = pool_window(box, ph, pw, grad_input.shape[2],
                                                       grad_input.shape[3])
            ps_roi_pool_window_backward(grad_output[k, c, ph, pw], grad_input, n, channel, h_low,
                                        h_high, w_low, w_high, False)


@cuda_kernel("F4 F2 f i F4")
def ps_roi_align_forward_cuda(features, rois, spatial_scale, sampling_ratio, output):
    pooled_h, pooled_w = output.shape[2], output.shape[3]
    for index in range(thread_start(), output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, output.shape)
        box = roi_align_box(rois, k, spatial_scale, sampling_ratio, True, pooled_h, pooled_w)
        output[k, c, ph, pw] = roi_align_bin(
            features, ps_input_channel(c, ph, pw, pooled_h, pooled_w), ph, pw, box)


@cuda_kernel("F4 F2 f i F4")
def ps_roi_align_backward_cuda(grad_output, rois, spatial_scale, sampling_ratio, grad_input):
    pooled_h, pooled_w = grad_output.shape[2], grad_output.shape[3]
    for index in range(thread_start(), grad_output.size, thread_stride()):
        k, c, ph, pw = unravel_output_index(index, grad_output.shape)
        box = roi_align_box(rois, k, spatial_scale, sampling_ratio, True, pooled_h, pooled_w)
        roi_align_bin_backward(grad_output[k, c, ph, pw], grad_input,
                               ps_input_channel(c, ph, pw, pooled_h, pooled_w), ph, pw, box)


@cuda_kernel("F4 F2 f i F4")
def ps_roi_align_backward_deterministic_cuda(grad_output, rois, spatial_scale, sampling_ratio,
                                             grad_input):
    # One thread per input plane, as ps_roi_pool_backward_deterministic_cuda.
    pooled_h, pooled_w = grad_output.shape[2], grad_output.shape[3]
    channels = grad_input.shape[1]
    for plane in range(thread_start(), grad_input.shape[0] * channels, thread_stride()):
        n = plane // channels
        channel = plane - n * channels
        c, ph, pw = ps_output_position(channel, pooled_h, pooled_w)
        for k in range(grad_output.shape[0]):
            if int(rois[k, 0]) != n:
                continue
            box = roi_align_box(rois, k, spatial_scale, sampling_ratio, True, pooled_h, pooled_w)
            roi_align_bin_backward(grad_output[k, c, ph, pw], grad_input, channel, ph, pw, box, False)


# -- cpu fast path: the body's values by another schedule ------------------------------------------

def ps_roi_pool_forward_cpu(features, rois, spatial_scale, output):
    bounds = pool_bounds(rois, spatial_scale, 0, *output.shape[2:], *features.shape[2:])
    parallel_for(_ps_roi_pool_forward_channels, features.shape[1], features, rois, bounds, output)


@cpu_function
def _ps_roi_pool_forward_channels(start, stop, features, rois, bounds, output):
    pooled_h, pooled_w = output.shape[2], output.shape[3]
    planes = features.reshape((-1, features.shape[2] * features.shape[3]))
    for channel in range(start, stop):
        c, ph, pw = ps_output_position(channel, pooled_h, pooled_w)
        for n in range(features.shape[0]):
            read_in_order(planes[n * features.shape[1] + channel])
        for k in range(rois.shape[0]):
            output[k, c, ph, pw] = ps_roi_pool_window(
                features, int(rois[k, 0]), channel, bounds[k, 0, ph], bounds[k, 1, ph],
                bounds[k, 2, pw], bounds[k, 3, pw])


def ps_roi_pool_backward_cpu(grad_output, rois, spatial_scale, grad_input):
    bounds = pool_bounds(rois, spatial_scale, 0, *grad_output.shape[2:], *grad_input.shape[2:])
    parallel_for(_ps_roi_pool_backward_channels, grad_input.shape[1], grad_output, rois, bounds,
                 grad_input)


@cpu_function
def _ps_roi_pool_backward_channels(start, stop, grad_output, rois, bounds, grad_input):
    pooled_h, pooled_w = grad_output.shape[2], grad_output.shape[3]
    grad_planes = grad_input.reshape((-1, grad_input.shape[2] * grad_input.shape[3]))
    for channel in range(start, stop):
        c, ph, pw = ps_output_position(channel, pooled_h, pooled_w)
        for n in range(grad_input.shape[0]):
            zero_in_order(grad_planes[n * grad_input.shape[1] + channel])
        for k in range(rois.shape[0]):
            ps_roi_pool_window_backward(grad_output[k, c, ph, pw], grad_input, int(rois[k, 0]), channel,
                                        bounds[k, 0, ph], bounds[k, 1, ph], bounds[k, 2, pw],
                                        bounds[k, 3, pw])


def ps_roi_align_forward_cpu(features, rois, spatial_scale, sampling_ratio, output):
    tables = fill_tables(features, rois, spatial_scale, sampling_ratio, True, *output.shape[2:])
    parallel_for(_ps_roi_align_forward_channels, features.shape[1], features, rois, *tables, output)


@cpu_function
def _ps_roi_align_forward_channels(start, stop, features, rois, layout, corners, weights, output):
    pooled_h, pooled_w = output.shape[2], output.shape[3]
    planes = features.reshape((-1, features.shape[2] * features.shape[3]))
    for channel in range(start, stop):
        c, ph, pw = ps_output_position(channel, pooled_h, pooled_w)
        for n in range(features.shape[0]):
            read_in_order(planes[n * features.shape[1] + channel])
        for k in range(rois.shape[0]):
            first, grid_h, grid_w = layout[k, 0], layout[k, 1], layout[k, 2]
            output[k, c, ph, pw] = roi_align_bin_from_tables(
                planes[int(rois[k, 0]) * features.shape[1] + channel], first + ph * grid_h,
                first + pooled_h * grid_h + pw * grid_w, grid_h, grid_w, corners, weights)


def ps_roi_align_backward_cpu(grad_output, rois, spatial_scale, sampling_ratio, grad_input):
    tables = fill_tables(grad_input, rois, spatial_scale, sampling_ratio, True, *grad_output.shape[2:])
    parallel_for(_ps_roi_align_backward_channels, grad_input.shape[1], grad_output, rois, *tables,
                 grad_input)


@cpu_function
def _ps_roi_align_backward_channels(start, stop, grad_output, rois, layout, corners, weights, grad_input):
    pooled_h, pooled_w = grad_output.shape[2], grad_output.shape[3]
    grad_planes = grad_input.reshape((-1, grad_input.shape[2] * grad_input.shape[3]))
    for channel in range(start, stop):
        c, ph, pw = ps_output_position(channel, pooled_h, pooled_w)
        for n in range(grad_input.shape[0]):
            zero_in_order(grad_planes[n * grad_input.shape[1] + channel])
        for k in range(rois.shape[0]):
            first, grid_h, grid_w = layout[k, 0], layout[k, 1], layout[k, 2]
            roi_align_bin_backward_from_tables(
                grad_output[k, c, ph, pw], grad_planes[int(rois[k, 0]) * grad_input.shape[1] + channel],
                first + ph * grid_h, first + pooled_h * grid_h + pw * grid_w, grid_h, grid_w, corners,
                weights)


KERNELS = {
    "ps_roi_pool": {
        "forward": {"cpu": ps_roi_pool_forward_cpu, "cuda": ps_roi_pool_forward_cuda},
        "backward": {"cpu": ps_roi_pool_backward_cpu, "cuda": ps_roi_pool_backward_cuda,
                     "cuda_deterministic": ps_roi_pool_backward_deterministic_cuda},
    },
    "ps_roi_align": {
        "forward": {"cpu": ps_roi_align_forward_cpu, "cuda": ps_roi_align_forward_cuda},
        "backward": {"cpu": ps_roi_align_backward_cpu, "cuda": ps_roi_align_backward_cuda,
                     "cuda_deterministic": ps_roi_align_backward_deterministic_cuda},
    },
}
