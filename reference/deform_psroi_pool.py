"""Deformable PS RoI pooling (Dai et al. 2017) as MXNet's DeformablePSROIPooling computes it:
docs/operators.md, deform_psroi_pool."""
import math

import numpy as np

from .bilinear import b3, b3_gradient, b3_scatter


def _round(value):
    """C's round: halves away from zero."""
    return math.copysign(math.floor(abs(value) + 0.5), value) if math.isfinite(value) else value


def _bins(features_shape, roi, trans_k, spatial_scale, output_dim, group_size, pooled_size, part_size,
          sample_per_part, trans_std, no_trans):
    """Per output element ``(c, ph, pw)``: input channel, the sample points, the trans elements
    ``(x, y)`` it reads (or None) and ``trans_std * (roi_w, roi_h)``."""
    part_size = pooled_size if part_size is None else part_size
    x_start = _round(float(roi[1])) * spatial_scale - 0.5
    y_start = _round(float(roi[2])) * spatial_scale - 0.5
    x_end = (_round(float(roi[3])) + 1) * spatial_scale - 0.5
    y_end = (_round(float(roi[4])) + 1) * spatial_scale - 0.5
    roi_w, roi_h = max(x_end - x_start, 0.1), max(y_end - y_start, 0.1)
    finite = all(math.isfinite(float(v)) for v in roi[1:])  # else no sample: NaN/inf give 0
    bin_h, bin_w = roi_h / pooled_size, roi_w / pooled_size
    num_classes = 1 if no_trans else trans_k.shape[0] // 2
    bins = {}
    for c in range(output_dim):
        class_id = c // (output_dim // num_classes)
        for ph in range(pooled_size):
            for pw in range(pooled_size):
                part_h = math.floor(ph / pooled_size * part_size)
                part_w = math.floor(pw / pooled_size * part_size)
                cells = None if no_trans else ((2 * class_id, part_h, part_w),
                                               (2 * class_id + 1, part_h, part_w))
                tx = 0.0 if no_trans else float(trans_k[cells[0]]) * trans_std
                ty = 0.0 if no_trans else float(trans_k[cells[1]]) * trans_std
                w_start = pw * bin_w + x_start + tx * roi_w
                h_start = ph * bin_h + y_start + ty * roi_h
                gh = min(max(math.floor(ph * group_size / pooled_size), 0), group_size - 1)
                gw = min(max(math.floor(pw * group_size / pooled_size), 0), group_size - 1)
                channel = (c * group_size + gh) * group_size + gw
                points = [(h_start + ih * bin_h / sample_per_part, w_start + iw * bin_w / sample_per_part)
                          for ih in range(sample_per_part) for iw in range(sample_per_part)]
                height, width = features_shape[2:]
                points = [(h, w) for h, w in points
                          if -0.5 <= h <= height - 0.5 and -0.5 <= w <= width - 0.5 and finite]
                bins[c, ph, pw] = channel, points, cells, (trans_std * roi_w, trans_std * roi_h)
    return bins


def deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size,
                      part_size=None, sample_per_part=1, trans_std=0.0, no_trans=False):
    out = np.zeros((len(rois), output_dim, pooled_size, pooled_size))
    for k, roi in enumerate(rois):
        batch = int(roi[0])
        for (c, ph, pw), (channel, points, _, _) in _bins(
                input.shape, roi, None if no_trans else trans[k], spatial_scale, output_dim,
                group_size, pooled_size, part_size, sample_per_part, trans_std, no_trans).items():
            if points:
                out[k, c, ph, pw] = sum(b3(input[batch, channel], h, w) for h, w in points) / len(points)
    return out


def deform_psroi_pool_backward(grad_output, input, rois, trans, spatial_scale, group_size,
                               part_size=None, sample_per_part=1, trans_std=0.0, no_trans=False,
                               wanted=None):
    """Gradients of ``sum(grad_output * deform_psroi_pool(...))``: (input, trans or None), both
    (``wanted`` is accepted, as the operator's, and ignored)."""
    output_dim, pooled_size = grad_output.shape[1:3]
    grad_input = np.zeros(input.shape)
    grad_trans = None if no_trans else np.zeros(trans.shape)
    for k, roi in enumerate(rois):
        batch = int(roi[0])
        for (c, ph, pw), (channel, points, cells, (scale_x, scale_y)) in _bins(
                input.shape, roi, None if no_trans else trans[k], spatial_scale, output_dim,
                group_size, pooled_size, part_size, sample_per_part, trans_std, no_trans).items():
            for h, w in points:
                g = grad_output[k, c, ph, pw] / len(points)
                b3_scatter(grad_input[batch, channel], h, w, g)
                if not no_trans:
                    dy, dx = b3_gradient(input[batch, channel], h, w)
                    grad_trans[(k,) + cells[0]] += g * scale_x * dx
                    grad_trans[(k,) + cells[1]] += g * scale_y * dy
    return grad_input, grad_trans
