"""roi_align_rotated and its backward at the array level."""
import numpy as np

from .. import _backend
from ..kernels.roi_align_rotated import KERNELS
from . import _checks

__all__ = ["roi_align_rotated", "roi_align_rotated_backward"]


def _arguments(features, rois, spatial_scale, sampling_ratio, aligned, clockwise, features_name="input"):
    """The kernels' ``(rois, turns, spatial_scale, sampling_ratio, aligned)``: ``turns`` each box's
    ``(cos, sin)`` of its counter-clockwise angle."""
    rois = _checks.rois(rois, features, features_name=features_name, layout=_checks.ROTATED_BOXES)
    spatial_scale = features.dtype.type(_checks.finite_real(spatial_scale, "spatial_scale"))
    sampling_ratio = _checks.sampling_ratio(sampling_ratio)
    xp = _backend.array_module(rois)
    angle = -rois[:, 5] if clockwise else rois[:, 5]
    with np.errstate(invalid="ignore"):  # (inf angles: NaN turns, an empty grid)
        turns = xp.ascontiguousarray(xp.stack([xp.cos(angle), xp.sin(angle)], 1))
    return rois, turns, spatial_scale, sampling_ratio, bool(aligned)


def roi_align_rotated(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True,
                      clockwise=False):
    """Rotated RoI Align, as mmcv's ``roi_align_rotated`` (from Detectron2's ``ROIAlignRotated``; for
    rotated detection, e.g. Ding et al., "Learning RoI Transformer", CVPR 2019,
    https://arxiv.org/abs/1812.00155).

    Box ``k = [n, cx, cy, w, h, theta]`` (angle in radians, counter-clockwise in the image's
    coordinates, y pointing down; clockwise when ``clockwise``) is scaled by ``spatial_scale``, its
    centre shifted by -0.5 when ``aligned`` (its size clamped to at least 1 when not). RoI Align's
    sampling grid of the unrotated box centred at the origin, ``(yy, xx)`` with
    ``yy = -h/2 + (ph + (iy + 0.5) / gh) * bin_h``, is rotated about the centre::

        y = yy*cos(theta) - xx*sin(theta) + cy,    x = yy*sin(theta) + xx*cos(theta) + cx
        out[k, c, ph, pw] = 1 / max(gh*gw, 1) * sum_{iy < gh, ix < gw} B1(input[n, c], y, x)

    with ``bin = size / pooled_size`` and ``gh = sampling_ratio`` if positive, else ``ceil(bin_h)``
    (capped at 256, as ``roi_align``). At ``theta = 0`` this is ``roi_align(aligned=aligned)`` of the
    box ``[cx - w/2, cy - h/2, cx + w/2, cy + h/2]``; at ``theta = pi`` that output flipped in both
    axes. Boxes with NaN or inf coordinates or angles give 0.

    Args:
        input: ``(N, C, H, W)`` float32 or float64 features, NumPy or CuPy.
        rois: ``(K, 6)`` boxes ``[batch_index, cx, cy, w, h, angle]`` in input-image coordinates, the
            angle in radians; cast to the features' dtype.
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale: factor from image to feature-map coordinates.
        sampling_ratio: samples per bin side, at most 256; ``<= 0`` for adaptive.
        aligned: shift the centre by half a pixel (the default, as mmcv and Detectron2).
        clockwise: the angle turns clockwise.

    Returns:
        ``(K, C, PH, PW)`` array of the input's kind and dtype.
    """
    features = _checks.features(input)
    pooled_h, pooled_w = _checks.pair(output_size, "output_size")
    arguments = _arguments(features, rois, spatial_scale, sampling_ratio, aligned, clockwise)
    target = _backend.target_of(features)
    xp = _backend.array_module(features)
    output = xp.zeros((arguments[0].shape[0], features.shape[1], pooled_h, pooled_w), dtype=features.dtype)
    if features.size:
        _backend.run(target, KERNELS["forward"][target], output.size, features, *arguments, output)
    return output


def roi_align_rotated_backward(grad_output, rois, input_shape, spatial_scale=1.0, sampling_ratio=0,
                               aligned=True, clockwise=False):
    """Gradient of ``roi_align_rotated`` with respect to its input.

    Args:
        grad_output: ``(K, C, PH, PW)`` gradient of the output.
        rois, spatial_scale, sampling_ratio, aligned, clockwise: as given to ``roi_align_rotated``.
        input_shape: ``(N, C, H, W)`` of the forward's input.

    Returns:
        ``grad_input`` of shape ``input_shape``.
    """
    grad_output = _checks.features(grad_output, "grad_output")
    input_shape = _checks.input_shape(input_shape)
    xp = _backend.array_module(grad_output)
    grad_input = xp.zeros(input_shape, dtype=grad_output.dtype)
    arguments = _arguments(grad_input, rois, spatial_scale, sampling_ratio, aligned, clockwise,
                           "grad_output")
    _checks.same_shape(grad_output, (arguments[0].shape[0], input_shape[1]) + grad_output.shape[2:],
                       "grad_output")
    target = _backend.target_of(grad_output)
    if grad_input.size:
        kernel, size = _backend.scatter_kernel(KERNELS["backward"], target, grad_output.size,
                                               input_shape[0] * input_shape[1])
        _backend.run(target, kernel, size, grad_output, *arguments, grad_input)
    return grad_input
