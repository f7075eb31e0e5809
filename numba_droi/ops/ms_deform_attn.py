"""ms_deform_attn and its backward at the array level."""
import numpy as np

from .. import _backend
from ..kernels.ms_deform_attn import KERNELS
from . import _checks

__all__ = ["ms_deform_attn", "ms_deform_attn_backward"]

MAX_ROWS = 2 ** 30  # of the value and of a level's side: the kernels' row indices are int32


def _levels(spatial_shapes, level_start_index, value):
    """Checked ``(spatial_shapes, level_start_index)`` as int64 arrays of the value's kind: ``(L, 2)``
    non-negative ``(H_l, W_l)`` whose maps fill the value's ``S`` rows, and their start rows."""
    _backend.target_of(value, spatial_shapes, level_start_index,
                       names=("value", "spatial_shapes", "level_start_index"))
    shapes = _backend.to_numpy(_backend.as_array(spatial_shapes))
    starts = _backend.to_numpy(_backend.as_array(level_start_index))
    if shapes.dtype.kind not in "iu":
        raise TypeError(f"spatial_shapes must be an integer array of (H, W) per level, got {shapes.dtype}")
    if shapes.ndim != 2 or shapes.shape[1] != 2 or shapes.shape[0] < 1:
        raise ValueError(f"spatial_shapes must have shape (L, 2), (H, W) per level, got {shapes.shape}")
    if shapes.min() < 0:
        raise ValueError(f"spatial_shapes must be non-negative, got {shapes.tolist()}")
    sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1]
    if shapes.max(initial=0) > MAX_ROWS:
        raise ValueError(f"spatial_shapes {shapes.tolist()} must be at most 2**30 (the kernels index rows "
                         f"with 32-bit integers)")
    if sizes.sum() != value.shape[1]:
        raise ValueError(f"spatial_shapes {shapes.tolist()} give sum(H*W) = {sizes.sum()} rows, but "
                         f"value.shape[1] = {value.shape[1]}")
    if starts.dtype.kind not in "iu":
        raise TypeError(f"level_start_index must be an integer array, got {starts.dtype}")
    expected = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if starts.shape != expected.shape or not np.array_equal(starts, expected):
        raise ValueError(f"level_start_index must be the start rows of the levels, {expected.tolist()}, "
                         f"got {starts.tolist()}")
    xp = _backend.array_module(value)
    return tuple(_checks.contiguous(xp.asarray(levels), np.int64) for levels in (shapes, starts))


def _points(array, value, shape, name, layout):
    """``array`` (locations, weights) as a C-contiguous array of ``shape`` and the value's dtype."""
    _backend.target_of(value, array, names=("value", name))
    array = _backend.as_array(array)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array, got {array.dtype}")
    if array.ndim != len(shape) or tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {layout} = {tuple(shape)}, got {tuple(array.shape)}")
    return _checks.contiguous(array, value.dtype)


