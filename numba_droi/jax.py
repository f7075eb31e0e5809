"""JAX adapter: our operators as differentiable JAX functions (``jax.custom_vjp``), with the signatures
of ``numba_droi.torch`` (torchvision's ``roi_align``, ``roi_pool``, ``ps_roi_pool``, ``ps_roi_align``,
``deform_conv2d``; mmcv's ``deform_roi_pool`` and ``modulated_deform_conv2d``; mmdet v1's
``deform_roi_pooling``). Import it explicitly (``import numba_droi.jax``): it needs jax.

Each forward and backward runs our operator as a ``jax.pure_callback`` on the host: inside ``jax.jit``,
``jax.grad`` and ``jax.vmap`` (one call per batch element) alike. The callback gets host copies of its
operands from XLA (one memory copy each, on the CPU too) and returns NumPy arrays. Arrays that are
concrete (not traced) and live on a GPU go to our cuda target through DLPack instead, without copies
(on CuPy's current stream, which is not JAX's: DLPack's stream handshake orders them); under ``jit``
on a GPU the callback path copies to the host and back.

``float64`` needs ``jax.config.update("jax_enable_x64", True)``; the boxes never get a gradient
(their cotangent is zero).
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _backend, ops
from .ops import _checks
from .ops.deform_conv import _Geometry

__all__ = ["roi_align", "roi_pool", "ps_roi_pool", "ps_roi_align", "deform_roi_pool", "deform_roi_pooling",
           "deform_conv2d", "modulated_deform_conv2d"]


def _on_gpu(arrays):
    """True when every array is a concrete JAX array on a GPU (so DLPack can hand it over)."""
    arrays = [a for a in arrays if a is not None]
    return bool(arrays) and all(
        isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
        and all(device.platform == "gpu" for device in a.devices()) for a in arrays)


def _run(compute, results, *arrays):
    """``compute`` (arrays in, an array or a tuple of arrays out; None passes) on JAX ``arrays``:
    through DLPack on the GPU, else as a ``jax.pure_callback`` declaring ``results``
    (``jax.ShapeDtypeStruct``, or a tuple of them)."""
    if _on_gpu(arrays):
        outputs = compute(*(None if a is None else _backend.from_dlpack(a, gpu=True) for a in arrays))
        return jax.tree.map(jnp.from_dlpack, outputs)

    def on_host(*host_arrays):
        return compute(*(None if a is None else np.asarray(a) for a in host_arrays))

    return jax.pure_callback(on_host, results, *arrays, vmap_method="sequential")


def _like(array, shape):
    return jax.ShapeDtypeStruct(tuple(shape), array.dtype)


def _operator(forward, backward, output_shape, differentiable):
    """A differentiable JAX function ``apply(options, *arrays)`` of one of our operators.

    ``forward(options, *arrays)`` and ``backward(options, grad_output, *arrays)`` (a gradient, or None,
    per array) run on NumPy or CuPy arrays; ``output_shape(options, *arrays)`` gives the output's shape
    (its dtype is the first array's); ``differentiable`` says which arrays get a gradient (the others,
    the boxes, get zeros). ``options`` is a hashable tuple of the non-array arguments."""
    @partial(jax.custom_vjp, nondiff_argnums=(0,))
    def apply(options, *arrays):
        return _run(partial(forward, options), _like(arrays[0], output_shape(options, *arrays)), *arrays)

    def apply_forward(options, *arrays):
        return apply(options, *arrays), arrays

    def apply_backward(options, arrays, grad_output):
        wanted = [d and a is not None for a, d in zip(arrays, differentiable)]

        def gradients(*arguments):
            return tuple(g for g, w in zip(backward(options, *arguments), wanted) if w)

        computed = iter(_run(gradients, tuple(_like(a, a.shape) for a, w in zip(arrays, wanted) if w),
                             grad_output, *arrays))
        return tuple(next(computed) if w else None if a is None else jnp.zeros_like(a)
                     for a, w in zip(arrays, wanted))

    apply.defvjp(apply_forward, apply_backward)
    return apply


def _rois(boxes):
    """torchvision's boxes: a ``(K, 5)`` array, or a list of ``(L_i, 4)`` arrays, one per image."""
    if not isinstance(boxes, (list, tuple)):
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes must be a (K, 5) array or a list of (L, 4) arrays, got shape "
                             f"{tuple(boxes.shape)}")
        return boxes
    if not boxes or not all(jnp.ndim(b) == 2 and jnp.shape(b)[1] == 4 for b in boxes):
        raise ValueError(f"boxes must be a (K, 5) array or a non-empty list of (L, 4) arrays, got a list "
                         f"of shapes {[jnp.shape(b) for b in boxes]}")
    boxes = [jnp.asarray(b) for b in boxes]
    return jnp.concatenate([jnp.concatenate([jnp.full((b.shape[0], 1), i, b.dtype), b], axis=1)
                            for i, b in enumerate(boxes)])


