"""Multi-scale RoI Align (an FPN's RoI pooling, as torchvision's ``MultiScaleRoIAlign``) at the array
level: each box pooled by ``roi_align`` from the one pyramid level that its size maps to."""
import numpy as np

from .. import _backend
from . import _checks
from .roi_align import roi_align, roi_align_backward

__all__ = ["infer_scales", "map_levels", "multi_scale_roi_align", "multi_scale_roi_align_backward"]


def infer_scales(feature_shapes, image_shapes):
    """torchvision's scales of pyramid levels of ``feature_shapes`` (``(N, C, H, W)`` each) for images
    of ``image_shapes`` (``(height, width)`` each): ``2 ** round(log2(H / max image height))`` per
    level (in float32, halves to even), and the levels ``(k_min, k_max) = (int(-log2 scale_first),
    int(-log2 scale_last))``. Returns ``(scales, k_min, k_max)``. Scales that do not halve from each
    level to the next are a ValueError (torchvision maps the boxes to wrong levels then)."""
    image_shapes = [tuple(shape) for shape in image_shapes]
    if not image_shapes or not all(len(shape) == 2 and min(shape) > 0 for shape in image_shapes):
        raise ValueError(f"image_shapes must be a non-empty list of (height, width) pairs of positive sizes, "
                         f"got {image_shapes}")
    if not feature_shapes:
        raise ValueError("features must hold at least one level, got none")
    tallest = max(height for height, _ in image_shapes)
    scales = [2.0 ** float(np.round(np.log2(np.float32(shape[-2] / tallest)))) for shape in feature_shapes]
    if scales != [scales[0] / 2 ** i for i in range(len(scales))]:
        raise ValueError(f"the features' inferred scales {scales} must halve from each level to the next "
                         f"(finest first)")
    k_min = int(-np.log2(np.float32(scales[0])))
    k_max = int(-np.log2(np.float32(scales[-1])))
    return scales, k_min, k_max


def map_levels(rois, k_min, k_max, canonical_scale=224, canonical_level=4, eps=1e-6, xp=None):
    """The pyramid level of each box, counted from ``k_min`` (FPN, Lin et al., 2017, eq. 1, as
    torchvision's ``LevelMapper``)::

        level = clip(floor(canonical_level + log2(sqrt(w * h) / canonical_scale) + eps), k_min, k_max) - k_min

    with ``w * h`` the box's area ``(x2 - x1) * (y2 - y1)`` in the boxes' dtype. ``rois``: ``(K, 5)``, a
    NumPy or CuPy array, or an array of the module ``xp`` (``torch``, ``jax.numpy``: the adapters map
    their tensors with it). Returns an int32 array of ``K`` levels: a box of zero area takes level 0, a
    reversed box (negative area) -1, no level, so its output is 0 (as torchvision's, where the NaN
    level matches none)."""
    xp = xp or _backend.array_module(rois)
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    with np.errstate(divide="ignore", invalid="ignore"):
        level = xp.floor(canonical_level + xp.log2(xp.sqrt(area) / canonical_scale)
                         + xp.asarray(eps, dtype=area.dtype))
    level = xp.where(xp.isnan(level), k_min - 1, xp.clip(level, k_min, k_max))
    return xp.asarray(level, dtype=xp.int32) - k_min


def _levels(features, rois, image_shapes, canonical_scale, canonical_level):
    """``(rois, scales, levels)``: the boxes checked against the first level, the scales and each
    box's level."""
    if not isinstance(features, (list, tuple)) or not features:
        raise ValueError(f"features must be a non-empty list of (N, C, H, W) arrays, one per level, got "
                         f"{type(features).__name__}")
    features = [_checks.features(level, f"features[{i}]") for i, level in enumerate(features)]
    for i, level in enumerate(features[1:], 1):
        if level.shape[:2] != features[0].shape[:2]:
            raise ValueError(f"features[{i}] must have the batch and channels of features[0], "
                             f"{features[0].shape[:2]}, got {level.shape[:2]}")
    rois = _checks.rois(rois, features[0], features_name="features[0]")
    scales, k_min, k_max = infer_scales([level.shape for level in features], image_shapes)
    _checks.finite_real(canonical_scale, "canonical_scale")
    if canonical_scale <= 0:
        raise ValueError(f"canonical_scale must be positive, got {canonical_scale!r}")
    _checks.integer(canonical_level, "canonical_level")
    levels = _backend.to_numpy(map_levels(rois, k_min, k_max, canonical_scale, canonical_level))
    return features, rois, scales, levels


def multi_scale_roi_align(features, rois, image_shapes, output_size, sampling_ratio, canonical_scale=224,
                          canonical_level=4):
    """RoI Align on a feature pyramid, as torchvision's ``MultiScaleRoIAlign`` (Lin et al., "Feature
    Pyramid Networks for Object Detection", CVPR 2017, https://arxiv.org/abs/1612.03144): box ``k``
    is pooled from level ``l = map_levels(...)[k]`` at that level's scale (``infer_scales``)::

        out[k] = roi_align(features[l], rois[k], output_size, spatial_scale=scales[l],
                           sampling_ratio=sampling_ratio, aligned=False)

    Args:
        features: list of ``(N, C, H_l, W_l)`` arrays, finest level first, each half the size of the
            one before.
        rois: ``(K, 5)`` boxes ``[batch_index, x1, y1, x2, y2]`` in image coordinates.
        image_shapes: ``(height, width)`` of each image before batching (their largest height sets
            the scales).
        output_size, sampling_ratio: as ``roi_align``.
        canonical_scale, canonical_level: the box size that maps to ``canonical_level`` (torchvision's
            224 and 4).

    Returns:
        ``(K, C, PH, PW)`` array.
    """
    features, rois, scales, levels = _levels(features, rois, image_shapes, canonical_scale, canonical_level)
    pooled_h, pooled_w = _checks.pair(output_size, "output_size")
    xp = _backend.array_module(rois)
    output = xp.zeros((rois.shape[0], features[0].shape[1], pooled_h, pooled_w), features[0].dtype)
    for level, (feature, scale) in enumerate(zip(features, scales)):
        chosen = np.flatnonzero(levels == level)
        if chosen.size:
            chosen = xp.asarray(chosen)
            output[chosen] = roi_align(feature, rois[chosen], (pooled_h, pooled_w), scale, sampling_ratio)
    return output


def multi_scale_roi_align_backward(grad_output, features_shapes, rois, image_shapes, sampling_ratio,
                                   canonical_scale=224, canonical_level=4):
    """Gradients of ``multi_scale_roi_align`` with respect to each level: a list of arrays of
    ``features_shapes`` (each level's ``(N, C, H, W)``)."""
    grad_output = _checks.features(grad_output, "grad_output")
    xp = _backend.array_module(grad_output)
    shapes = [_checks.input_shape(shape) for shape in features_shapes]
    if not shapes:
        raise ValueError("features_shapes must hold at least one level, got none")
    # (an empty array of the batch, the dtype and the device, for the checks)
    rois = _checks.rois(rois, xp.zeros((shapes[0][0], 0, 0, 0), grad_output.dtype),
                        features_name="grad_output")
    scales, k_min, k_max = infer_scales(shapes, image_shapes)
    levels = _backend.to_numpy(map_levels(rois, k_min, k_max, canonical_scale, canonical_level))
    grads = []
    for level, (shape, scale) in enumerate(zip(shapes, scales)):
        chosen = xp.asarray(np.flatnonzero(levels == level))
        grads.append(roi_align_backward(grad_output[chosen], rois[chosen], shape, scale, sampling_ratio))
    return grads

