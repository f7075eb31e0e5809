"""Differentiable operators: Tensor in, Tensor out, one ``Function`` each."""
from . import ops
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
