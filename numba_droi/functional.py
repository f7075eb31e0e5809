"""Differentiable operators: Tensor in, Tensor out, one ``Function`` each.

Every operator of ``numba_droi.registry`` is here under its name (``functional.roi_align``, ...), with
the signature of its array-level forward: its arrays may be Tensors, and those that require gradients
get them. ``FUNCTIONS[name]`` is the operator's ``Function`` (a subclass of ``OperatorFunction``).
"""
import inspect

import numpy as np

from . import _backend, ops, registry
from .autograd import Function, Tensor


class OperatorFunction(Function):
    """The ``Function`` of an operator of the registry (``operator``; one subclass per operator):
    ``apply`` takes the forward's arguments in order, ``backward`` computes only the gradients that
    ``needs_input_grad`` asks for."""

    operator = None

    @classmethod
    def forward(cls, ctx, *arguments):
        operator = cls.operator
        named = dict(zip(operator.parameters, arguments))
        arrays = {name: named[name] for name in operator.arrays}
        needs = dict(zip(named, ctx.needs_input_grad))
        ctx.options = {name: named[name] for name in operator.options}
        ctx.wanted = tuple(name for name in operator.wanted(arrays) if needs[name])
        output, ctx.saved = operator.forward_saving(ops, arrays, ctx.options, ctx.wanted)
        return output

    @classmethod
    def backward(cls, ctx, grad_output):
        grads = cls.operator.vjp(ops, grad_output, ctx.saved, ctx.options, ctx.wanted)
        return tuple(grads.get(name) for name in cls.operator.parameters)


def _differentiable(operator):
    """``(Function, function)`` of ``operator``: the function applies the Function to the forward's
    arguments (its first array made a Tensor)."""
    function_class = type(f"{_camel_case(operator.name)}Function", (OperatorFunction,),
                          {"operator": operator, "__module__": __name__})
    signature = inspect.signature(operator.forward)
    first = operator.arrays[0]

    def apply(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments, **{first: _tensor(bound.arguments[first])})
        return function_class.apply(*arguments.values())

    apply.__name__ = apply.__qualname__ = operator.name
    apply.__module__ = __name__
    apply.__signature__ = signature
    apply.__doc__ = (f"Differentiable ``numba_droi.{operator.name}`` (gradients with respect to "
                     f"{', '.join(operator.differentiable)}).\n\n{operator.forward.__doc__ or ''}")
    return function_class, apply


def _camel_case(name):
    return "".join(part.capitalize() for part in name.split("_"))


def _tensor(value):
    return value if isinstance(value, Tensor) else Tensor(value)


FUNCTIONS = {}
for _operator in registry.OPERATORS:
    FUNCTIONS[_operator.name], globals()[_operator.name] = _differentiable(_operator)


# -- the basics of a detection head: shapes, reductions, activations, linear layers, losses ---------
# Tensor arithmetic (+ - * / @, unary -) is on Tensor itself (numba_droi.autograd). These work on
# NumPy or CuPy arrays alike.

class Reshape(Function):
    @staticmethod
    def forward(ctx, input, shape):
        ctx.input_shape = input.shape
        return input.reshape(shape)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output.reshape(ctx.input_shape), None


def reshape(input, shape):
    """``input`` with a new ``shape`` (one entry may be -1), as ``numpy.reshape``."""
    return Reshape.apply(_tensor(input), tuple(shape) if np.iterable(shape) else (shape,))


def flatten(input, start_dim=0, end_dim=-1):
    """``input`` with axes ``start_dim..end_dim`` (inclusive) merged into one, as ``torch.flatten``."""
    input = _tensor(input)
    ndim = max(input.ndim, 1)
    start, end = (_axis(d, ndim, name) for d, name in ((start_dim, "start_dim"), (end_dim, "end_dim")))
    if start > end:
        raise ValueError(f"start_dim ({start_dim}) must not come after end_dim ({end_dim})")
    shape = input.shape or (1,)
    return reshape(input, shape[:start] + (-1,) + shape[end + 1:])


class Sum(Function):
    @staticmethod
    def forward(ctx, input, axes, keepdims):
        ctx.input_shape, ctx.axes, ctx.keepdims = input.shape, axes, keepdims
        return input.sum(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad_output):
        xp = _backend.array_module(grad_output)
        if not ctx.keepdims:
            grad_output = xp.expand_dims(grad_output, ctx.axes)
        return xp.broadcast_to(grad_output, ctx.input_shape).copy(), None, None


