"""RoI Align (Mask R-CNN, He et al. 2017) as torchvision computes it: docs/operators.md, roi_align."""
import math

import numpy as np

from .bilinear import b1, b1_scatter

MAX_GRID = 256


def _samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """Batch index and, per bin ``(ph, pw)``, the list of sample points and the divisor."""
    offset = 0.5 if aligned else 0.0
    batch = int(roi[0])
    x1, y1, x2, y2 = (float(v) * spatial_scale - offset for v in roi[1:])
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
    finite = all(math.isfinite(v) for v in (x1, y1, x2, y2))
    # the adaptive grid is capped at MAX_GRID samples per side (numba_droi's documented bound)
    grid_h = sampling_ratio if sampling_ratio > 0 else (min(math.ceil(roi_h / pooled_h), MAX_GRID)
                                                        if finite else 0)
    grid_w = sampling_ratio if sampling_ratio > 0 else (min(math.ceil(roi_w / pooled_w), MAX_GRID)
                                                        if finite else 0)
    bins = {}
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            points = [(y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h,
                       x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w)
                      for iy in range(grid_h) for ix in range(grid_w)]
            bins[ph, pw] = points, max(grid_h * grid_w, 1)
    return batch, bins


def roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    pooled_h, pooled_w = output_size
    channels = input.shape[1]
    out = np.zeros((len(rois), channels, pooled_h, pooled_w))
    for k, roi in enumerate(rois):
        batch, bins = _samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
        for (ph, pw), (points, count) in bins.items():
            for c in range(channels):
                out[k, c, ph, pw] = sum(b1(input[batch, c], y, x) for y, x in points) / count
    return out


def roi_align_backward(grad_output, rois, input_shape, spatial_scale=1.0, sampling_ratio=-1,
                       aligned=False):
    """Gradient of ``sum(grad_output * roi_align(...))`` with respect to the input."""
    pooled_h, pooled_w = grad_output.shape[2:]
    grad_input = np.zeros(input_shape)
    for k, roi in enumerate(rois):
        batch, bins = _samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
        for (ph, pw), (points, count) in bins.items():
            for c in range(input_shape[1]):
                for y, x in points:
                    b1_scatter(grad_input[batch, c], y, x, grad_output[k, c, ph, pw] / count)
    return grad_input
