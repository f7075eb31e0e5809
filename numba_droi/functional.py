"""Differentiable operators: Tensor in, Tensor out, one ``Function`` each."""
import numpy as np

from . import _backend, ops
from .autograd import Function, Tensor


class RoIAlign(Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.arguments = (tuple(input.shape), spatial_scale, sampling_ratio, aligned)
        return ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        input_shape, spatial_scale, sampling_ratio, aligned = ctx.arguments
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = ops.roi_align_backward(grad_output, rois, input_shape, spatial_scale,
                                                sampling_ratio, aligned)
        return grad_input, None, None, None, None, None


def roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """Differentiable ``numba_droi.roi_align`` (gradient with respect to ``input``)."""
    return RoIAlign.apply(_tensor(input), rois, output_size, spatial_scale, sampling_ratio, aligned)


roi_align.__doc__ += "\n" + ops.roi_align.__doc__


def _tensor(value):
    return value if isinstance(value, Tensor) else Tensor(value)


class RoIPool(Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale):
        if not ctx.needs_input_grad[0]:
            return ops.roi_pool(input, rois, output_size, spatial_scale)
        output, argmax = ops.roi_pool_with_argmax(input, rois, output_size, spatial_scale)
        ctx.save_for_backward(rois, argmax)
        ctx.input_shape = tuple(input.shape)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        rois, argmax = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = ops.roi_pool_backward(grad_output, rois, argmax, ctx.input_shape)
        return grad_input, None, None, None


def roi_pool(input, rois, output_size, spatial_scale=1.0):
    """Differentiable ``numba_droi.roi_pool`` (gradient with respect to ``input``, through the
    argmax of the forward)."""
    return RoIPool.apply(_tensor(input), rois, output_size, spatial_scale)


roi_pool.__doc__ += "\n" + ops.roi_pool.__doc__


class PSRoIPool(Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale):
        ctx.save_for_backward(rois)
        ctx.arguments = (tuple(input.shape), spatial_scale)
        return ops.ps_roi_pool(input, rois, output_size, spatial_scale)

    @staticmethod
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        input_shape, spatial_scale = ctx.arguments
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = ops.ps_roi_pool_backward(grad_output, rois, input_shape, spatial_scale)
        return grad_input, None, None, None


def ps_roi_pool(input, rois, output_size, spatial_scale=1.0):
    """Differentiable ``numba_droi.ps_roi_pool`` (gradient with respect to ``input``)."""
    return PSRoIPool.apply(_tensor(input), rois, output_size, spatial_scale)


ps_roi_pool.__doc__ += "\n" + ops.ps_roi_pool.__doc__


class PSRoIAlign(Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio):
        ctx.save_for_backward(rois)
        ctx.arguments = (tuple(input.shape), spatial_scale, sampling_ratio)
        return ops.ps_roi_align(input, rois, output_size, spatial_scale, sampling_ratio)

    @staticmethod
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        input_shape, spatial_scale, sampling_ratio = ctx.arguments
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = ops.ps_roi_align_backward(grad_output, rois, input_shape, spatial_scale,
                                                   sampling_ratio)
        return grad_input, None, None, None, None


def ps_roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """Differentiable ``numba_droi.ps_roi_align`` (gradient with respect to ``input``)."""
    return PSRoIAlign.apply(_tensor(input), rois, output_size, spatial_scale, sampling_ratio)


ps_roi_align.__doc__ += "\n" + ops.ps_roi_align.__doc__


class DeformRoIPool(Function):
    @staticmethod
    def forward(ctx, input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, mask):
        ctx.save_for_backward(input, rois, offset, mask)
        ctx.arguments = (spatial_scale, sampling_ratio, gamma)
        return ops.deform_roi_pool(input, rois, offset, output_size, spatial_scale, sampling_ratio,
                                   gamma, mask)

    @staticmethod
    def backward(ctx, grad_output):
        input, rois, offset, mask = ctx.saved_tensors
        grad_input, grad_offset, grad_mask = ops.deform_roi_pool_backward(
            grad_output, input, rois, offset, *ctx.arguments, mask)
        return grad_input, None, grad_offset, None, None, None, None, grad_mask


def deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1,
                    mask=None):
    """Differentiable ``numba_droi.deform_roi_pool`` (gradients with respect to ``input``, ``offset``
    and ``mask``)."""
    return DeformRoIPool.apply(_tensor(input), rois, offset, output_size, spatial_scale, sampling_ratio,
                               gamma, mask)


deform_roi_pool.__doc__ += "\n" + ops.deform_roi_pool.__doc__


class DeformPSRoIPool(Function):
    @staticmethod
    def forward(ctx, input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                sample_per_part, trans_std, no_trans):
        ctx.save_for_backward(input, rois, trans)
        ctx.arguments = (spatial_scale, group_size, part_size, sample_per_part, trans_std, no_trans)
        return ops.deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size,
                                     pooled_size, part_size, sample_per_part, trans_std, no_trans)

    @staticmethod
    def backward(ctx, grad_output):
        input, rois, trans = ctx.saved_tensors
        grad_input, grad_trans = ops.deform_psroi_pool_backward(grad_output, input, rois, trans,
                                                                *ctx.arguments)
        return (grad_input, None, grad_trans) + (None,) * 8


def deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size,
                      part_size=None, sample_per_part=1, trans_std=0.0, no_trans=False):
    """Differentiable ``numba_droi.deform_psroi_pool`` (gradients with respect to ``input`` and
    ``trans``)."""
    return DeformPSRoIPool.apply(_tensor(input), rois, trans, spatial_scale, output_dim, group_size,
                                 pooled_size, part_size, sample_per_part, trans_std, no_trans)


deform_psroi_pool.__doc__ += "\n" + ops.deform_psroi_pool.__doc__
class DeformConv2d(Function):
    @staticmethod
    def forward(ctx, input, offset, weight, bias, stride, padding, dilation, mask):
        ctx.save_for_backward(input, offset, weight, mask)
        ctx.arguments = (stride, padding, dilation, bias is not None)
        return ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)

    @staticmethod
    def backward(ctx, grad_output):
        input, offset, weight, mask = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.arguments
        grad_input, grad_offset, grad_weight, grad_bias, grad_mask = ops.deform_conv2d_backward(
            grad_output, input, offset, weight, stride, padding, dilation, mask)
        return (grad_input, grad_offset, grad_weight, grad_bias if has_bias else None, None, None,
                None, grad_mask)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Differentiable ``numba_droi.deform_conv2d`` (gradients with respect to input, offset, weight,
    bias and mask)."""
    return DeformConv2d.apply(_tensor(input), offset, weight, bias, stride, padding, dilation, mask)


deform_conv2d.__doc__ += "\n" + ops.deform_conv2d.__doc__


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
    return DeformConv2d.apply(input, None, weight, bias, stride, padding, dilation, None)


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
