"""ps_roi_pool and ps_roi_align and their backwards at the array level."""
from .. import _backend
from ..kernels.ps_roi import KERNELS
from . import _checks

__all__ = ["ps_roi_pool", "ps_roi_pool_backward", "ps_roi_align", "ps_roi_align_backward"]


def _forward(name, input, rois, output_size, spatial_scale, *options):
    features = _checks.features(input)
    pooled_h, pooled_w = _checks.pair(output_size, "output_size")
    channels = _checks.position_sensitive_channels(features.shape[1], pooled_h, pooled_w)
    rois = _checks.rois(rois, features)
    spatial_scale = features.dtype.type(_checks.finite_real(spatial_scale, "spatial_scale"))
    target = _backend.target_of(features)
    xp = _backend.array_module(features)
    output = xp.zeros((rois.shape[0], channels, pooled_h, pooled_w), dtype=features.dtype)
    if features.size:
        _backend.run(target, KERNELS[name]["forward"][target], output.size,
                     features, rois, spatial_scale, *options, output)
    return output


def _backward(name, grad_output, rois, input_shape, spatial_scale, *options):
    grad_output = _checks.features(grad_output, "grad_output")
    input_shape = _checks.input_shape(input_shape)
    pooled_h, pooled_w = grad_output.shape[2:]
    channels = _checks.position_sensitive_channels(input_shape[1], pooled_h, pooled_w,
                                                   "input_shape[1]")
    xp = _backend.array_module(grad_output)
    grad_input = xp.zeros(input_shape, dtype=grad_output.dtype)
    rois = _checks.rois(rois, grad_input, features_name="grad_output")
    spatial_scale = grad_input.dtype.type(_checks.finite_real(spatial_scale, "spatial_scale"))
    _checks.same_shape(grad_output, (rois.shape[0], channels, pooled_h, pooled_w), "grad_output")
    target = _backend.target_of(grad_output)
    if grad_input.size:
        kernel, size = _backend.scatter_kernel(KERNELS[name]["backward"], target, grad_output.size,
                                               input_shape[0] * input_shape[1])
        _backend.run(target, kernel, size, grad_output, rois, spatial_scale, *options, grad_input)
    return grad_input


def ps_roi_pool(input, rois, output_size, spatial_scale=1.0):
    """Position-sensitive RoI average pooling of R-FCN (Dai et al., 2016,
    https://arxiv.org/abs/1605.06409), as torchvision.

    With ``C = C_out * PH * PW`` input channels, output channel ``c`` at bin ``(ph, pw)`` averages
    input channel ``(c*PH + ph)*PW + pw`` over the bin. Box corners are scaled and rounded half away
    from zero; ``roi_h = max(y2 - y1, 1)`` (no +1), ``bin_h = roi_h / PH``; bin ``ph`` covers rows
    ``y1 + floor(ph*bin_h) <= h < y1 + ceil((ph+1)*bin_h)`` clipped to ``[0, H]`` (same for
    columns)::

        out[k, c, ph, pw] = mean_{h, w in bin (ph, pw)} input[n, (c*PH + ph)*PW + pw, h, w]

    and 0 for an empty bin. Boxes with NaN or inf coordinates give 0.

    Differs from torchvision on purpose: torchvision's forward clips bins to ``[0, H-1]`` (so it
    never reads the last row or column of the map) while its backward clips to ``[0, H]``; we clip
    to ``[0, H]`` in both, so the backward is the gradient of the forward.

    Args:
        input: ``(N, C, H, W)`` float32 or float64 features, NumPy or CuPy; ``C`` a multiple of
            ``PH*PW`` (ValueError otherwise).
        rois: ``(K, 5)`` boxes ``[batch_index, x1, y1, x2, y2]`` in input-image coordinates.
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale: factor from image to feature-map coordinates.

    Returns:
        ``(K, C // (PH*PW), PH, PW)`` array of the input's kind and dtype.
    """
    return _forward("ps_roi_pool", input, rois, output_size, spatial_scale)


def ps_roi_pool_backward(grad_output, rois, input_shape, spatial_scale=1.0):
    """Gradient of ``ps_roi_pool`` with respect to its input.

    Args:
        grad_output: ``(K, C // (PH*PW), PH, PW)`` gradient of the output.
        rois, spatial_scale: as given to ``ps_roi_pool``.
        input_shape: ``(N, C, H, W)`` of the forward's input.

    Returns:
        ``grad_input`` of shape ``input_shape``.
    """
    return _backward("ps_roi_pool", grad_output, rois, input_shape, spatial_scale)


def ps_roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """Position-sensitive RoI Align (R-FCN's pooling, Dai et al. 2016,
    https://arxiv.org/abs/1605.06409, with the bilinear sampling of Mask R-CNN, He et al. 2017), as
    torchvision.

    Always aligned: box ``k`` is scaled by ``spatial_scale`` and shifted by -0.5, with no minimum
    size; ``bin = roi_size / pooled_size``, ``gh = sampling_ratio`` if positive else ``ceil(bin_h)``
    (same for w). Output channel ``c`` at bin ``(ph, pw)`` samples input channel
    ``ci = (c*PH + ph)*PW + pw`` (rule B1 of docs/operators.md)::

        out[k, c, ph, pw] = 1 / max(gh*gw, 1) * sum_{iy < gh, ix < gw} B1(input[n, ci],
                              y1 + (ph + (iy + 0.5) / gh) * bin_h, x1 + (pw + (ix + 0.5) / gw) * bin_w)

    Differs from torchvision on purpose: an empty sampling grid (a box of zero height or width in
    adaptive mode) gives 0, where torchvision divides by ``gh*gw = 0`` and returns NaN; the grid is
    capped at 256 samples per side as in ``roi_align`` (bins wider than 256 feature pixels). Boxes with
    NaN or inf coordinates give 0.

    Args:
        input: ``(N, C, H, W)`` float32 or float64 features, NumPy or CuPy; ``C`` a multiple of
            ``PH*PW`` (ValueError otherwise).
        rois: ``(K, 5)`` boxes ``[batch_index, x1, y1, x2, y2]`` in input-image coordinates.
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale: factor from image to feature-map coordinates.
        sampling_ratio: samples per bin side, at most 256; ``<= 0`` for adaptive.

    Returns:
        ``(K, C // (PH*PW), PH, PW)`` array of the input's kind and dtype.
    """
    sampling_ratio = _checks.sampling_ratio(sampling_ratio)
    return _forward("ps_roi_align", input, rois, output_size, spatial_scale, sampling_ratio)


def ps_roi_align_backward(grad_output, rois, input_shape, spatial_scale=1.0, sampling_ratio=-1):
    """Gradient of ``ps_roi_align`` with respect to its input.

    Args:
        grad_output: ``(K, C // (PH*PW), PH, PW)`` gradient of the output.
        rois, spatial_scale, sampling_ratio: as given to ``ps_roi_align``.
        input_shape: ``(N, C, H, W)`` of the forward's input.

    Returns:
        ``grad_input`` of shape ``input_shape``.
    """
    sampling_ratio = _checks.sampling_ratio(sampling_ratio)
    return _backward("ps_roi_align", grad_output, rois, input_shape, spatial_scale, sampling_ratio)
