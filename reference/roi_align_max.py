"""Max-mode RoI Align as mmcv computes it: numba_droi.ops.roi_align_max's docstring."""
import numpy as np

from .bilinear import b1, b1_scatter
from .roi_align import _samples


def roi_align_max_with_argmax(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0,
                              aligned=True):
    """``(output, argmax)``: each bin's largest sample (the first of equal ones) and its index in the
    bin's row-major list of samples; 0 and -1 for a bin without samples."""
    pooled_h, pooled_w = output_size
    channels = input.shape[1]
    out = np.zeros((len(rois), channels, pooled_h, pooled_w))
    argmax = np.full(out.shape, -1, np.int32)
    for k, roi in enumerate(rois):
        batch, bins = _samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
        for (ph, pw), (points, _) in bins.items():
            for c in range(channels):
                values = [b1(input[batch, c], y, x) for y, x in points]
                if values:
                    argmax[k, c, ph, pw] = int(np.argmax(values))
                    out[k, c, ph, pw] = values[argmax[k, c, ph, pw]]
    return out, argmax


def roi_align_max(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True):
    return roi_align_max_with_argmax(input, rois, output_size, spatial_scale, sampling_ratio, aligned)[0]


def roi_align_max_backward(grad_output, rois, argmax, input_shape, spatial_scale=1.0, sampling_ratio=0,
                           aligned=True):
    """Each bin's gradient to the bilinear corners of its winning sample."""
    pooled_h, pooled_w = grad_output.shape[2:]
    grad_input = np.zeros(input_shape)
    for k, roi in enumerate(rois):
        batch, bins = _samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
        for (ph, pw), (points, _) in bins.items():
            for c in range(input_shape[1]):
                if argmax[k, c, ph, pw] >= 0:
                    y, x = points[argmax[k, c, ph, pw]]
                    b1_scatter(grad_input[batch, c], y, x, grad_output[k, c, ph, pw])
    return grad_input
