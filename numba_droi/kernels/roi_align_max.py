"""Max-mode RoI Align kernels (mmcv's ``RoIAlign(pool_mode="max")``), in three parts.

* The body, shared by the targets: RoI Align's box geometry and samples (kernels/roi_align.py);
  ``roi_align_max_bin``, one output element and its argmax (the winning sample); and
  ``roi_align_max_scatter``, the backward's add of an output's gradient at that sample's four corners
  (atomic on the GPU).
* The cuda schedule: a thread per output element; the deterministic backward, a thread per gradient
  plane.
* The cpu drivers run the body: the forward box by box, the backward channel by channel (boxes in
  order, as the deterministic cuda backward).

Kernel arguments: ``(features, rois, spatial_scale, sampling_ratio, aligned, output, argmax)`` and
``(grad_output, rois, spatial_scale, sampling_ratio, aligned, argmax, grad_input)``, with
``spatial_scale`` of the features' dtype, ``argmax`` int32 of the output's shape (the winning
sample's index ``iy*grid_w + ix`` in its bin, -1 for a bin that none won), flat in the forward (its
index is the output element's: fewer registers), or empty when only the output is wanted, and
``grad_input`` zero-filled.
"""
import math

from .._backend import cpu_function, cuda_kernel, jitable, parallel_for, thread_start, thread_stride
from .bilinear import b1_scatter, b1_value, b1_weights
from .roi_align import roi_align_box, roi_align_sample, unravel_output_index


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
    parallel_for(_forward_boxes, rois.shape[0], features, rois, spatial_scale, sampling_ratio, aligned,
                 output, argmax)


@cpu_function
def _forward_boxes(start, stop, features, rois, spatial_scale, sampling_ratio, aligned, output, argmax):
    channels, pooled_h, pooled_w = output.shape[1:]
    for k in range(start, stop):
        box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w)
        for c in range(channels):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    output[k, c, ph, pw], winner = roi_align_max_bin(features, c, ph, pw, box)
                    if argmax.size:
                        argmax[((k * channels + c) * pooled_h + ph) * pooled_w + pw] = winner


def roi_align_max_backward_cpu(grad_output, rois, spatial_scale, sampling_ratio, aligned, argmax,
                               grad_input):
    parallel_for(_backward_channels, grad_input.shape[1], grad_output, rois, spatial_scale,
                 sampling_ratio, aligned, argmax, grad_input)


@cpu_function
def _backward_channels(start, stop, grad_output, rois, spatial_scale, sampling_ratio, aligned, argmax,
                       grad_input):
    boxes, _, pooled_h, pooled_w = grad_output.shape
    for c in range(start, stop):
        for k in range(boxes):
            box = roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned, pooled_h, pooled_w)
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    roi_align_max_scatter(grad_output[k, c, ph, pw], grad_input, c, ph, pw, box,
                                          argmax[k, c, ph, pw], False)


KERNELS = {
    "forward": {"cpu": roi_align_max_forward_cpu, "cuda": roi_align_max_forward_cuda},
    "backward": {"cpu": roi_align_max_backward_cpu, "cuda": roi_align_max_backward_cuda,
                 "cuda_deterministic": roi_align_max_backward_deterministic_cuda},
}
