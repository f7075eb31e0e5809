"""deform_roi_pool and its backward at the array level."""
from .. import _backend
from ..kernels.deform_roi_pool import KERNELS
from . import _checks

__all__ = ["deform_roi_pool", "deform_roi_pool_backward", "deform_roi_pool_box_backward"]


def _arguments(features, rois, offset, mask, pooled_h, pooled_w, spatial_scale, sampling_ratio,
               gamma):
    """Checked arguments, with a missing offset as zeros and a missing mask as ones."""
    rois = _checks.rois(rois, features)
    xp = _backend.array_module(features)
    shape = (rois.shape[0], 2, pooled_h, pooled_w)
    offset = (xp.zeros(shape, features.dtype) if offset is None
              else _checks.per_bin(offset, features, shape, "offset"))
    shape = (rois.shape[0], 1, pooled_h, pooled_w)
    mask = (xp.ones(shape, features.dtype) if mask is None
            else _checks.per_bin(mask, features, shape, "mask"))
    dtype = features.dtype.type
    return (rois, offset, mask, dtype(_checks.finite_real(spatial_scale, "spatial_scale")),
            _checks.sampling_ratio(sampling_ratio), dtype(_checks.finite_real(gamma, "gamma")))


def deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1,
                    mask=None):
    """Deformable RoI pooling (Dai et al., Deformable Convolutional Networks, 2017,
    https://arxiv.org/abs/1703.06211) in its RoI-Align form, as mmcv's ``deform_roi_pool``, with the
    modulation of DCNv2 (Zhu et al., 2019, https://arxiv.org/abs/1811.11168) fused in.

    Box ``k = [n, x1, y1, x2, y2]`` is scaled by ``spatial_scale`` and shifted by -0.5 as in
    ``roi_align(aligned=True)``; ``bin = roi_size / (PH, PW)`` and the sampling grid ``gh x gw``
    (``sampling_ratio`` if positive, else ``ceil(bin)``) are fixed by the box. Bin ``(ph, pw)`` is then
    moved by the normalised offset ``(dx, dy) = gamma * offset[k, :, ph, pw] * (roi_w, roi_h)`` (x
    first) and averages ``gh * gw`` bilinear samples (rule B1 of docs/operators.md), times the bin's mask::

        out[k, c, ph, pw] = mask[k, 0, ph, pw] / max(gh*gw, 1) * sum_{iy < gh, ix < gw} B1(input[n, c],
            y1 + dy + (ph + (iy + 0.5) / gh) * bin_h, x1 + dx + (pw + (ix + 0.5) / gw) * bin_w)

    With ``offset=None`` and ``mask=None`` this is exactly ``roi_align(..., aligned=True)``.

    Differences from mmcv: the mask is applied inside the kernel (mmcv multiplies outside) and gets
    its gradient from it; the offset gradient is the derivative of this forward also where a sample
    lies in a border band of B1 (``[-1, 0)`` or ``[H-1, H]``), where mmcv's is not. Batch indices are
    checked. Non-finite offsets or boxes move the samples out of the map: their bins give 0; huge
    offsets do the same, by B1's range. The sampling grid is capped at 256 samples per side as in
    ``roi_align`` (mmcv has no bound).

    Args:
        input: ``(N, C, H, W)`` float32 or float64 features, NumPy or CuPy.
        rois: ``(K, 5)`` boxes ``[batch_index, x1, y1, x2, y2]`` in input-image coordinates.
        offset: ``(K, 2, PH, PW)`` normalised offsets, channel 0 for x and 1 for y, or None.
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale: factor from image to feature-map coordinates.
        sampling_ratio: samples per bin side, at most 256; ``<= 0`` for adaptive.
        gamma: scale of the offsets (the paper's 0.1).
        mask: ``(K, 1, PH, PW)`` modulation, or None.

    Returns:
        ``(K, C, PH, PW)`` array of the input's kind and dtype.
    """
    features = _checks.features(input)
    pooled_h, pooled_w = _checks.pair(output_size, "output_size")
    rois, offset, mask, spatial_scale, sampling_ratio, gamma = _arguments(
        features, rois, offset, mask, pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma)
    target = _backend.target_of(features)
    xp = _backend.array_module(features)
    output = xp.zeros((rois.shape[0], features.shape[1], pooled_h, pooled_w), dtype=features.dtype)
    if features.size:
        _backend.run(target, KERNELS["forward"][target], output.size, features, rois, offset, mask,
                     spatial_scale, sampling_ratio, gamma, output)
    return output


