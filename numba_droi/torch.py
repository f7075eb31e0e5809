"""PyTorch adapter: our operators as ``torch.autograd.Function`` objects and ``torch.nn.Module`` layers,
with the names and signatures of torchvision (``roi_align``, ``RoIAlign``, ``roi_pool``, ``RoIPool``,
``ps_roi_pool``, ``PSRoIPool``, ``ps_roi_align``, ``PSRoIAlign``, ``deform_conv2d``, ``DeformConv2d``),
of mmcv where torchvision has no such operator (``deform_roi_pool``, ``DeformRoIPool``,
``DeformRoIPoolPack``, ``ModulatedDeformRoIPoolPack``, ``modulated_deform_conv2d``,
``ModulatedDeformConv2d``, ``ModulatedDeformConv2dPack``, ``DeformConv2dPack``), and of Deformable
ConvNets as mmdet v1 wrapped it for deformable PS RoI pooling (``deform_roi_pooling``,
``DeformRoIPooling``). Import it explicitly (``import numba_droi.torch``): it needs torch.

Where the names clash, torchvision wins: ``deform_conv2d`` and ``DeformConv2d`` are torchvision's
(``DeformConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
bias=True)(input, offset, mask=None)``, offset groups read from the offset), not mmcv's
(``deform_groups``, no bias, ``forward(x, offset)``); mmcv's ``DeformConv2dPack`` keeps mmcv's
signature.

Memory is exchanged with DLPack both ways, without copies: a CPU tensor is viewed as a NumPy array, a
CUDA tensor as a CuPy array (``numba_droi[cuda12]``), our operator runs on that view, and its result
becomes a tensor sharing the result's memory. On CUDA our kernels, and CuPy's work around them, run on
torch's current stream of the tensor's device, so they are ordered with torch's own work without any
synchronisation. Inputs that are not C-contiguous are copied once (the kernels read contiguous
memory). The boxes never get a gradient (as torchvision's).
"""
import contextlib
import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

from . import _backend, ops

__all__ = ["roi_align", "RoIAlign", "roi_pool", "RoIPool", "ps_roi_pool", "PSRoIPool", "ps_roi_align",
           "PSRoIAlign", "deform_conv2d", "DeformConv2d", "deform_roi_pool", "DeformRoIPool",
           "DeformRoIPoolPack", "ModulatedDeformRoIPoolPack", "modulated_deform_conv2d",
           "ModulatedDeformConv2d", "ModulatedDeformConv2dPack", "DeformConv2dPack",
           "deform_roi_pooling", "DeformRoIPooling"]


# -- exchanging memory -------------------------------------------------------------------------------

def _array(tensor):
    """A NumPy (CPU tensor) or CuPy (CUDA tensor) array viewing ``tensor``'s memory; None stays None."""
    return None if tensor is None else _backend.from_dlpack(tensor.detach(), tensor.is_cuda)


def _stream(tensor):
    """On a CUDA tensor: run inside on torch's current stream of its device."""
    if not tensor.is_cuda:
        return contextlib.nullcontext()
    return _backend.external_stream(torch.cuda.current_stream(tensor.device).cuda_stream,
                                    tensor.device.index)


def _call(operator, *arguments):
    """``operator`` on array views of the tensors among ``arguments`` (the others passed as they are);
    its array results (one, or a tuple; None passes) as tensors sharing their memory."""
    device_tensor = next(a for a in arguments if isinstance(a, torch.Tensor))
    with _stream(device_tensor):
        results = operator(*(_array(a) if isinstance(a, torch.Tensor) else a for a in arguments))
        if isinstance(results, tuple):
            return tuple(None if r is None else torch.from_dlpack(r) for r in results)
        return torch.from_dlpack(results)


def _rois(boxes):
    """torchvision's boxes as a ``(K, 5)`` tensor: a ``(K, 5)`` tensor ``[batch_index, x1, y1, x2, y2]``
    as it is, or a list of ``(L_i, 4)`` tensors ``[x1, y1, x2, y2]``, one per image, whose rows get
    batch index ``i``."""
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.size(1) != 5:
            raise ValueError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got a tensor of "
                             f"shape {tuple(boxes.shape)}")
        return boxes
    boxes = list(boxes)
    shapes = [tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__ for b in boxes]
    if not boxes or not all(isinstance(b, torch.Tensor) and b.dim() == 2 and b.size(1) == 4
                            for b in boxes):
        raise ValueError(f"boxes must be a Tensor[K, 5] or a non-empty list of Tensor[L, 4], got a "
                         f"list of {shapes}")
    batch = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
    return torch.cat([batch, torch.cat(boxes)], dim=1)


