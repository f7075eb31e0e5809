"""deform_psroi_pool and its backward at the array level."""
import numbers

from .. import _backend
from ..kernels.deform_psroi_pool import KERNELS
from . import _checks

__all__ = ["deform_psroi_pool", "deform_psroi_pool_backward"]


def _positive(value, name):
    value = _checks.integer(value, name)
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def _arguments(features, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
               sample_per_part, trans_std, no_trans):
    """Checked arguments; ``trans`` as a placeholder when ``no_trans``."""
    output_dim = _positive(output_dim, "output_dim")
    group_size = _positive(group_size, "group_size")
    pooled_size = _positive(pooled_size, "pooled_size")
    part_size = pooled_size if part_size is None else _positive(part_size, "part_size")
    sample_per_part = _checks.sampling_ratio(_positive(sample_per_part, "sample_per_part"),
                                             "sample_per_part")
    if not isinstance(no_trans, (bool, numbers.Integral)):
        raise TypeError(f"no_trans must be a bool, got {no_trans!r}")
    if features.shape[1] != output_dim * group_size ** 2:
        raise ValueError(f"input.shape[1] = {features.shape[1]} must be output_dim * group_size**2 = "
                         f"{output_dim} * {group_size}**2 = {output_dim * group_size ** 2}")
    rois = _checks.rois(rois, features)
    dtype = features.dtype.type
    spatial_scale = dtype(_checks.finite_real(spatial_scale, "spatial_scale"))
    trans_std = dtype(_checks.finite_real(trans_std, "trans_std"))
    if no_trans:
        trans = _backend.array_module(features).zeros((1, 2, 1, 1), features.dtype)  # not read
    else:
        if trans is None:
            raise ValueError("trans must be given unless no_trans is True")
        _backend.target_of(features, trans, names=("input", "trans"))
        shape = tuple(_backend.as_array(trans).shape)
        classes = shape[1] // 2 if len(shape) == 4 else 0
        if len(shape) != 4 or shape[1] % 2 or classes == 0 or output_dim % classes:
            raise ValueError(f"trans.shape[1] must be 2 * num_classes with num_classes dividing "
                             f"output_dim = {output_dim}, got trans of shape {shape}")
        trans = _checks.per_bin(trans, features, (rois.shape[0], shape[1], part_size, part_size),
                                "trans")
    return (rois, trans, spatial_scale, trans_std, group_size, part_size, sample_per_part,
            bool(no_trans), pooled_size, output_dim)


def deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size,
                      part_size=None, sample_per_part=1, trans_std=0.0, no_trans=False):
    """Deformable position-sensitive RoI pooling of Deformable ConvNets (Dai et al., 2017,
    https://arxiv.org/abs/1703.06211), as MXNet's ``DeformablePSROIPooling`` (and DCNv2's
    ``DCNv2Pooling``, mmdet v1's ``DeformRoIPooling``).

    Box ``k = [n, x1, y1, x2, y2]`` is rounded, its end pixel included, and scaled:
    ``x_start = round(x1) * s - 0.5``, ``roi_w = max((round(x2) + 1) * s - 0.5 - x_start, 0.1)`` (same
    for y); ``bin = roi / P``. Output channel ``c`` at bin ``(ph, pw)`` reads input channel
    ``(c * G + gh) * G + gw`` with ``gh = clamp(floor(ph * G / P), 0, G - 1)`` (``G = group_size``), and
    is moved by its class's part offset ``t = trans[k, 2*class, part_h, part_w]`` (x; y the next
    channel), ``class = c // (output_dim // num_classes)``, ``part_h = floor(ph / P * part_size)``::

        out[k, c, ph, pw] = mean over the samples (ih, iw) < sample_per_part that rule B3 takes of
            B3(input[n, channel], y_start + ph * bin_h + trans_std * t_y * roi_h + ih * bin_h / S,
                                  x_start + pw * bin_w + trans_std * t_x * roi_w + iw * bin_w / S)

    (samples at the sub-bin corners, ``S = sample_per_part``; B3 skips samples outside
    ``[-0.5, W-0.5] x [-0.5, H-0.5]`` and the mean is 0 without any). With ``no_trans`` there are no
    offsets and ``trans`` may be None: PS RoI pooling with sub-sampling.

    Differences from MXNet: batch indices, ``output_dim``, ``group_size`` and the shape of ``trans``
    are checked. Non-finite boxes or offsets, and offsets that move every sample out of the map, give
    0. The trans gradient is 0 along an axis where B3 clamps a sample into the map (the forward does
    not depend on it there), and at integer sample coordinates, as MXNet's.

    Args:
        input: ``(N, output_dim * group_size**2, H, W)`` float32 or float64 features, NumPy or CuPy.
        rois: ``(K, 5)`` boxes ``[batch_index, x1, y1, x2, y2]`` in input-image coordinates.
        trans: ``(K, 2 * num_classes, part_size, part_size)`` part offsets (x first), or None with
            ``no_trans``.
        spatial_scale: factor from image to feature-map coordinates.
        output_dim: output channels.
        group_size: position-sensitive groups per side.
        pooled_size: ``P``, bins per side.
        part_size: part cells per side of ``trans``; defaults to ``pooled_size``.
        sample_per_part: ``S``, samples per bin side, at most 256 (``MAX_SAMPLING_RATIO``).
        trans_std: scale of the offsets.
        no_trans: pool without offsets.

    Returns:
        ``(K, output_dim, P, P)`` array of the input's kind and dtype.
    """
    features = _checks.features(input)
    (rois, trans, spatial_scale, trans_std, group_size, part_size, sample_per_part, no_trans,
     pooled_size, output_dim) = _arguments(features, rois, trans, spatial_scale, output_dim, group_size,
                                           pooled_size, part_size, sample_per_part, trans_std, no_trans)
    target = _backend.target_of(features)
    xp = _backend.array_module(features)
    output = xp.zeros((rois.shape[0], output_dim, pooled_size, pooled_size), dtype=features.dtype)
    if features.size:
        _backend.run(target, KERNELS["forward"][target], output.size, features, rois, trans,
                     spatial_scale, trans_std, group_size, part_size, sample_per_part, no_trans, output)
    return output