def sum(input, axis=None, keepdims=False):  # shadows the builtin in this module: use np.sum here
    """Sum over ``axis`` (an int, a tuple, or None for all axes), as ``numpy.sum``."""
    input = _tensor(input)
    return Sum.apply(input, _axes(axis, input.ndim), bool(keepdims))


def mean(input, axis=None, keepdims=False):
    """Mean over ``axis`` (an int, a tuple, or None for all axes), as ``numpy.mean``."""
    input = _tensor(input)
    axes = _axes(axis, input.ndim)
    count = int(np.prod([input.shape[a] for a in axes]))
    return Sum.apply(input, axes, bool(keepdims)) * (1.0 / count if count else float("nan"))


class ReLU(Function):
    @staticmethod
    def forward(ctx, input):
        ctx.positive = input > 0
        return _backend.array_module(input).maximum(input, 0)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.positive


def relu(input):
    """``max(input, 0)``; the gradient at 0 is 0, as in PyTorch."""
    return ReLU.apply(_tensor(input))


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, input):
        xp = _backend.array_module(input)
        decay = xp.exp(-xp.abs(input))  # exp of a non-positive number: never overflows
        output = xp.where(input >= 0, 1 / (1 + decay), decay / (1 + decay))
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return grad_output * output * (1 - output)


def sigmoid(input):
    """``1 / (1 + exp(-input))``, computed without overflow for large ``|input|``."""
    return Sigmoid.apply(_tensor(input))


class Softmax(Function):
    @staticmethod
    def forward(ctx, input, axis):
        xp = _backend.array_module(input)
        exponentials = xp.exp(input - input.max(axis=axis, keepdims=True))  # never overflows
        output = exponentials / exponentials.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(output)
        ctx.axis = axis
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return output * (grad_output - (grad_output * output).sum(axis=ctx.axis, keepdims=True)), None


def softmax(input, axis=-1):
    """``exp(input) / sum(exp(input))`` along ``axis``, computed after subtracting the maximum (stable
    for large inputs), as ``torch.softmax``."""
    input = _tensor(input)
    return Softmax.apply(input, _axis(axis, input.ndim))


class GELU(Function):
    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        ctx.cdf = 0.5 * (1 + _backend.erf(input * (1 / np.sqrt(2))))
        return (input * ctx.cdf).astype(input.dtype, copy=False)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        xp = _backend.array_module(input)
        density = xp.exp(-0.5 * input * input) * (1 / np.sqrt(2 * np.pi))
        return (grad_output * (ctx.cdf + input * density)).astype(input.dtype, copy=False)


def gelu(input):
    """``input * Phi(input)``, ``Phi`` the standard normal distribution function (``(1 + erf(x /
    sqrt(2))) / 2``): the exact GELU (Hendrycks and Gimpel, 2016), as ``torch.nn.functional.gelu``."""
    return GELU.apply(_tensor(input))


class LayerNorm(Function):
    @staticmethod
    def forward(ctx, input, weight, bias, eps):
        centred = input - input.mean(axis=-1, keepdims=True)
        variance = (centred * centred).mean(axis=-1, keepdims=True)
        ctx.inverse_std = 1 / _backend.array_module(input).sqrt(variance + eps)
        ctx.normalised = centred * ctx.inverse_std
        ctx.save_for_backward(weight)
        return ctx.normalised * weight + bias

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        normalised = ctx.normalised
        grad_normalised = grad_output * weight
        projection = (grad_normalised * normalised).mean(axis=-1, keepdims=True)
        grad_input = ctx.inverse_std * (grad_normalised - grad_normalised.mean(axis=-1, keepdims=True)
                                        - normalised * projection)
        rows = grad_output.reshape(-1, grad_output.shape[-1])
        return (grad_input, (rows * normalised.reshape(rows.shape)).sum(axis=0), rows.sum(axis=0), None)


def layer_norm(input, weight, bias, eps=1e-5):
    """``(input - mean) / sqrt(var + eps) * weight + bias`` with the mean and the (biased) variance over
    the last axis (Ba et al., "Layer Normalization", 2016, https://arxiv.org/abs/1607.06450), as
    ``torch.nn.functional.layer_norm`` over the last axis; ``weight`` and ``bias`` of its length."""
    input, weight, bias = _tensor(input), _tensor(weight), _tensor(bias)
    if input.ndim < 1 or weight.shape != input.shape[-1:] or bias.shape != input.shape[-1:]:
        raise ValueError(f"weight and bias must have the shape of input's last axis, {input.shape[-1:]}, "
                         f"got {weight.shape} and {bias.shape}")
    return LayerNorm.apply(input, weight, bias, float(eps))


