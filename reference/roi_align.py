"""RoI Align (Mask R-CNN, He et al. 2017) as torchvision computes it: docs/operators.md, roi_align."""
import math

import numpy as np

from .bilinear import b1, b1_gradient, b1_scatter

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
    grid_h, grid_w = _grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
    bins = {}
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            points = [(y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h,
                       x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w)
                      for iy in range(grid_h) for ix in range(grid_w)]
            bins[ph, pw] = points, max(grid_h * grid_w, 1)
    return batch, bins


def _grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """Samples per bin side ``(grid_h, grid_w)``: ``sampling_ratio``, or adaptive (none for a box with a
    non-finite coordinate)."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) * spatial_scale - offset for v in roi[1:])
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    if sampling_ratio > 0:
        return sampling_ratio, sampling_ratio
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return 0, 0
    # the adaptive grid is capped at MAX_GRID samples per side (numba_droi's documented bound)
    return min(math.ceil(roi_h / pooled_h), MAX_GRID), min(math.ceil(roi_w / pooled_w), MAX_GRID)


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


def roi_align_box_backward(grad_output, input, rois, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """Gradient of ``sum(grad_output * roi_align(...))`` with respect to the boxes ``[n, x1, y1, x2, y2]``,
    the sampling grid held fixed: each sample ``y = y1 + (ph + (iy + 0.5) / gh) / PH * roi_h`` (scaled
    coordinates) moves with ``y1`` by ``1 - fraction`` and with ``y2`` by ``fraction``, or with ``y1``
    alone where roi_h is clamped to 1; times ``spatial_scale``."""
    pooled_h, pooled_w = grad_output.shape[2:]
    grad_rois = np.zeros((len(rois), 5))
    for k, roi in enumerate(rois):
        batch, bins = _samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
        x1, y1, x2, y2 = (float(v) * spatial_scale for v in roi[1:])
        follows_x2 = aligned or x2 - x1 > 1.0
        follows_y2 = aligned or y2 - y1 > 1.0
        grid_h, grid_w = _grid(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
        for (ph, pw), (points, count) in bins.items():
            for number, (y, x) in enumerate(points):
                # the sample's place in the box, as a fraction of its height and width
                iy, ix = divmod(number, grid_w)
                fraction_y = (ph + (iy + 0.5) / grid_h) / pooled_h
                fraction_x = (pw + (ix + 0.5) / grid_w) / pooled_w
                for c in range(input.shape[1]):
                    dy, dx = b1_gradient(input[batch, c], y, x)
                    g = grad_output[k, c, ph, pw] / count * spatial_scale
                    grad_rois[k, 1] += g * dx * ((1 - fraction_x) if follows_x2 else 1.0)
                    grad_rois[k, 2] += g * dy * ((1 - fraction_y) if follows_y2 else 1.0)
                    grad_rois[k, 3] += g * dx * (fraction_x if follows_x2 else 0.0)
                    grad_rois[k, 4] += g * dy * (fraction_y if follows_y2 else 0.0)
    return grad_rois