# -- autograd functions: our forward and backward, one Function per operator ---------------------------

class RoIAlignFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.arguments = (tuple(input.shape), spatial_scale, sampling_ratio, aligned)
        return _call(ops.roi_align, input, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = _call(ops.roi_align_backward, grad_output, rois, *ctx.arguments)
        return grad_input, None, None, None, None, None


class RoIPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale):
        output, argmax = _call(ops.roi_pool_with_argmax, input, rois, output_size, spatial_scale)
        ctx.save_for_backward(rois, argmax)
        ctx.input_shape = tuple(input.shape)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        rois, argmax = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = _call(ops.roi_pool_backward, grad_output, rois, argmax, ctx.input_shape)
        return grad_input, None, None, None


class PSRoIPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale):
        ctx.save_for_backward(rois)
        ctx.arguments = (tuple(input.shape), spatial_scale)
        return _call(ops.ps_roi_pool, input, rois, output_size, spatial_scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = _call(ops.ps_roi_pool_backward, grad_output, rois, *ctx.arguments)
        return grad_input, None, None, None


class PSRoIAlignFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio):
        ctx.save_for_backward(rois)
        ctx.arguments = (tuple(input.shape), spatial_scale, sampling_ratio)
        return _call(ops.ps_roi_align, input, rois, output_size, spatial_scale, sampling_ratio)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = _call(ops.ps_roi_align_backward, grad_output, rois, *ctx.arguments)
        return grad_input, None, None, None, None


class DeformRoIPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, mask):
        ctx.save_for_backward(input, rois, offset, mask)
        ctx.arguments = (spatial_scale, sampling_ratio, gamma)
        return _call(ops.deform_roi_pool, input, rois, offset, output_size, spatial_scale,
                     sampling_ratio, gamma, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, rois, offset, mask = ctx.saved_tensors
        needs_input, _, needs_offset, *_, needs_mask = ctx.needs_input_grad
        grads = (None, None, None)
        if needs_input or needs_offset or needs_mask:
            grads = _call(ops.deform_roi_pool_backward, grad_output, input, rois, offset,
                          *ctx.arguments, mask)
        grad_input, grad_offset, grad_mask = (g if needed else None for g, needed
                                              in zip(grads, (needs_input, needs_offset, needs_mask)))
        return grad_input, None, grad_offset, None, None, None, None, grad_mask


class DeformPSRoIPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                sample_per_part, trans_std, no_trans):
        ctx.save_for_backward(input, rois, trans)
        ctx.arguments = (spatial_scale, group_size, part_size, sample_per_part, trans_std, no_trans)
        return _call(ops.deform_psroi_pool, input, rois, trans, spatial_scale, output_dim, group_size,
                     pooled_size, part_size, sample_per_part, trans_std, no_trans)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, rois, trans = ctx.saved_tensors
        needs_input, _, needs_trans = ctx.needs_input_grad[:3]
        grad_input = grad_trans = None
        if needs_input or needs_trans:
            grad_input, grad_trans = _call(ops.deform_psroi_pool_backward, grad_output, input, rois,
                                           trans, *ctx.arguments)
        return ((grad_input if needs_input else None), None,
                (grad_trans if needs_trans else None)) + (None,) * 8


class DeformConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, weight, bias, stride, padding, dilation, mask):
        ctx.save_for_backward(input, offset, weight, mask)
        ctx.arguments = (stride, padding, dilation)
        return _call(ops.deform_conv2d, input, offset, weight, bias, stride, padding, dilation, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, offset, weight, mask = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if not any(needs):
            return (None,) * 8
        grad_input, grad_offset, grad_weight, grad_bias, grad_mask = _call(
            ops.deform_conv2d_backward, grad_output, input, offset, weight, *ctx.arguments, mask)
        grads = (grad_input, grad_offset, grad_weight, grad_bias, None, None, None, grad_mask)
        return tuple(g if needed else None for g, needed in zip(grads, needs))


# -- torchvision's operators ---------------------------------------------------------------------------

def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """``numba_droi.roi_align`` on tensors, as ``torchvision.ops.roi_align``: ``boxes`` a ``(K, 5)``
    tensor ``[batch_index, x1, y1, x2, y2]`` or a list of ``(L, 4)`` tensors, one per image.
    Differentiable in ``input``."""
    return RoIAlignFunction.apply(input, _rois(boxes), output_size, spatial_scale, sampling_ratio,
                                  aligned)


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """``numba_droi.roi_pool`` on tensors, as ``torchvision.ops.roi_pool``; differentiable in
    ``input`` through the argmax of the forward."""
    return RoIPoolFunction.apply(input, _rois(boxes), output_size, spatial_scale)


def ps_roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """``numba_droi.ps_roi_pool`` on tensors, as ``torchvision.ops.ps_roi_pool``; differentiable in
    ``input``."""
    return PSRoIPoolFunction.apply(input, _rois(boxes), output_size, spatial_scale)


def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """``numba_droi.ps_roi_align`` on tensors, as ``torchvision.ops.ps_roi_align``; differentiable in
    ``input``."""
    return PSRoIAlignFunction.apply(input, _rois(boxes), output_size, spatial_scale, sampling_ratio)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """``numba_droi.deform_conv2d`` on tensors, as ``torchvision.ops.deform_conv2d`` (v1, or v2 with a
    ``mask``); differentiable in input, offset, weight, bias and mask. ``offset`` may be None here (no
    offsets: an ordinary, or with ``mask`` a modulated, convolution)."""
    return DeformConv2dFunction.apply(input, offset, weight, bias, _pair(stride), _pair(padding),
                                      _pair(dilation), mask)


class _RoIModule(nn.Module):
    """A torchvision RoI layer: its options as attributes, ``forward(input, rois)``."""

    def __init__(self, **options):
        super().__init__()
        self._options = tuple(options)
        for name, value in options.items():
            setattr(self, name, value)

    def extra_repr(self):
        return ", ".join(f"{name}={getattr(self, name)}" for name in self._options)


class RoIAlign(_RoIModule):
    """``roi_align`` as a layer, as ``torchvision.ops.RoIAlign``."""

    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=False):
        super().__init__(output_size=output_size, spatial_scale=spatial_scale,
                         sampling_ratio=sampling_ratio, aligned=aligned)

    def forward(self, input, rois):
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                         self.aligned)


class RoIPool(_RoIModule):
    """``roi_pool`` as a layer, as ``torchvision.ops.RoIPool``."""

    def __init__(self, output_size, spatial_scale):
        super().__init__(output_size=output_size, spatial_scale=spatial_scale)

    def forward(self, input, rois):
        return roi_pool(input, rois, self.output_size, self.spatial_scale)


class PSRoIPool(_RoIModule):
    """``ps_roi_pool`` as a layer, as ``torchvision.ops.PSRoIPool``."""

    def __init__(self, output_size, spatial_scale):
        super().__init__(output_size=output_size, spatial_scale=spatial_scale)

    def forward(self, input, rois):
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)


class PSRoIAlign(_RoIModule):
    """``ps_roi_align`` as a layer, as ``torchvision.ops.PSRoIAlign``."""

    def __init__(self, output_size, spatial_scale, sampling_ratio):
        super().__init__(output_size=output_size, spatial_scale=spatial_scale,
                         sampling_ratio=sampling_ratio)

    def forward(self, input, rois):
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)


class _Convolution(nn.Module):
    """Parameters and geometry of a deformable convolution layer: ``weight`` (out_channels,
    in_channels // groups, kh, kw) and an optional ``bias``, left for subclasses to initialise."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups = {groups} must divide in_channels = {in_channels} and "
                             f"out_channels = {out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)

    @property
    def fan_in(self):
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")


class DeformConv2d(_Convolution):
    """``deform_conv2d`` as a layer, as ``torchvision.ops.DeformConv2d``: ``forward(input, offset,
    mask=None)``; the weight initialised as ``torch.nn.Conv2d``'s (Kaiming-uniform with ``a =
    sqrt(5)``), the bias uniform in ``+-1/sqrt(fan_in)``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.fan_in) if self.fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input, offset, mask=None):
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask)


# -- mmcv's operators ------------------------------------------------------------------------------------

def deform_roi_pool(input, rois, offset, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1,
                    mask=None):
    """``numba_droi.deform_roi_pool`` on tensors, as ``mmcv.ops.deform_roi_pool`` (``offset`` may be
    None), with our fused modulation ``mask`` as an extra last argument; differentiable in input,
    offset and mask."""
    return DeformRoIPoolFunction.apply(input, _rois(rois), offset, _pair(output_size), spatial_scale,
                                       sampling_ratio, gamma, mask)


class DeformRoIPool(nn.Module):
    """``deform_roi_pool`` as a layer, as ``mmcv.ops.DeformRoIPool``: ``forward(input, rois,
    offset=None)``."""

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale, self.sampling_ratio, self.gamma = spatial_scale, sampling_ratio, gamma

    def forward(self, input, rois, offset=None):
        return deform_roi_pool(input, rois, offset, self.output_size, self.spatial_scale,
                               self.sampling_ratio, self.gamma)

    def extra_repr(self):
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}")


