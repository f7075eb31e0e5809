"""roi_pool and its backward at the array level.

The backward needs the forward's argmax: ``roi_pool_with_argmax`` returns it next to the output,
``roi_pool_backward`` takes it; ``roi_pool`` is the forward alone.
"""
import numpy as np

from .. import _backend
from ..kernels.roi_pool import KERNELS
from . import _checks

__all__ = ["roi_pool", "roi_pool_with_argmax", "roi_pool_backward"]


def roi_pool(input, rois, output_size, spatial_scale=1.0):
    """RoI max pooling of Fast R-CNN (Girshick, 2015, https://arxiv.org/abs/1504.08083), as torchvision.

    Box ``k = [n, x1, y1, x2, y2]`` is scaled by ``spatial_scale`` and its corners rounded half away
    from zero; with ``roi_h = max(y2 - y1 + 1, 1)`` (the legacy +1) and ``bin_h = roi_h / PH``, bin
    ``ph`` covers rows ``y1 + floor(ph*bin_h) <= h < y1 + ceil((ph+1)*bin_h)`` clipped to ``[0, H]``
    (same for columns)::

        out[k, c, ph, pw] = max_{h, w in bin (ph, pw)} input[n, c, h, w]     (0 for an empty bin)

    Boxes with NaN or inf coordinates give 0. Where several elements share the maximum, the first in
    row-major order is the one whose gradient flows (as torchvision). torchvision starts each
    maximum at ``-FLT_MAX``; we start at the bin's first element, which differs for bins whose values
    are all ``<= -FLT_MAX`` and for a bin whose first element is NaN (which is then its maximum;
    torchvision skips NaNs).

    Args:
        input: ``(N, C, H, W)`` float32 or float64 features, NumPy or CuPy.
        rois: ``(K, 5)`` boxes ``[batch_index, x1, y1, x2, y2]`` in input-image coordinates; cast to
            the features' dtype.
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale: factor from image to feature-map coordinates.

    Returns:
        ``(K, C, PH, PW)`` array of the input's kind and dtype. ``roi_pool_with_argmax`` also
        returns the argmax that ``roi_pool_backward`` needs.
    """
    return _roi_pool(input, rois, output_size, spatial_scale, False)[0]


def roi_pool_with_argmax(input, rois, output_size, spatial_scale=1.0):
    """``roi_pool`` and its argmax: ``(output, argmax)``, ``argmax`` an int32 array of the output's
    shape holding the flat index ``h*W + w`` of each maximum in its feature plane (-1 for an empty
    bin), for ``roi_pool_backward``. (torchvision's argmax is int64; int32 halves the memory the
    forward writes and the backward reads, and holds any plane of fewer than 2**31 elements.)"""
    return _roi_pool(input, rois, output_size, spatial_scale, True)


def _roi_pool(input, rois, output_size, spatial_scale, with_argmax):
    # Without the argmax the kernels get an empty one and skip writing it.
    features = _checks.features(input)
    pooled_h, pooled_w = _checks.pair(output_size, "output_size")
    rois = _checks.rois(rois, features)
    spatial_scale = features.dtype.type(_checks.finite_real(spatial_scale, "spatial_scale"))
    target = _backend.target_of(features)
    xp = _backend.array_module(features)
    shape = (rois.shape[0], features.shape[1], pooled_h, pooled_w)
    if not features.size:
        return xp.zeros(shape, dtype=features.dtype), xp.full(shape, -1, dtype=np.int32)
    # The kernels write every element: no need to fill.
    output = xp.empty(shape, dtype=features.dtype)
    argmax = xp.empty(shape if with_argmax else (0, 0, 0, 0), dtype=np.int32)
    _backend.run(target, KERNELS["forward"][target], output.size,
                 features, rois, spatial_scale, output, argmax)
    return output, argmax


def roi_pool_backward(grad_output, rois, argmax, input_shape):
    """Gradient of ``roi_pool`` with respect to its input: each output's gradient added at its argmax.

    Args:
        grad_output: ``(K, C, PH, PW)`` gradient of the output.
        rois: as given to the forward (for the batch indices).
        argmax: the argmax ``roi_pool_with_argmax`` returned.
        input_shape: ``(N, C, H, W)`` of the forward's input.

    Returns:
        ``grad_input`` of shape ``input_shape``.
    """
    grad_output = _checks.features(grad_output, "grad_output")
    input_shape = _checks.input_shape(input_shape)
    xp = _backend.array_module(grad_output)
    grad_input = xp.zeros(input_shape, dtype=grad_output.dtype)
    rois = _checks.rois(rois, grad_input, features_name="grad_output")
    _checks.same_shape(grad_output, (rois.shape[0], input_shape[1]) + grad_output.shape[2:],
                       "grad_output")
    plane = input_shape[2] * input_shape[3]
    argmax = _checks.argmax(argmax, grad_output, plane, f"H*W) = [-1, {plane}", "roi_pool_with_argmax")
    target = _backend.target_of(grad_output)
    if grad_input.size:
        kernel, size = _backend.scatter_kernel(KERNELS["backward"], target, grad_output.size,
                                               input_shape[0] * input_shape[1])
        _backend.run(target, kernel, size, grad_output, rois, argmax, grad_input)
    return grad_input