def _pooled_shape(options, input, rois, *_):
    return (rois.shape[0], input.shape[1]) + options[0]


def _ps_shape(options, input, rois):
    pooled_h, pooled_w = options[0]
    return (rois.shape[0], _checks.position_sensitive_channels(input.shape[1], pooled_h, pooled_w),
            pooled_h, pooled_w)


_roi_align = _operator(
    lambda options, x, r: ops.roi_align(x, r, *options),
    lambda options, g, x, r: (ops.roi_align_backward(g, r, x.shape, *options[1:]), None),
    _pooled_shape, (True, False))


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """``numba_droi.roi_align`` as a differentiable JAX function (in ``input``), with
    ``torchvision.ops.roi_align``'s signature."""
    return _roi_align((_checks.pair(output_size, "output_size"), float(spatial_scale),
                       int(sampling_ratio), bool(aligned)), input, _rois(boxes))


def _roi_pool_backward(options, grad_output, input, rois):
    _, argmax = ops.roi_pool_with_argmax(input, rois, *options)  # recomputed: no int64 array in JAX
    return ops.roi_pool_backward(grad_output, rois, argmax, input.shape), None


_roi_pool = _operator(lambda options, x, r: ops.roi_pool(x, r, *options), _roi_pool_backward,
                      _pooled_shape, (True, False))


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """``numba_droi.roi_pool`` as a differentiable JAX function (in ``input``), with
    ``torchvision.ops.roi_pool``'s signature. The backward recomputes the forward's argmax."""
    return _roi_pool((_checks.pair(output_size, "output_size"), float(spatial_scale)), input,
                     _rois(boxes))


_ps_roi_pool = _operator(
    lambda options, x, r: ops.ps_roi_pool(x, r, *options),
    lambda options, g, x, r: (ops.ps_roi_pool_backward(g, r, x.shape, *options[1:]), None),
    _ps_shape, (True, False))


def ps_roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """``numba_droi.ps_roi_pool`` as a differentiable JAX function (in ``input``), with
    ``torchvision.ops.ps_roi_pool``'s signature."""
    return _ps_roi_pool((_checks.pair(output_size, "output_size"), float(spatial_scale)), input,
                        _rois(boxes))


_ps_roi_align = _operator(
    lambda options, x, r: ops.ps_roi_align(x, r, *options),
    lambda options, g, x, r: (ops.ps_roi_align_backward(g, r, x.shape, *options[1:]), None),
    _ps_shape, (True, False))


def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """``numba_droi.ps_roi_align`` as a differentiable JAX function (in ``input``), with
    ``torchvision.ops.ps_roi_align``'s signature."""
    return _ps_roi_align((_checks.pair(output_size, "output_size"), float(spatial_scale),
                          int(sampling_ratio)), input, _rois(boxes))


def _deform_roi_pool_backward(options, grad_output, input, rois, offset, mask):
    _, spatial_scale, sampling_ratio, gamma = options
    grad_input, grad_offset, grad_mask = ops.deform_roi_pool_backward(
        grad_output, input, rois, offset, spatial_scale, sampling_ratio, gamma, mask)
    return grad_input, None, grad_offset, grad_mask


