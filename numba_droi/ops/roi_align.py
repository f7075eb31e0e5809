"""roi_align and its backward at the array level."""
from .. import _backend
from ..kernels.roi_align import KERNELS
from . import _checks
from .deform_roi_pool import coordinate_gradients

__all__ = ["roi_align", "roi_align_backward", "roi_align_box_backward"]


def _arguments(features, rois, spatial_scale, sampling_ratio, aligned, features_name="input"):
    rois = _checks.rois(rois, features, features_name=features_name)
    spatial_scale = features.dtype.type(_checks.finite_real(spatial_scale, "spatial_scale"))
    sampling_ratio = _checks.sampling_ratio(sampling_ratio)
    return rois, spatial_scale, sampling_ratio, bool(aligned)


def roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """RoI Align of Mask R-CNN (He et al., 2017, https://arxiv.org/abs/1703.06870), as torchvision.

    For box ``k = [n, x1, y1, x2, y2]`` scaled by ``spatial_scale`` (and shifted by -0.5 when
    ``aligned``), bin ``(ph, pw)`` of an ``output_size = (PH, PW)`` grid averages ``gh * gw`` bilinear
    samples (rule B1 of docs/operators.md) at the centres of a regular grid inside the bin::

        out[k, c, ph, pw] = 1 / max(gh*gw, 1) * sum_{iy < gh, ix < gw} B1(input[n, c],
                              y1 + (ph + (iy + 0.5) / gh) * bin_h, x1 + (pw + (ix + 0.5) / gw) * bin_w)

    with ``bin = roi_size / pooled_size`` (the RoI size clamped to at least 1 unless ``aligned``) and
    ``gh = sampling_ratio`` if positive, else ``ceil(bin_h)`` (same for w).

    The adaptive grid is capped at ``MAX_SAMPLING_RATIO = 256`` samples per side, and an explicit
    ``sampling_ratio`` above 256 is a ValueError: an absurd finite box (1e30) then costs bounded time
    and memory. This differs from torchvision only for bins wider than 256 feature pixels.

    Args:
        input: ``(N, C, H, W)`` float32 or float64 features, NumPy or CuPy.
        rois: ``(K, 5)`` boxes ``[batch_index, x1, y1, x2, y2]`` in input-image coordinates; cast to
            the features' dtype. Boxes with NaN or inf coordinates give 0.
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale: factor from image to feature-map coordinates.
        sampling_ratio: samples per bin side, at most 256; ``<= 0`` for adaptive.
        aligned: shift the box by half a pixel (the corrected RoI Align of Detectron2).

    Returns:
        ``(K, C, PH, PW)`` array of the input's kind and dtype.
    """
    features = _checks.features(input)
    pooled_h, pooled_w = _checks.pair(output_size, "output_size")
    rois, spatial_scale, sampling_ratio, aligned = _arguments(
        features, rois, spatial_scale, sampling_ratio, aligned)
    target = _backend.target_of(features)
    xp = _backend.array_module(features)
    output = xp.zeros((rois.shape[0], features.shape[1], pooled_h, pooled_w), dtype=features.dtype)
    if features.size:
        _backend.run(target, KERNELS["forward"][target], output.size,
                     features, rois, spatial_scale, sampling_ratio, aligned, output)
    return output


def roi_align_backward(grad_output, rois, input_shape, spatial_scale=1.0, sampling_ratio=-1,
                       aligned=False):
    """Gradient of ``roi_align`` with respect to its input.

    Args:
        grad_output: ``(K, C, PH, PW)`` gradient of the output.
        rois, spatial_scale, sampling_ratio, aligned: as given to ``roi_align``.
        input_shape: ``(N, C, H, W)`` of the forward's input.

    Returns:
        ``grad_input`` of shape ``input_shape``: ``sum_k,ph,pw grad_output * d out / d input``.
    """
    grad_output = _checks.features(grad_output, "grad_output")
    input_shape = _checks.input_shape(input_shape)
    xp = _backend.array_module(grad_output)
    grad_input = xp.zeros(input_shape, dtype=grad_output.dtype)
    rois, spatial_scale, sampling_ratio, aligned = _arguments(
        grad_input, rois, spatial_scale, sampling_ratio, aligned, "grad_output")
    _checks.same_shape(grad_output, (rois.shape[0], input_shape[1]) + grad_output.shape[2:],
                       "grad_output")
    target = _backend.target_of(grad_output)
    if grad_input.size:
        kernel, size = _backend.scatter_kernel(KERNELS["backward"], target, grad_output.size,
                                               input_shape[0] * input_shape[1])
        _backend.run(target, kernel, size,
                     grad_output, rois, spatial_scale, sampling_ratio, aligned, grad_input)
    return grad_input


def roi_align_box_backward(grad_output, input, rois, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """Gradient of ``roi_align`` with respect to its boxes: the derivative of the forward in ``x1, y1,
    x2, y2`` (columns 1 to 4; the batch column gets 0).

    A sample's coordinate is affine in the box: ``y = y1*s - o + (y2 - y1)*s * u`` with ``u = (ph + (iy
    + 0.5)/gh) / PH`` (``o = 0.5`` when aligned), so the gradient is the sum over the samples of the
    derivative of rule B1 in the coordinate (0 where B1 clamps it) times ``s*(1 - u)`` for ``y1`` and
    ``s*u`` for ``y2``. Where the box is clamped to a size of 1 (not aligned), the samples follow ``y1``
    alone. The sampling grid counts as fixed: with ``sampling_ratio > 0`` this is the derivative of the
    forward wherever it has one (it has kinks where a sample crosses a pixel row or column, or the size
    crosses 1); with the adaptive grid, whose size ``ceil(bin)`` is piecewise constant in the box's
    size, the forward jumps where that size changes, and between the jumps this is its derivative.

    Args:
        grad_output: ``(K, C, PH, PW)`` gradient of the output.
        input, rois, spatial_scale, sampling_ratio, aligned: as given to ``roi_align``.

    Returns:
        ``grad_rois`` of shape ``(K, 5)``, in the input's dtype.
    """
    features = _checks.features(input)
    grad_output = _checks.features(grad_output, "grad_output")
    _backend.target_of(features, grad_output, names=("input", "grad_output"))
    rois, spatial_scale, sampling_ratio, aligned = _arguments(features, rois, spatial_scale, sampling_ratio,
                                                              aligned)
    _checks.same_shape(grad_output, (rois.shape[0], features.shape[1]) + grad_output.shape[2:], "grad_output")
    xp = _backend.array_module(features)
    bins = (rois.shape[0], 1) + grad_output.shape[2:]
    offset = xp.zeros((rois.shape[0], 2) + grad_output.shape[2:], dtype=features.dtype)
    return coordinate_gradients(features, _checks.contiguous(grad_output, features.dtype), rois, offset,
                                xp.ones(bins, dtype=features.dtype), spatial_scale, sampling_ratio,
                                features.dtype.type(0), aligned)[2]
