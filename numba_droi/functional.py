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
