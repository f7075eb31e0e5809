"""JAX adapter: our operators as differentiable JAX functions (``jax.custom_vjp``). Every operator of
``numba_droi.registry`` is here under its name, with the signature of ``numba_droi.torch``
(torchvision's, with ``boxes``, where torchvision has the operator; a ``(K, 5)`` array or a list of
``(L, 4)`` arrays, one per image); also mmcv's ``modulated_deform_conv2d`` and mmdet v1's
``deform_roi_pooling``. Import it explicitly (``import numba_droi.jax``): it needs jax.

Each forward and backward runs our operator as a ``jax.pure_callback`` on the host: inside ``jax.jit``,
``jax.grad`` and ``jax.vmap`` (one call per batch element) alike. The callback gets host copies of its
operands from XLA (one memory copy each, on the CPU too) and returns NumPy arrays. Arrays that are
concrete (not traced) and live on a GPU go to our cuda target through DLPack instead, without copies
(on CuPy's current stream, which is not JAX's: DLPack's stream handshake orders them); under ``jit``
on a GPU the callback path copies to the host and back.

``float64`` needs ``jax.config.update("jax_enable_x64", True)``. The boxes of ``roi_align``,
``deform_roi_pool`` and ``prroi_pool`` get the derivative of the output in their corners; those of the
other operators get zeros. A backward computes only the gradients of the arrays being differentiated.
"""
import inspect
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _backend, ops, registry


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


def _operator(operator):
    """The differentiable JAX function ``apply(options, *arrays)`` of ``operator``: ``options`` a
    hashable tuple of ``(name, value)`` pairs, ``arrays`` the operator's arrays in order (None for one
    left out). The backward computes the gradients of the arrays that are differentiated (JAX's
    symbolic zeros tell which); the others, and the arrays without a gradient, get zeros."""
    @partial(jax.custom_vjp, nondiff_argnums=(0,))
    def apply(options, *arrays):
        given = [a for a in arrays if a is not None]
        shape = operator.output_shape(dict(zip(operator.arrays, (None if a is None else a.shape
                                                                 for a in arrays))), dict(options))
        return _run(lambda *values: operator.call(ops, _named(operator, arrays, values), dict(options)),
                    _like(given[0], shape), *given)

    def apply_forward(options, *primals):
        # (symbolic zeros: each array comes as its value and whether it is differentiated)
        arrays = tuple(None if p is None else p.value for p in primals)
        differentiated = {name: None for name, p in zip(operator.arrays, primals)
                          if p is not None and p.perturbed}
        return apply(options, *arrays), (arrays, differentiated)

    def apply_backward(options, residuals, grad_output):
        arrays, differentiated = residuals
        wanted = operator.wanted(dict(zip(operator.arrays, arrays)), differentiated)
        given = [a for a in arrays if a is not None]
        computed = {}
        if wanted and not isinstance(grad_output, jax.custom_derivatives.SymbolicZero):
            def gradients(grad, *values):
                grads = operator.vjp(ops, grad, _named(operator, arrays, values), dict(options), wanted)
                return tuple(grads[name] for name in wanted)

            results = tuple(_like(a, a.shape) for name, a in zip(operator.arrays, arrays) if name in wanted)
            computed = dict(zip(wanted, _run(gradients, results, grad_output, *given)))
        return tuple(computed[name] if name in computed else None if a is None else _zero_cotangent(a)
                     for name, a in zip(operator.arrays, arrays))

    apply.defvjp(apply_forward, apply_backward, symbolic_zeros=True)
    return apply


def _zero_cotangent(array):
    """The cotangent of an array that gets no gradient: zeros (JAX's float0 for an integer array)."""
    if jnp.issubdtype(array.dtype, jnp.floating):
        return jnp.zeros_like(array)
    return np.zeros(array.shape, jax.dtypes.float0)


def _named(operator, arrays, values):
    """The operator's arrays by name: ``values`` in the places of the arrays given (not None)."""
    values = iter(values)
    return {name: None if a is None else next(values) for name, a in zip(operator.arrays, arrays)}