def _zeroed(linear):
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class DeformRoIPoolPack(DeformRoIPool):
    """Deformable RoI pooling predicting its offsets, as ``mmcv.ops.DeformRoIPoolPack``: the plain
    pooling of each box (``roi_align(aligned=True)``) feeds FC-ReLU-FC-ReLU-FC (``offset_fc``, the last
    zero-initialised, the others as ``torch.nn.Linear``), whose ``(K, 2, PH, PW)`` output offsets the
    second pooling. ``output_channels`` is the input's channel count."""

    def __init__(self, output_size, output_channels, deform_fc_channels=1024, spatial_scale=1.0,
                 sampling_ratio=0, gamma=0.1):
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        self.output_channels, self.deform_fc_channels = output_channels, deform_fc_channels
        bins = self.output_size[0] * self.output_size[1]
        self.offset_fc = nn.Sequential(
            nn.Linear(bins * output_channels, deform_fc_channels), nn.ReLU(inplace=True),
            nn.Linear(deform_fc_channels, deform_fc_channels), nn.ReLU(inplace=True),
            _zeroed(nn.Linear(deform_fc_channels, bins * 2)))

    def _pooled_rows(self, input, rois):
        if input.size(1) != self.output_channels:
            raise ValueError(f"input must have output_channels = {self.output_channels} channels, got "
                             f"input of shape {tuple(input.shape)}")
        pooled = super().forward(input, rois)
        return pooled.reshape(pooled.size(0), -1)

    def forward(self, input, rois):
        rows = self._pooled_rows(input, rois)
        offset = self.offset_fc(rows).view(rows.size(0), 2, *self.output_size)
        return super().forward(input, rois, offset)


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """``DeformRoIPoolPack`` with a mask per bin (DCNv2), as ``mmcv.ops.ModulatedDeformRoIPoolPack``:
    ``mask_fc`` (FC-ReLU-FC-Sigmoid, the last FC zero-initialised, so the mask starts at 0.5) of the
    same pooled rows. mmcv multiplies the pooled output by the mask; we pass it to ``deform_roi_pool``,
    which applies it in the kernel: the same values and gradients."""

    def __init__(self, output_size, output_channels, deform_fc_channels=1024, spatial_scale=1.0,
                 sampling_ratio=0, gamma=0.1):
        super().__init__(output_size, output_channels, deform_fc_channels, spatial_scale,
                         sampling_ratio, gamma)
        bins = self.output_size[0] * self.output_size[1]
        self.mask_fc = nn.Sequential(
            nn.Linear(bins * output_channels, deform_fc_channels), nn.ReLU(inplace=True),
            _zeroed(nn.Linear(deform_fc_channels, bins)), nn.Sigmoid())

    def forward(self, input, rois):
        rows = self._pooled_rows(input, rois)
        offset = self.offset_fc(rows).view(rows.size(0), 2, *self.output_size)
        mask = self.mask_fc(rows).view(rows.size(0), 1, *self.output_size)
        return deform_roi_pool(input, rois, offset, self.output_size, self.spatial_scale,
                               self.sampling_ratio, self.gamma, mask)


def modulated_deform_conv2d(input, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1,
                            groups=1, deform_groups=1):
    """``numba_droi.deform_conv2d`` with mmcv's ``modulated_deform_conv2d`` signature. ``groups`` and
    ``deform_groups`` must agree with the shapes of ``weight`` and ``offset`` (our operator reads them
    from there): ValueError otherwise."""
    taps = weight.size(2) * weight.size(3)
    if weight.size(1) * groups != input.size(1):
        raise ValueError(f"groups = {groups} does not match input channels {input.size(1)} and weight "
                         f"of shape {tuple(weight.shape)}")
    if offset.size(1) != 2 * deform_groups * taps:
        raise ValueError(f"deform_groups = {deform_groups} needs offset.shape[1] = {2 * deform_groups * taps}, "
                         f"got {offset.size(1)}")
    return deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)


