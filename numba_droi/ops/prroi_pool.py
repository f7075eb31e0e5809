"""prroi_pool and its backward at the array level."""
from .. import _backend
from ..kernels.prroi_pool import KERNELS
from . import _checks

__all__ = ["prroi_pool", "prroi_pool_backward"]


def prroi_pool(input, rois, output_size, spatial_scale=1.0):
    """Precise RoI Pooling (Jiang et al., "Acquisition of Localization Confidence for Accurate Object
    Detection", ECCV 2018, https://arxiv.org/abs/1807.11590), as mmcv's ``prroi_pool``: each bin's
    output is the exact integral of the bilinearly interpolated map over the bin, over the bin's
    area (no sampling)::

        f(y, x) = sum_{h, w} F[h, w] * max(0, 1 - |y - h|) * max(0, 1 - |x - w|)   (pixels outside: 0)
        out[k, c, ph, pw] = 1 / (bin_h * bin_w) * int_{y1 + ph*bin_h}^{y1 + (ph+1)*bin_h}
                                 int_{x1 + pw*bin_w}^{x1 + (pw+1)*bin_w} f(y, x) dx dy

    with the box ``[n, x1, y1, x2, y2]`` scaled by ``spatial_scale`` (no half-pixel shift), ``bin_h =
    max(y2 - y1, 0) / PH`` (same for w), computed in closed form cell by cell. A bin of area 0 (and a
    box with NaN or inf coordinates) gives 0. The output is differentiable in the input and in the box
    coordinates (``prroi_pool_backward``).

    Args:
        input: ``(N, C, H, W)`` float32 or float64 features, NumPy or CuPy.
        rois: ``(K, 5)`` boxes ``[batch_index, x1, y1, x2, y2]`` in input-image coordinates.
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale: factor from image to feature-map coordinates.

    Returns:
        ``(K, C, PH, PW)`` array of the input's kind and dtype.
    """
    features = _checks.features(input)
    pooled_h, pooled_w = _checks.pair(output_size, "output_size")
    rois = _checks.rois(rois, features)
    spatial_scale = features.dtype.type(_checks.finite_real(spatial_scale, "spatial_scale"))
    target = _backend.target_of(features)
    xp = _backend.array_module(features)
    output = xp.zeros((rois.shape[0], features.shape[1], pooled_h, pooled_w), dtype=features.dtype)
    if features.size:
        _backend.run(target, KERNELS["forward"][target], output.size, features, rois, spatial_scale, output)
    return output


def prroi_pool_backward(grad_output, input, rois, spatial_scale=1.0, *, wanted=None):
    """Gradients of ``prroi_pool`` with respect to its input and its boxes.

    The box gradient is the derivative of the forward in ``x1, y1, x2, y2`` (columns 1 to 4; the batch
    column gets 0): moving an edge of a bin changes its integral by the integral of the interpolant
    along that edge, and its area by the edge's length. Where a box has zero width or height (its bins
    have area 0) both are 0.

    Args:
        grad_output: ``(K, C, PH, PW)`` gradient of the output.
        input, rois, spatial_scale: as given to ``prroi_pool``.
        wanted: names among ``("input", "rois")`` to compute (None: both); the others are None.

    Returns:
        ``(grad_input, grad_rois)``, of the input's shape and ``(K, 5)``, in the input's dtype.
    """
    wanted = _checks.wanted(wanted, ("input", "rois"))
    features = _checks.features(input)
    grad_output = _checks.features(grad_output, "grad_output")
    _backend.target_of(features, grad_output, names=("input", "grad_output"))
    rois = _checks.rois(rois, features)
    _checks.same_shape(grad_output, (rois.shape[0], features.shape[1]) + grad_output.shape[2:], "grad_output")
    spatial_scale = features.dtype.type(_checks.finite_real(spatial_scale, "spatial_scale"))
    grad_output = _checks.contiguous(grad_output, features.dtype)
    target = _backend.target_of(features)
    xp = _backend.array_module(features)
    grad_input = grad_rois = None
    if "input" in wanted:
        grad_input = xp.zeros(features.shape, dtype=features.dtype)
        if grad_input.size:
            kernel, size = _backend.scatter_kernel(KERNELS["backward"], target, grad_output.size,
                                                   features.shape[0] * features.shape[1])
            _backend.run(target, kernel, size, grad_output, rois, spatial_scale, grad_input)
    if "rois" in wanted:
        grad_rois = xp.zeros(rois.shape, dtype=features.dtype)
        if features.size and grad_output.size:
            kernel, size = _backend.scatter_kernel(KERNELS["box_backward"], target, grad_output.size,
                                                   rois.shape[0])
            _backend.run(target, kernel, size, grad_output, features, rois, spatial_scale, grad_rois)
    return grad_input, grad_rois
