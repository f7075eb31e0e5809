"""Deformable RoI pooling (Dai et al. 2017) in RoI-Align form, modulated (DCNv2), as mmcv's
deform_roi_pool computes it: docs/operators.md, deform_roi_pool."""
import math

import numpy as np

from .bilinear import b1, b1_gradient, b1_scatter
from .roi_align import MAX_GRID


def _bins(roi, offset_k, spatial_scale, pooled_h, pooled_w, sampling_ratio, gamma):
    """Batch index, per bin its sample points, divisor and ``gamma * (roi_w, roi_h)``, and the samples
    per bin side ``(grid_h, grid_w)``."""
    batch = int(roi[0])
    x1, y1, x2, y2 = (float(v) * spatial_scale - 0.5 for v in roi[1:])
    roi_w, roi_h = x2 - x1, y2 - y1
    bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
    finite = all(math.isfinite(v) for v in (x1, y1, x2, y2))
    # the adaptive grid is capped at MAX_GRID samples per side, as in reference/roi_align.py
    grid_h = sampling_ratio if sampling_ratio > 0 else (min(max(math.ceil(bin_h), 0), MAX_GRID)
                                                        if finite else 0)
    grid_w = sampling_ratio if sampling_ratio > 0 else (min(max(math.ceil(bin_w), 0), MAX_GRID)
                                                        if finite else 0)
    bins = {}
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            dx = gamma * roi_w * float(offset_k[0, ph, pw])
            dy = gamma * roi_h * float(offset_k[1, ph, pw])
            points = [(y1 + dy + ph * bin_h + (iy + 0.5) * bin_h / grid_h,
                       x1 + dx + pw * bin_w + (ix + 0.5) * bin_w / grid_w)
                      for iy in range(grid_h) for ix in range(grid_w)]
            bins[ph, pw] = points, max(grid_h * grid_w, 1), (gamma * roi_w, gamma * roi_h)
    return batch, bins, (grid_h, grid_w)


def _defaults(rois, offset, mask, pooled_h, pooled_w):
    shape = (len(rois), pooled_h, pooled_w)
    return (np.zeros((shape[0], 2) + shape[1:]) if offset is None else offset,
            np.ones((shape[0], 1) + shape[1:]) if mask is None else mask)


def deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0,
                    gamma=0.1, mask=None):
    pooled_h, pooled_w = output_size
    offset, mask = _defaults(rois, offset, mask, pooled_h, pooled_w)
    out = np.zeros((len(rois), input.shape[1], pooled_h, pooled_w))
    for k, roi in enumerate(rois):
        batch, bins, _ = _bins(roi, offset[k], spatial_scale, pooled_h, pooled_w, sampling_ratio, gamma)
        for (ph, pw), (points, count, _) in bins.items():
            for c in range(input.shape[1]):
                pooled = sum(b1(input[batch, c], y, x) for y, x in points) / count
                out[k, c, ph, pw] = mask[k, 0, ph, pw] * pooled
    return out


def deform_roi_pool_backward(grad_output, input, rois, offset, spatial_scale=1.0, sampling_ratio=0,
                             gamma=0.1, mask=None, wanted=None):
    """Gradients of ``sum(grad_output * deform_roi_pool(...))``: (input, offset, mask), all of them
    (``wanted`` is accepted, as the operator's, and ignored)."""
    pooled_h, pooled_w = grad_output.shape[2:]
    offset, mask = _defaults(rois, offset, mask, pooled_h, pooled_w)
    grad_input = np.zeros(input.shape)
    grad_offset = np.zeros(offset.shape)
    grad_mask = np.zeros(mask.shape)
    for k, roi in enumerate(rois):
        batch, bins, _ = _bins(roi, offset[k], spatial_scale, pooled_h, pooled_w, sampling_ratio, gamma)
        for (ph, pw), (points, count, (scale_x, scale_y)) in bins.items():
            m = mask[k, 0, ph, pw]
            for c in range(input.shape[1]):
                g = grad_output[k, c, ph, pw]
                for y, x in points:
                    b1_scatter(grad_input[batch, c], y, x, g * m / count)
                    dy, dx = b1_gradient(input[batch, c], y, x)
                    grad_offset[k, 0, ph, pw] += g * m * scale_x * dx / count
                    grad_offset[k, 1, ph, pw] += g * m * scale_y * dy / count
                    grad_mask[k, 0, ph, pw] += g * b1(input[batch, c], y, x) / count
    return grad_input, grad_offset, grad_mask


def deform_roi_pool_box_backward(grad_output, input, rois, offset, spatial_scale=1.0, sampling_ratio=0,
                                 gamma=0.1, mask=None):
    """Gradient of ``sum(grad_output * deform_roi_pool(...))`` with respect to the boxes ``[n, x1, y1,
    x2, y2]``, the sampling grid held fixed: each sample ``y = y1 + roi_h * (gamma * offset_y + (ph +
    (iy + 0.5) / gh) / PH)`` (scaled coordinates) moves with ``y2`` by the bracket and with ``y1`` by
    one minus it; times ``spatial_scale``."""
    pooled_h, pooled_w = grad_output.shape[2:]
    offset, mask = _defaults(rois, offset, mask, pooled_h, pooled_w)
    grad_rois = np.zeros((len(rois), 5))
    for k, roi in enumerate(rois):
        batch, bins, (grid_h, grid_w) = _bins(roi, offset[k], spatial_scale, pooled_h, pooled_w,
                                              sampling_ratio, gamma)
        for (ph, pw), (points, count, _) in bins.items():
            for number, (y, x) in enumerate(points):
                iy, ix = divmod(number, grid_w)
                lever_y = gamma * float(offset[k, 1, ph, pw]) + (ph + (iy + 0.5) / grid_h) / pooled_h
                lever_x = gamma * float(offset[k, 0, ph, pw]) + (pw + (ix + 0.5) / grid_w) / pooled_w
                for c in range(input.shape[1]):
                    dy, dx = b1_gradient(input[batch, c], y, x)
                    if dy == 0 and dx == 0:  # (a sample moved out of the map by a NaN offset)
                        continue
                    g = grad_output[k, c, ph, pw] * mask[k, 0, ph, pw] / count * spatial_scale
                    grad_rois[k, 1:] += g * np.array([dx * (1 - lever_x), dy * (1 - lever_y), dx * lever_x,
                                                      dy * lever_y])
    return grad_rois
