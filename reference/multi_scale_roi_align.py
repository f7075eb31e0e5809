"""Multi-scale RoI Align as torchvision's MultiScaleRoIAlign computes it, box by box:
numba_droi.ops.multi_scale_roi_align's docstring."""
import math

import numpy as np

from .roi_align import roi_align, roi_align_backward


def _scales_and_levels(feature_shapes, rois, image_shapes, canonical_scale, canonical_level):
    tallest = max(height for height, _ in image_shapes)
    scales = [2.0 ** round(math.log2(shape[-2] / tallest)) for shape in feature_shapes]
    k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
    levels = []
    for roi in rois:
        area = (roi[3] - roi[1]) * (roi[4] - roi[2])
        if area < 0:
            levels.append(-1)  # no level
            continue
        size = math.sqrt(area)
        level = (math.floor(canonical_level + math.log2(size / canonical_scale) + 1e-6) if size > 0
                 else k_min)
        levels.append(min(max(level, k_min), k_max) - k_min)
    return scales, levels


def multi_scale_roi_align(features, rois, image_shapes, output_size, sampling_ratio, canonical_scale=224,
                          canonical_level=4):
    scales, levels = _scales_and_levels([f.shape for f in features], rois, image_shapes, canonical_scale,
                                        canonical_level)
    out = np.zeros((len(rois), features[0].shape[1]) + tuple(output_size))
    for k, level in enumerate(levels):
        if level >= 0:
            out[k] = roi_align(features[level], rois[k:k + 1], output_size, scales[level], sampling_ratio)[0]
    return out


def multi_scale_roi_align_backward(grad_output, features_shapes, rois, image_shapes, sampling_ratio,
                                   canonical_scale=224, canonical_level=4):
    scales, levels = _scales_and_levels(features_shapes, rois, image_shapes, canonical_scale, canonical_level)
    grads = [np.zeros(shape) for shape in features_shapes]
    for k, level in enumerate(levels):
        if level >= 0:
            grads[level] += roi_align_backward(grad_output[k:k + 1], rois[k:k + 1], features_shapes[level],
                                               scales[level], sampling_ratio)
    return grads