def deform_psroi_pool_backward(grad_output, input, rois, trans, spatial_scale, group_size,
                               part_size=None, sample_per_part=1, trans_std=0.0, no_trans=False, *,
                               wanted=None):
    """Gradients of ``deform_psroi_pool`` with respect to its input and ``trans``.

    Args:
        grad_output: ``(K, output_dim, P, P)`` gradient of the output.
        input, rois, trans, spatial_scale, group_size, part_size, sample_per_part, trans_std,
            no_trans: as given to the forward (``output_dim`` and ``pooled_size`` are read from
            ``grad_output``).
        wanted: the gradients to compute, some of ``("input", "trans")``; None for both.

    Returns:
        ``(grad_input, grad_trans)``; a gradient not wanted is None, and so is ``grad_trans`` with
        ``no_trans``.
    """
    features = _checks.features(input)
    grad_output = _checks.features(grad_output, "grad_output")
    target = _backend.target_of(features, grad_output, names=("input", "grad_output"))
    output_dim, pooled_size = grad_output.shape[1], grad_output.shape[2]
    (rois, trans, spatial_scale, trans_std, group_size, part_size, sample_per_part, no_trans,
     pooled_size, output_dim) = _arguments(features, rois, trans, spatial_scale, output_dim, group_size,
                                           pooled_size, part_size, sample_per_part, trans_std, no_trans)
    _checks.same_shape(grad_output, (rois.shape[0], output_dim, pooled_size, pooled_size),
                       "grad_output")
    grad_output = grad_output.astype(features.dtype, copy=False)
    xp = _backend.array_module(features)
    wanted = _checks.wanted(wanted, ("input", "trans"))
    grad_input = xp.zeros(features.shape, dtype=features.dtype) if "input" in wanted else None
    # the trans gradient kernels write every element
    grad_trans = None if no_trans or "trans" not in wanted else xp.empty(trans.shape, dtype=features.dtype)
    if grad_input is not None and features.size:
        kernel, size = _backend.scatter_kernel(KERNELS["backward"], target, grad_output.size,
                                               features.shape[0] * output_dim)
        _backend.run(target, kernel, size, grad_output, rois, trans, spatial_scale, trans_std,
                     group_size, part_size, sample_per_part, no_trans, grad_input)
    if grad_trans is not None:
        if features.size:
            _backend.run(target, KERNELS["trans_grad"][target], grad_trans.size // 2, features,
                         grad_output, rois, trans, spatial_scale, trans_std, group_size, part_size,
                         sample_per_part, grad_trans)
        else:
            grad_trans[...] = 0
    return grad_input, grad_trans