class Linear(Function):
    @staticmethod
    def forward(ctx, input, weight, bias):
        ctx.save_for_backward(input, weight)
        output = input @ weight.T
        return output if bias is None else output + bias

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad
        rows = grad_output.reshape(-1, weight.shape[0])
        grad_input = (grad_output @ weight) if needs_input else None
        grad_weight = (rows.T @ input.reshape(-1, weight.shape[1])) if needs_weight else None
        grad_bias = rows.sum(axis=0) if needs_bias else None
        return grad_input, grad_weight, grad_bias


def linear(input, weight, bias=None):
    """``input @ weight.T + bias``: ``input`` (..., in_features), ``weight`` (out_features,
    in_features), ``bias`` (out_features,) or None; as ``torch.nn.functional.linear``."""
    input, weight = _tensor(input), _tensor(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-d (out_features, in_features), got shape {weight.shape}")
    if input.ndim < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"input's last axis must have weight.shape[1] = {weight.shape[1]} elements, "
                         f"got input of shape {input.shape}")
    if bias is not None:
        bias = _tensor(bias)
        if bias.shape != weight.shape[:1]:
            raise ValueError(f"bias must have shape {weight.shape[:1]}, got {bias.shape}")
    return Linear.apply(input, weight, bias)


class SoftmaxCrossEntropy(Function):
    @staticmethod
    def forward(ctx, logits, labels, reduction):
        xp = _backend.array_module(logits)
        rows = xp.arange(logits.shape[0])
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_sum_exp = xp.log(xp.exp(shifted).sum(axis=1))
        ctx.softmax = xp.exp(shifted - log_sum_exp[:, None])
        ctx.rows, ctx.labels, ctx.reduction = rows, labels, reduction
        return _reduce(log_sum_exp - shifted[rows, labels], reduction)

    @staticmethod
    def backward(ctx, grad_output):
        grad = ctx.softmax.copy()
        grad[ctx.rows, ctx.labels] -= 1
        return grad * _reduced_grad(grad_output, ctx.reduction, len(grad))[..., None], None, None


def softmax_cross_entropy(logits, labels, reduction="mean"):
    """Cross-entropy of ``softmax(logits)`` against integer ``labels``: for each row ``i``,
    ``log(sum_c exp(logits[i, c])) - logits[i, labels[i]]``, computed with the log-sum-exp shift
    (stable for large logits). ``logits`` (N, C), ``labels`` (N,) integers in ``[0, C)`` (an array
    or Tensor, not differentiated); ``reduction`` "mean" (as ``torch.nn.functional.cross_entropy``),
    "sum" or "none"."""
    logits = _tensor(logits)
    labels = labels.data if isinstance(labels, Tensor) else labels
    labels = _backend.array_module(logits.data).asarray(labels)
    _check_reduction(reduction)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-d (N, C), got shape {logits.shape}")
    if labels.shape != logits.shape[:1] or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers of shape {logits.shape[:1]}, got {labels.dtype} "
                         f"of shape {tuple(labels.shape)}")
    outside = (labels < 0) | (labels >= logits.shape[1])
    if bool(outside.any()):
        row = int(outside.nonzero()[0][0])
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {int(labels[row])} at row {row}")
    return SoftmaxCrossEntropy.apply(logits, labels, reduction)


class SmoothL1Loss(Function):
    @staticmethod
    def forward(ctx, input, target, beta, reduction):
        xp = _backend.array_module(input)
        difference = input - target
        size = xp.abs(difference)
        if beta == 0:
            loss, ctx.slope = size, xp.sign(difference)
        else:
            quadratic = size < beta
            loss = xp.where(quadratic, 0.5 * difference * difference / beta, size - 0.5 * beta)
            ctx.slope = xp.where(quadratic, difference / beta, xp.sign(difference))
        ctx.reduction = reduction
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        return _elementwise_loss_grads(ctx, ctx.slope, grad_output)