def _rois(boxes, columns=5):
    """torchvision's boxes: a ``(K, 5)`` array, or a list of ``(L_i, 4)`` arrays, one per image (rotated
    boxes: ``columns = 6``, lists of ``(L_i, 5)``)."""
    if not isinstance(boxes, (list, tuple)):
        if boxes.ndim != 2 or boxes.shape[1] != columns:
            raise ValueError(f"boxes must be a (K, {columns}) array or a list of (L, {columns - 1}) arrays, "
                             f"got shape {tuple(boxes.shape)}")
        return boxes
    if not boxes or not all(jnp.ndim(b) == 2 and jnp.shape(b)[1] == columns - 1 for b in boxes):
        raise ValueError(f"boxes must be a (K, {columns}) array or a non-empty list of (L, {columns - 1}) "
                         f"arrays, got a list of shapes {[jnp.shape(b) for b in boxes]}")
    boxes = [jnp.asarray(b) for b in boxes]
    return jnp.concatenate([jnp.concatenate([jnp.full((b.shape[0], 1), i, b.dtype), b], axis=1)
                            for i, b in enumerate(boxes)])


def _hashable(value):
    """Lists (an output size given as a list) as tuples: JAX hashes the options."""
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def _function(operator):
    signature = inspect.signature(operator.forward)
    if "torchvision" in operator.peers:
        signature = signature.replace(parameters=[p.replace(name="boxes") if p.name == "rois" else p
                                                  for p in signature.parameters.values()])
    differentiable = _operator(operator)

    def apply(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if "boxes" in arguments:
            arguments["rois"] = arguments.pop("boxes")
        if "rois" in arguments:
            arguments["rois"] = _rois(arguments["rois"], operator.box_columns)
        options = tuple((name, _hashable(arguments[name])) for name in operator.options)
        return differentiable(options, *(arguments[name] for name in operator.arrays))

    apply.__name__ = apply.__qualname__ = operator.name
    apply.__module__ = __name__
    apply.__signature__ = signature
    apply.__doc__ = (f"``numba_droi.{operator.name}`` as a differentiable JAX function (in "
                     f"{', '.join(operator.differentiable)}).\n\n{operator.forward.__doc__ or ''}")
    return apply


FUNCTIONS = {operator.name: _function(operator) for operator in registry.OPERATORS}
globals().update(FUNCTIONS)
__all__ = list(FUNCTIONS) + ["deform_roi_pooling", "modulated_deform_conv2d", "multi_scale_roi_align"]


def deform_roi_pooling(data, rois, offset, spatial_scale, out_size, out_channels, no_trans, group_size=1,
                       part_size=None, sample_per_part=4, trans_std=0.0):
    """``numba_droi.deform_psroi_pool`` as a differentiable JAX function (in ``data`` and ``offset``),
    with mmdet v1's ``deform_roi_pooling`` signature (``offset`` ignored, and may be None, when
    ``no_trans``)."""
    return FUNCTIONS["deform_psroi_pool"](data, rois, None if no_trans else offset, spatial_scale,
                                          out_channels, group_size, out_size, part_size, sample_per_part,
                                          trans_std, bool(no_trans))


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
    return FUNCTIONS["deform_conv2d"](input, offset, weight, bias, stride, padding, dilation, mask)


def multi_scale_roi_align(features, rois, image_shapes, output_size, sampling_ratio, canonical_scale=224,
                          canonical_level=4):
    """``numba_droi.multi_scale_roi_align`` (torchvision's ``MultiScaleRoIAlign``) as a differentiable
    JAX function of the levels ``features`` (finest first); ``rois`` a ``(K, 5)`` array or a list of
    ``(L_i, 4)`` arrays. With static shapes under ``jax.jit``: every level pools every box and each box
    keeps its own level's result (``jnp.where``), so it costs one ``roi_align`` of all the boxes per
    level."""
    rois = _rois(rois)
    scales, k_min, k_max = ops.infer_scales([level.shape for level in features], image_shapes)
    level = ops.map_levels(rois, k_min, k_max, canonical_scale, canonical_level, xp=jnp)
    result = None
    for index, (feature, scale) in enumerate(zip(features, scales)):
        pooled = FUNCTIONS["roi_align"](feature, rois, output_size, scale, sampling_ratio)
        chosen = (level == index)[:, None, None, None]
        result = jnp.where(chosen, pooled, 0 if result is None else result)
    return result