def deform_roi_pool_backward(grad_output, input, rois, offset, spatial_scale=1.0, sampling_ratio=0,
                             gamma=0.1, mask=None, *, wanted=None):
    """Gradients of ``deform_roi_pool`` with respect to its input, offset and mask.

    Args:
        grad_output: ``(K, C, PH, PW)`` gradient of the output.
        input, rois, offset, spatial_scale, sampling_ratio, gamma, mask: as given to the forward.
        wanted: the gradients to compute, some of ``("input", "offset", "mask")``; None for all.

    Returns:
        ``(grad_input, grad_offset, grad_mask)``; a gradient not wanted is None, and so are
        ``grad_offset`` when ``offset`` is None and ``grad_mask`` when ``mask`` is.
    """
    features = _checks.features(input)
    grad_output = _checks.features(grad_output, "grad_output")
    target = _backend.target_of(features, grad_output, names=("input", "grad_output"))
    pooled_h, pooled_w = grad_output.shape[2:]
    wanted = _checks.wanted(wanted, ("input", "offset", "mask"))
    want_input = "input" in wanted
    want_offset, want_mask = offset is not None and "offset" in wanted, mask is not None and "mask" in wanted
    rois, offset, mask, spatial_scale, sampling_ratio, gamma = _arguments(
        features, rois, offset, mask, pooled_h, pooled_w, spatial_scale, sampling_ratio, gamma)
    _checks.same_shape(grad_output, (rois.shape[0], features.shape[1], pooled_h, pooled_w),
                       "grad_output")
    grad_output = grad_output.astype(features.dtype, copy=False)
    xp = _backend.array_module(features)
    grad_input = xp.zeros(features.shape, dtype=features.dtype) if want_input else None
    grad_offset = grad_mask = None
    if features.size and want_input:
        kernel, size = _backend.scatter_kernel(KERNELS["backward"], target, grad_output.size,
                                               features.shape[0] * features.shape[1])
        _backend.run(target, kernel, size, grad_output, rois, offset, mask, spatial_scale,
                     sampling_ratio, gamma, grad_input)
    if want_offset or want_mask:
        grad_offset, grad_mask, _ = coordinate_gradients(features, grad_output, rois, offset, mask,
                                                         spatial_scale, sampling_ratio, gamma, True)
    return grad_input, grad_offset if want_offset else None, grad_mask if want_mask else None


def deform_roi_pool_box_backward(grad_output, input, rois, offset, spatial_scale=1.0, sampling_ratio=0,
                                 gamma=0.1, mask=None):
    """Gradient of ``deform_roi_pool`` with respect to its boxes: the derivative of the forward in
    ``x1, y1, x2, y2`` (columns 1 to 4; the batch column gets 0), through the samples' positions
    (their offsets, ``gamma * offset * roi_size``, included), as ``roi_align_box_backward`` says.

    Args:
        grad_output: ``(K, C, PH, PW)`` gradient of the output.
        input, rois, offset, spatial_scale, sampling_ratio, gamma, mask: as given to the forward.

    Returns:
        ``grad_rois`` of shape ``(K, 5)``, in the input's dtype.
    """
    features = _checks.features(input)
    grad_output = _checks.features(grad_output, "grad_output")
    _backend.target_of(features, grad_output, names=("input", "grad_output"))
    rois, offset, mask, spatial_scale, sampling_ratio, gamma = _arguments(
        features, rois, offset, mask, *grad_output.shape[2:], spatial_scale, sampling_ratio, gamma)
    _checks.same_shape(grad_output, (rois.shape[0], features.shape[1]) + grad_output.shape[2:], "grad_output")
    return coordinate_gradients(features, grad_output.astype(features.dtype, copy=False), rois, offset, mask,
                                spatial_scale, sampling_ratio, gamma, True)[2]


def coordinate_gradients(features, grad_output, rois, offset, mask, spatial_scale, sampling_ratio, gamma,
                         aligned):
    """``(grad_offset, grad_mask, grad_rois)`` of checked arguments, from the kernels' per-bin parts
    (for roi_align too: zero offsets, ``gamma = 0``, a mask of ones)."""
    xp = _backend.array_module(features)
    grad_offset = xp.zeros(offset.shape, dtype=features.dtype)
    grad_mask = xp.zeros(mask.shape, dtype=features.dtype)
    grad_box = xp.zeros((rois.shape[0], 4) + mask.shape[2:], dtype=features.dtype)
    grad_rois = xp.zeros(rois.shape, dtype=features.dtype)
    if features.size and grad_mask.size:
        target = _backend.target_of(features)
        _backend.run(target, KERNELS["coordinate_grad"][target], grad_mask.size, features, grad_output,
                     rois, offset, mask, spatial_scale, sampling_ratio, gamma, bool(aligned), grad_offset,
                     grad_mask, grad_box)
        grad_rois[:, 1:] = grad_box.sum(axis=(2, 3))
    return grad_offset, grad_mask, grad_rois