class ModulatedDeformConv2d(_Convolution):
    """Modulated deformable convolution (DCNv2) as a layer, as ``mmcv.ops.ModulatedDeformConv2d``:
    ``forward(x, offset, mask)``; weight uniform in ``+-1/sqrt(in_channels * kh * kw)``, bias zero."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 deform_groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.deform_groups = deform_groups
        self.init_weights()

    def init_weights(self):
        bound = 1 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x, offset, mask):
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride,
                                       self.padding, self.dilation, self.groups, self.deform_groups)

    def extra_repr(self):
        return f"{super().extra_repr()}, deform_groups={self.deform_groups}"


def _offset_conv(layer, channels_per_tap):
    """mmcv's ``conv_offset`` of a pack: a zero-initialised ``torch.nn.Conv2d`` of the layer's kernel,
    stride, padding and dilation giving ``channels_per_tap`` channels per tap and offset group."""
    conv = nn.Conv2d(layer.in_channels,
                     layer.deform_groups * channels_per_tap * layer.kernel_size[0] * layer.kernel_size[1],
                     layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=True)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ModulatedDeformConv2dPack(ModulatedDeformConv2d):
    """``ModulatedDeformConv2d`` predicting its offsets and mask, as
    ``mmcv.ops.ModulatedDeformConv2dPack``: a zero-initialised ``conv_offset`` gives ``3 *
    deform_groups * kh * kw`` channels, the first two thirds the offsets, the last the mask before a
    sigmoid (so training starts from half the plain convolution)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conv_offset = _offset_conv(self, 3)

    def forward(self, x):
        offset, mask = torch.split(self.conv_offset(x), 2 * self.conv_offset.out_channels // 3, dim=1)
        return super().forward(x, offset, torch.sigmoid(mask))


class DeformConv2dPack(_Convolution):
    """Deformable convolution (DCNv1) predicting its offsets, as ``mmcv.ops.DeformConv2dPack``
    (mmcv's ``DeformConv2d`` signature, which this module does not otherwise export: ``deform_groups``,
    ``bias=False``; ``im2col_step`` is accepted and has no effect): a zero-initialised ``conv_offset``
    gives the offsets, so training starts from the plain convolution. The weight is initialised as
    mmcv's (Kaiming-uniform for ReLU: ``+-sqrt(6 / fan_in)``); ``bias=True`` (which mmcv refuses) adds
    a zero-initialised bias."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 deform_groups=1, bias=False, im2col_step=32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.deform_groups, self.im2col_step = deform_groups, im2col_step
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.conv_offset = _offset_conv(self, 2)

    def forward(self, x):
        return deform_conv2d(x, self.conv_offset(x), self.weight, self.bias, self.stride, self.padding,
                             self.dilation)

    def extra_repr(self):
        return f"{super().extra_repr()}, deform_groups={self.deform_groups}"


# -- deformable PS RoI pooling, as Deformable ConvNets (mmdet v1's DeformRoIPooling) --------------------

def deform_roi_pooling(data, rois, offset, spatial_scale, out_size, out_channels, no_trans, group_size=1,
                       part_size=None, sample_per_part=4, trans_std=0.0):
    """``numba_droi.deform_psroi_pool`` on tensors, with the signature of mmdet v1's
    ``deform_roi_pooling`` (Deformable ConvNets' ``DeformablePSROIPooling``): ``out_size`` bins per
    side, ``out_channels`` output channels, ``offset`` the ``(K, 2 * num_classes, part_size,
    part_size)`` part offsets (ignored, and may be None, when ``no_trans``). Differentiable in
    ``data`` and ``offset``."""
    return DeformPSRoIPoolFunction.apply(data, _rois(rois), None if no_trans else offset, spatial_scale,
                                         out_channels, group_size, out_size, part_size, sample_per_part,
                                         trans_std, bool(no_trans))


class DeformRoIPooling(nn.Module):
    """``deform_roi_pooling`` as a layer, as mmdet v1's ``DeformRoIPooling``: ``forward(data, rois,
    offset=None)``."""

    def __init__(self, spatial_scale, out_size, out_channels, no_trans, group_size=1, part_size=None,
                 sample_per_part=4, trans_std=0.0):
        super().__init__()
        self.spatial_scale, self.out_size, self.out_channels = spatial_scale, out_size, out_channels
        self.no_trans, self.group_size = no_trans, group_size
        self.part_size = out_size if part_size is None else part_size
        self.sample_per_part, self.trans_std = sample_per_part, trans_std

    def forward(self, data, rois, offset=None):
        return deform_roi_pooling(data, rois, offset, self.spatial_scale, self.out_size,
                                  self.out_channels, self.no_trans, self.group_size, self.part_size,
                                  self.sample_per_part, self.trans_std)

    def extra_repr(self):
        return (f"spatial_scale={self.spatial_scale}, out_size={self.out_size}, "
                f"out_channels={self.out_channels}, no_trans={self.no_trans}, "
                f"group_size={self.group_size}, part_size={self.part_size}, "
                f"sample_per_part={self.sample_per_part}, trans_std={self.trans_std}")
