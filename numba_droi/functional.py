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
