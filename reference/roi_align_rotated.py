"""Rotated RoI Align as mmcv computes it: numba_droi.ops.roi_align_rotated's docstring."""
import math

import numpy as np

from .bilinear import b1, b1_scatter
from .roi_align import MAX_GRID


def _samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise):
    """Batch index and, per bin ``(ph, pw)``, the list of sample points and the divisor."""
    offset = 0.5 if aligned else 0.0
    batch = int(roi[0])
    cx, cy = float(roi[1]) * spatial_scale - offset, float(roi[2]) * spatial_scale - offset
    roi_w, roi_h = float(roi[3]) * spatial_scale, float(roi[4]) * spatial_scale
    theta = -float(roi[5]) if clockwise else float(roi[5])
    finite = all(math.isfinite(v) for v in (cx, cy, roi_w, roi_h, theta))
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w

    def grid(bin_size):
        if not finite:
            return 0
        return sampling_ratio if sampling_ratio > 0 else min(max(math.ceil(bin_size), 0), MAX_GRID)

    grid_h, grid_w = grid(bin_h), grid(bin_w)
    cos, sin = (math.cos(theta), math.sin(theta)) if finite else (1.0, 0.0)
    bins = {}
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            points = []
            for iy in range(grid_h):
                for ix in range(grid_w):
                    yy = -roi_h / 2 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    xx = -roi_w / 2 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    points.append((yy * cos - xx * sin + cy, yy * sin + xx * cos + cx))
            bins[ph, pw] = points, max(grid_h * grid_w, 1)
    return batch, bins


def roi_align_rotated(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True,
                      clockwise=False):
    pooled_h, pooled_w = output_size
    channels = input.shape[1]
    out = np.zeros((len(rois), channels, pooled_h, pooled_w))
    for k, roi in enumerate(rois):
        batch, bins = _samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise)
        for (ph, pw), (points, count) in bins.items():
            for c in range(channels):
                out[k, c, ph, pw] = sum(b1(input[batch, c], y, x) for y, x in points) / count
    return out


def roi_align_rotated_backward(grad_output, rois, input_shape, spatial_scale=1.0, sampling_ratio=0,
                               aligned=True, clockwise=False):
    """Gradient of ``sum(grad_output * roi_align_rotated(...))`` with respect to the input."""
    pooled_h, pooled_w = grad_output.shape[2:]
    grad_input = np.zeros(input_shape)
    for k, roi in enumerate(rois):
        batch, bins = _samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, clockwise)
        for (ph, pw), (points, count) in bins.items():
            for c in range(input_shape[1]):
                for y, x in points:
                    b1_scatter(grad_input[batch, c], y, x, grad_output[k, c, ph, pw] / count)
    return grad_input