def smooth_l1_loss(input, target, beta=1.0, reduction="mean"):
    """Smooth L1 (Huber-like) loss of Fast R-CNN, with PyTorch's ``beta``: elementwise
    ``0.5 * d**2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 * beta``, for ``d = input - target``
    (``beta = 0`` gives ``|d|``); reduced by ``reduction`` "mean", "sum" or "none". ``input`` and
    ``target`` have the same shape; both may be differentiated."""
    input, target = _tensor(input), _tensor(target)
    _check_reduction(reduction)
    _check_same_shape(input, target)
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    return SmoothL1Loss.apply(input, target, float(beta), reduction)


class MSELoss(Function):
    @staticmethod
    def forward(ctx, input, target, reduction):
        difference = input - target
        ctx.slope, ctx.reduction = 2 * difference, reduction
        return _reduce(difference * difference, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        return _elementwise_loss_grads(ctx, ctx.slope, grad_output)


def mse_loss(input, target, reduction="mean"):
    """Mean squared error ``(input - target)**2``, reduced by ``reduction`` "mean", "sum" or "none".
    ``input`` and ``target`` have the same shape; both may be differentiated."""
    input, target = _tensor(input), _tensor(target)
    _check_reduction(reduction)
    _check_same_shape(input, target)
    return MSELoss.apply(input, target, reduction)


def _elementwise_loss_grads(ctx, slope, grad_output):
    """Gradients (input, target, then None for the options) of a reduced elementwise loss of
    ``input - target`` whose elementwise derivative is ``slope``."""
    grad = slope * _reduced_grad(grad_output, ctx.reduction, slope.size)
    needs_input, needs_target = ctx.needs_input_grad[:2]
    return (grad if needs_input else None), (-grad if needs_target else None), None, None


REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(loss, reduction):
    return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()


def _reduced_grad(grad_output, reduction, count):
    """The gradient of ``_reduce`` for each element of the unreduced loss (broadcastable to it)."""
    return grad_output / count if reduction == "mean" else grad_output


def _check_same_shape(input, target):
    if input.shape != target.shape:
        raise ValueError(f"target must have the shape of input {input.shape}, got {target.shape}")


def _axis(axis, ndim, name="axis"):
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} must lie in [{-ndim}, {ndim}), got {axis}")
    return axis % ndim


def _axes(axis, ndim):
    """``axis`` (None, an int or a tuple) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = tuple(_axis(a, ndim) for a in (axis if np.iterable(axis) else (axis,)))
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis must not repeat an axis, got {axis}")
    return tuple(sorted(axes))


# -- convolution and channel splits -------------------------------------------------------------------

def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-d convolution (a cross-correlation), as ``torch.nn.functional.conv2d``::

        out[n, o, oy, ox] = bias[o] + sum_{c < C_in/groups, i < kh, j < kw} weight[o, c, i, j]
            * input_zero_padded[n, g*C_in/groups + c, oy*stride_h + i*dil_h, ox*stride_w + j*dil_w]

    with ``g = o // (C_out/groups)``. ``input`` (N, C_in, H, W), ``weight`` (C_out, C_in/groups, kh,
    kw), ``bias`` (C_out,) or None; ``stride``, ``padding``, ``dilation`` ints or ``(h, w)`` pairs.
    Computed by ``deform_conv2d`` without offsets (its im2col reads no offset array, then one grouped
    matrix product); gradients with respect to input, weight and bias."""
    input, weight = _tensor(input), _tensor(weight)
    if input.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"input and weight must be 4-d, got shapes {input.shape} and {weight.shape}")
    groups = ops._checks.integer(groups, "groups")
    if groups < 1 or weight.shape[1] * groups != input.shape[1]:
        raise ValueError(f"groups = {groups} must equal input.shape[1] // weight.shape[1] = "
                         f"{input.shape[1]} // {weight.shape[1]} (and divide it exactly)")
    if weight.shape[0] % groups:
        raise ValueError(f"weight.shape[0] = {weight.shape[0]} must be a multiple of groups = {groups}")
    return FUNCTIONS["deform_conv2d"].apply(input, None, weight, bias, stride, padding, dilation, None)


class Permute(Function):
    @staticmethod
    def forward(ctx, input, axes):
        ctx.inverse = tuple(int(a) for a in np.argsort(axes))
        return _backend.array_module(input).ascontiguousarray(input.transpose(axes))

    @staticmethod
    def backward(ctx, grad_output):
        return _backend.array_module(grad_output).ascontiguousarray(grad_output.transpose(ctx.inverse)), None


