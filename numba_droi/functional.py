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
