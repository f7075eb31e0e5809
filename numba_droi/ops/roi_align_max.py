"""roi_align_max and its backward at the array level.

The backward needs the forward's argmax (each bin's winning sample): ``roi_align_max_with_argmax``
returns it next to the output, ``roi_align_max_backward`` takes it; ``roi_align_max`` is the forward
alone.
"""
import numpy as np

from .. import _backend
from ..kernels.roi_align import MAX_SAMPLING_RATIO
from ..kernels.roi_align_max import KERNELS
from . import _checks
from .roi_align import _arguments

__all__ = ["roi_align_max", "roi_align_max_with_argmax", "roi_align_max_backward"]


def roi_align_max(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True):
    """Max-mode RoI Align, as mmcv's ``roi_align(..., pool_mode="max")``: RoI Align's samples (He et
    al., "Mask R-CNN", 2017, https://arxiv.org/abs/1703.06870) with their maximum instead of their
    mean::

        out[k, c, ph, pw] = max_{iy < gh, ix < gw} B1(input[n, c], y1 + (ph + (iy + 0.5) / gh) * bin_h,
                                                               x1 + (pw + (ix + 0.5) / gw) * bin_w)

    with the box geometry, bins and grid of ``roi_align`` (mmcv's defaults here: ``sampling_ratio=0``,
    adaptive, and ``aligned=True``). Samples outside the map are 0 and take part in the maximum. The
    gradient of a bin flows to the four corners of its first maximal sample (row-major order), with
    their bilinear weights. A bin without samples (the empty grid of a reversed or non-finite box)
    gives 0 and no gradient; mmcv gives ``-FLT_MAX`` there. NaN samples are skipped, as mmcv (a bin
of NaN samples only gives ``-inf``, mmcv ``-FLT_MAX``).

    Args:
        input: ``(N, C, H, W)`` float32 or float64 features, NumPy or CuPy.
        rois: ``(K, 5)`` boxes ``[batch_index, x1, y1, x2, y2]`` in input-image coordinates.
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale, sampling_ratio, aligned: as ``roi_align``.

    Returns:
        ``(K, C, PH, PW)`` array of the input's kind and dtype. ``roi_align_max_with_argmax`` also
        returns the argmax that ``roi_align_max_backward`` needs.
    """
    return _roi_align_max(input, rois, output_size, spatial_scale, sampling_ratio, aligned, False)[0]


def roi_align_max_with_argmax(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0,
                              aligned=True):
    """``roi_align_max`` and its argmax: ``(output, argmax)``, ``argmax`` an int32 array of the
    output's shape holding the index ``iy*gw + ix`` of each bin's winning sample (-1 for a bin without
    samples), for ``roi_align_max_backward``. (mmcv keeps the winner's two coordinates instead.)"""
    return _roi_align_max(input, rois, output_size, spatial_scale, sampling_ratio, aligned, True)


def _roi_align_max(input, rois, output_size, spatial_scale, sampling_ratio, aligned, with_argmax):
    features = _checks.features(input)
    pooled_h, pooled_w = _checks.pair(output_size, "output_size")
    arguments = _arguments(features, rois, spatial_scale, sampling_ratio, aligned)
    target = _backend.target_of(features)
    xp = _backend.array_module(features)
    shape = (arguments[0].shape[0], features.shape[1], pooled_h, pooled_w)
    if not features.size:
        return xp.zeros(shape, dtype=features.dtype), xp.full(shape, -1, dtype=np.int32)
    output = xp.empty(shape, dtype=features.dtype)  # the kernels write every element
    argmax = xp.empty(output.size if with_argmax else 0, dtype=np.int32)
    _backend.run(target, KERNELS["forward"][target], output.size, features, *arguments, output, argmax)
    return output, argmax.reshape(shape) if with_argmax else argmax


def roi_align_max_backward(grad_output, rois, argmax, input_shape, spatial_scale=1.0, sampling_ratio=0,
                           aligned=True):
    """Gradient of ``roi_align_max`` with respect to its input.

    Args:
        grad_output: ``(K, C, PH, PW)`` gradient of the output.
        rois, spatial_scale, sampling_ratio, aligned: as given to the forward.
        argmax: the argmax ``roi_align_max_with_argmax`` returned.
        input_shape: ``(N, C, H, W)`` of the forward's input.

    Returns:
        ``grad_input`` of shape ``input_shape``.
    """
    grad_output = _checks.features(grad_output, "grad_output")
    input_shape = _checks.input_shape(input_shape)
    xp = _backend.array_module(grad_output)
    grad_input = xp.zeros(input_shape, dtype=grad_output.dtype)
    arguments = _arguments(grad_input, rois, spatial_scale, sampling_ratio, aligned, "grad_output")
    _checks.same_shape(grad_output, (arguments[0].shape[0], input_shape[1]) + grad_output.shape[2:],
                       "grad_output")
    samples = MAX_SAMPLING_RATIO ** 2
    argmax = _checks.argmax(argmax, grad_output, samples, str(samples), "roi_align_max_with_argmax")
    target = _backend.target_of(grad_output)
    if grad_input.size:
        kernel, size = _backend.scatter_kernel(KERNELS["backward"], target, grad_output.size,
                                               input_shape[0] * input_shape[1])
        _backend.run(target, kernel, size, grad_output, *arguments, argmax, grad_input)
    return grad_input