def permute(input, axes):
    """``input`` with its axes in the order ``axes`` (a permutation), as ``torch.permute`` (a copy)."""
    input = _tensor(input)
    axes = tuple(_axis(ops._checks.integer(a, "axes"), input.ndim) for a in axes)
    if sorted(axes) != list(range(input.ndim)):
        raise ValueError(f"axes must be a permutation of the {input.ndim} axes, got {axes}")
    return Permute.apply(input, axes)


class Narrow(Function):
    @staticmethod
    def forward(ctx, input, axis, start, length):
        ctx.input_shape, ctx.index = input.shape, (slice(None),) * axis + (slice(start, start + length),)
        return input[ctx.index]

    @staticmethod
    def backward(ctx, grad_output):
        grad_input = _backend.array_module(grad_output).zeros(ctx.input_shape, grad_output.dtype)
        grad_input[ctx.index] = grad_output
        return grad_input, None, None, None


def narrow(input, axis, start, length):
    """``input[..., start:start + length, ...]`` along ``axis``, as ``torch.narrow`` (a copy)."""
    input = _tensor(input)
    axis = _axis(ops._checks.integer(axis, "axis"), input.ndim)
    start, length = ops._checks.integer(start, "start"), ops._checks.integer(length, "length")
    if start < 0 or length < 0 or start + length > input.shape[axis]:
        raise ValueError(f"start = {start} and length = {length} must lie within the "
                         f"{input.shape[axis]} elements of axis {axis}")
    return Narrow.apply(input, axis, start, length)


def split(input, sizes, axis=0):
    """``input`` cut along ``axis`` into consecutive pieces of the given ``sizes`` (which must add up
    to ``input.shape[axis]``), as ``torch.split`` with a list; each piece is differentiable."""
    input = _tensor(input)
    sizes = [ops._checks.integer(size, "sizes") for size in sizes]
    axis_length = input.shape[_axis(ops._checks.integer(axis, "axis"), input.ndim)]
    if any(size < 0 for size in sizes) or np.sum(sizes) != axis_length:
        raise ValueError(f"sizes {sizes} must be non-negative and add up to {axis_length}, the length "
                         f"of axis {axis}")
    starts = np.cumsum([0] + sizes[:-1])
    return tuple(narrow(input, axis, int(start), size) for start, size in zip(starts, sizes))


# -- multi-scale RoI Align: roi_align on the pyramid level of each box ----------------------------------

class MultiScaleRoIAlign(Function):
    @staticmethod
    def forward(ctx, rois, image_shapes, output_size, sampling_ratio, canonical_scale, canonical_level,
                *features):
        ctx.arguments = (rois, image_shapes, sampling_ratio, canonical_scale, canonical_level)
        ctx.shapes = [level.shape for level in features]
        return ops.multi_scale_roi_align(list(features), rois, image_shapes, output_size, sampling_ratio,
                                         canonical_scale, canonical_level)

    @staticmethod
    def backward(ctx, grad_output):
        rois, image_shapes, sampling_ratio, canonical_scale, canonical_level = ctx.arguments
        grads = ops.multi_scale_roi_align_backward(grad_output, ctx.shapes, rois, image_shapes,
                                                   sampling_ratio, canonical_scale, canonical_level)
        wanted = ctx.needs_input_grad[6:]
        return (None,) * 6 + tuple(grad if needed else None for grad, needed in zip(grads, wanted))


def multi_scale_roi_align(features, rois, image_shapes, output_size, sampling_ratio, canonical_scale=224,
                          canonical_level=4):
    """Differentiable ``numba_droi.multi_scale_roi_align``, torchvision's ``MultiScaleRoIAlign`` (FPN,
    Lin et al., 2017, https://arxiv.org/abs/1612.03144), with gradients for every level of
    ``features`` (a list of Tensors or arrays, finest first)::

        out[k] = roi_align(features[l_k], rois[k], output_size, scales[l_k], sampling_ratio, aligned=False)
        l_k = clip(floor(canonical_level + log2(sqrt(area_k) / canonical_scale) + 1e-6), k_min, k_max) - k_min

    with the scales and ``k_min``, ``k_max`` inferred from the levels' heights and ``image_shapes``
    (``numba_droi.infer_scales``)."""
    if not isinstance(features, (list, tuple)):
        raise ValueError(f"features must be a non-empty list of (N, C, H, W) arrays, one per level, got "
                         f"{type(features).__name__}")
    rois = rois.data if isinstance(rois, Tensor) else rois
    return MultiScaleRoIAlign.apply(rois, image_shapes, output_size, sampling_ratio, canonical_scale,
                                    canonical_level, *(_tensor(level) for level in features))