_deform_roi_pool = _operator(
    lambda options, x, r, offset, mask: ops.deform_roi_pool(x, r, offset, *options, mask),
    _deform_roi_pool_backward, _pooled_shape, (True, False, True, True))


def deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1,
                    mask=None):
    """``numba_droi.deform_roi_pool`` as a differentiable JAX function (in input, offset and mask),
    with ``mmcv.ops.deform_roi_pool``'s signature plus our fused ``mask``; ``offset`` may be None."""
    return _deform_roi_pool((_checks.pair(output_size, "output_size"), float(spatial_scale),
                             int(sampling_ratio), float(gamma)), input, _rois(rois), offset, mask)


def _deform_psroi_pool_backward(options, grad_output, input, rois, trans):
    spatial_scale, _, group_size, _, part_size, sample_per_part, trans_std, no_trans = options
    grad_input, grad_trans = ops.deform_psroi_pool_backward(
        grad_output, input, rois, trans, spatial_scale, group_size, part_size, sample_per_part,
        trans_std, no_trans)
    return grad_input, None, grad_trans


_deform_psroi_pool = _operator(
    lambda options, x, r, trans: ops.deform_psroi_pool(x, r, trans, *options),
    _deform_psroi_pool_backward,
    lambda options, x, r, trans: (r.shape[0], options[1], options[3], options[3]), (True, False, True))


def deform_roi_pooling(data, rois, offset, spatial_scale, out_size, out_channels, no_trans, group_size=1,
                       part_size=None, sample_per_part=4, trans_std=0.0):
    """``numba_droi.deform_psroi_pool`` as a differentiable JAX function (in ``data`` and ``offset``),
    with mmdet v1's ``deform_roi_pooling`` signature (``offset`` ignored, and may be None, when
    ``no_trans``)."""
    return _deform_psroi_pool((float(spatial_scale), int(out_channels), int(group_size), int(out_size),
                               None if part_size is None else int(part_size), int(sample_per_part),
                               float(trans_std), bool(no_trans)),
                              data, _rois(rois), None if no_trans else offset)


def _deform_conv2d_backward(options, grad_output, input, offset, weight, bias, mask):
    grad_input, grad_offset, grad_weight, grad_bias, grad_mask = ops.deform_conv2d_backward(
        grad_output, input, offset, weight, *options, mask)
    return grad_input, grad_offset, grad_weight, grad_bias, grad_mask


_deform_conv2d = _operator(
    lambda options, x, offset, weight, bias, mask: ops.deform_conv2d(x, offset, weight, bias, *options,
                                                                    mask),
    _deform_conv2d_backward,
    lambda options, x, offset, weight, bias, mask: (x.shape[0], weight.shape[0]) + _Geometry(
        x.shape, weight.shape[2:], *options).output,
    (True, True, True, True, True))


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """``numba_droi.deform_conv2d`` as a differentiable JAX function (in input, offset, weight, bias
    and mask), with ``torchvision.ops.deform_conv2d``'s signature; ``offset`` may be None."""
    options = tuple(_checks.pair(value, name, minimum) for value, name, minimum in
                    ((stride, "stride", 1), (padding, "padding", 0), (dilation, "dilation", 1)))
    return _deform_conv2d(options, input, offset, weight, bias, mask)


def modulated_deform_conv2d(input, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1,
                            groups=1, deform_groups=1):
    """``deform_conv2d`` with mmcv's ``modulated_deform_conv2d`` signature; ``groups`` and
    ``deform_groups`` must agree with the shapes of ``weight`` and ``offset`` (ValueError)."""
    taps = weight.shape[2] * weight.shape[3]
    if weight.shape[1] * groups != input.shape[1]:
        raise ValueError(f"groups = {groups} does not match input channels {input.shape[1]} and weight "
                         f"of shape {tuple(weight.shape)}")
    if offset.shape[1] != 2 * deform_groups * taps:
        raise ValueError(f"deform_groups = {deform_groups} needs offset.shape[1] = "
                         f"{2 * deform_groups * taps}, got {offset.shape[1]}")
    return deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