def _arguments(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    rows = _backend.as_array(value).shape[1:2]
    if rows and rows[0] > MAX_ROWS:  # before the value is copied
        raise ValueError(f"value.shape[1] = {rows[0]} must be at most 2**30 (the kernels index rows with "
                         f"32-bit integers)")
    value = _checks.features(value, "value", layout="(N, S, M, D)")
    spatial_shapes, level_start_index = _levels(spatial_shapes, level_start_index, value)
    _backend.target_of(value, attention_weights, names=("value", "attention_weights"))
    weights = _backend.as_array(attention_weights)
    if weights.ndim != 5:
        raise ValueError(f"attention_weights must have 5 dimensions (N, Lq, M, L, P), got shape "
                         f"{tuple(weights.shape)}")
    images, _, heads, _ = value.shape
    queries, points = weights.shape[1], weights.shape[4]
    levels = spatial_shapes.shape[0]
    attention_weights = _points(attention_weights, value, (images, queries, heads, levels, points),
                                "attention_weights", "(N, Lq, M, L, P)")
    sampling_locations = _points(sampling_locations, value, (images, queries, heads, levels, points, 2),
                                 "sampling_locations", "(N, Lq, M, L, P, 2)")
    return value, spatial_shapes, level_start_index, sampling_locations, attention_weights


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Multi-scale deformable attention of Deformable DETR (Zhu et al., "Deformable DETR: Deformable
    Transformers for End-to-End Object Detection", 2020, https://arxiv.org/abs/2010.04159), as its
    ``MSDeformAttnFunction`` (less the ``im2col_step``).

    ``value`` holds ``L`` levels' maps flattened row-major and concatenated: level ``l`` of
    ``spatial_shapes[l] = (H_l, W_l)`` is rows ``level_start_index[l] ..`` of ``value``. Each query
    ``q`` of head ``m`` samples ``P`` points per level at normalised locations ``(x, y) =
    sampling_locations[n, q, m, l, p]`` (0 to 1 spans the map; values outside are allowed) with rule
    B2 of docs/operators.md, zero outside the map (``grid_sample(mode="bilinear",
    padding_mode="zeros", align_corners=False)``)::

        out[n, q, m*D + d] = sum_{l < L, p < P} attention_weights[n, q, m, l, p]
                             * B2(value_l[n, :, :, m, d], y * H_l - 0.5, x * W_l - 0.5)

    The weights are not constrained to sum to 1 (the module's softmax is outside the operator). A
    NaN or infinite location samples nothing (0).

    Args:
        value: ``(N, S, M, D)`` float32 or float64, NumPy or CuPy; ``S = sum_l H_l * W_l``.
        spatial_shapes: ``(L, 2)`` integer ``(H_l, W_l)`` per level.
        level_start_index: ``(L,)`` integer start row of each level: ``[0, H_0*W_0, ...]``.
        sampling_locations: ``(N, Lq, M, L, P, 2)``, ``(x, y)`` last; cast to the value's dtype.
        attention_weights: ``(N, Lq, M, L, P)``; cast to the value's dtype.

    Returns:
        ``(N, Lq, M*D)`` array of the value's kind and dtype.
    """
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = _arguments(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    output = sample(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, True)
    return output.reshape(output.shape[0], output.shape[1], output.shape[2] * output.shape[3])


def sample(value, spatial_shapes, level_start_index, locations, weights, normalised):
    """The forward on checked arguments, ``(N, Lq, M, D)``; the locations are in pixels (the map's
    ``(x, y)``) unless ``normalised``. (dcnv3 and dcnv4 are its one-level cases.)"""
    images, _, heads, channels = value.shape
    queries = weights.shape[1]
    target = _backend.target_of(value)
    output = _backend.array_module(value).zeros((images, queries, heads, channels), value.dtype)
    if value.size and output.size:
        _backend.run(target, KERNELS["forward"][target], output.size, value, spatial_shapes,
                     level_start_index, locations, weights, normalised, output)
    return output


def ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights, *, wanted=None):
    """Gradients of ``ms_deform_attn`` with respect to ``value``, ``sampling_locations`` and
    ``attention_weights``, the true derivatives of its forward: the location gradient is
    ``weight * (W_l, H_l) *`` the derivative of rule B2, 0 for a sample outside its support.

    Args:
        grad_output: ``(N, Lq, M*D)`` gradient of the output.
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights: as given to
            the forward.
        wanted: the gradients to compute, some of ``("value", "sampling_locations",
            "attention_weights")``; None for all.

    Returns:
        ``(grad_value, grad_sampling_locations, grad_attention_weights)``; a gradient not wanted is
        None.
    """
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = _arguments(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    wanted = _checks.wanted(wanted, ("value", "sampling_locations", "attention_weights"))
    images, _, heads, channels = value.shape
    queries = attention_weights.shape[1]
    grad_output = _checks.features(grad_output, "grad_output", ndim=3, layout="(N, Lq, M*D)")
    _backend.target_of(value, grad_output, names=("value", "grad_output"))
    _checks.same_shape(grad_output, (images, queries, heads * channels), "grad_output")
    grad_output = grad_output.astype(value.dtype, copy=False).reshape(images, queries, heads, channels)
    return sample_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                           attention_weights, True, wanted)


def sample_backward(grad_output, value, spatial_shapes, level_start_index, locations, weights, normalised,
                    wanted):
    """The backward of ``sample`` on checked arguments (``grad_output`` ``(N, Lq, M, D)``, ``wanted``
    a set of names): ``(grad_value, grad_locations, grad_weights)``, None where not wanted."""
    images, _, heads, channels = value.shape
    target = _backend.target_of(value)
    xp = _backend.array_module(value)
    grad_value = xp.zeros_like(value) if "value" in wanted else None
    want_points = bool(wanted & {"sampling_locations", "attention_weights"})
    # the location and weight kernels write every element
    grad_locations = xp.empty_like(locations) if want_points else None
    grad_weights = xp.empty_like(weights) if want_points else None
    if value.size and grad_output.size:
        if grad_value is not None and want_points and target in KERNELS["backward_all"]:
            _backend.run(target, KERNELS["backward_all"][target], grad_weights.size, value, grad_output,
                         spatial_shapes, level_start_index, locations, weights, normalised, grad_value,
                         grad_locations, grad_weights)
            return _wanted(wanted, grad_value, grad_locations, grad_weights)
        if grad_value is not None:
            kernel, size = _backend.scatter_kernel(KERNELS["backward"], target, grad_output.size,
                                                   images * heads * channels)
            _backend.run(target, kernel, size, grad_output, spatial_shapes, level_start_index, locations,
                         weights, normalised, grad_value)
        if want_points:
            _backend.run(target, KERNELS["location_weight_grad"][target], grad_weights.size, value,
                         grad_output, spatial_shapes, level_start_index, locations, weights, normalised,
                         grad_locations, grad_weights)
    elif want_points:
        grad_locations[...] = 0
        grad_weights[...] = 0
    return _wanted(wanted, grad_value, grad_locations, grad_weights)


def _wanted(wanted, grad_value, grad_locations, grad_weights):
    return (grad_value, grad_locations if "sampling_locations" in wanted else None,
            grad_weights if "attention_weights" in wanted else None)
