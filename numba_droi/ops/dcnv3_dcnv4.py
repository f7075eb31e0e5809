"""dcnv3 and dcnv4 and their backwards at the array level.

Both are one-level cases of multi-scale deformable attention: channels-last maps, ``G`` groups (heads)
of ``group_channels``, ``K`` points per output position and group, each weighted by its mask. On the
GPU they run ``ms_deform_attn``'s kernels on the input seen as one level of ``H*W`` rows, with the
sample positions computed here, in pixels, from the offsets (as InternImage's CUDA kernels compute
them); on the cpu, one pass computes each position where it samples it (kernels/dcnv3_dcnv4.py).
"""
import functools
from dataclasses import dataclass

import numpy as np

from .. import _backend
from ..kernels.dcnv3_dcnv4 import dcnv_backward_cpu, dcnv_forward_cpu, dcnv_position
from . import _checks
from .ms_deform_attn import MAX_ROWS, sample, sample_backward

__all__ = ["dcnv3", "dcnv3_backward", "dcnv4", "dcnv4_backward"]


@dataclass(frozen=True)
class Geometry:
    """The kernel, stride, padding, dilation, groups, points and output size of one call."""
    kernel: tuple           # (kh, kw)
    stride: tuple
    padding: tuple
    dilation: tuple
    group: int
    group_channels: int
    offset_scale: float
    remove_center: bool
    points: int             # K: kh*kw, less the centre if removed
    output: tuple           # (Ho, Wo)

    def taps(self):
        """The points' ``(i, j)`` (column, row) in the order of the offsets and masks: columns outer,
        rows inner, without the centre ``(kw // 2, kh // 2)`` if removed."""
        kh, kw = self.kernel
        return [(i, j) for i in range(kw) for j in range(kh)
                if not (self.remove_center and i == kw // 2 and j == kh // 2)]

    def locations(self, offset, xp, dtype):
        """The sample positions ``(x, y)`` in pixels of the unpadded input, ``(N, Ho*Wo, G, 1, K, 2)``,
        from ``offset`` ``(N, Ho, Wo, G, K, 2)``::

            x = wo*stride_w - pad_w + c_w - c_w*offset_scale + (i*dilation_w + offset_x)*offset_scale

        (``c_w = dilation_w*(kw-1) // 2``; the same for y), the kernel's window scaled by
        ``offset_scale`` about its centre, as InternImage's CUDA kernels group the terms."""
        out_h, out_w = self.output
        scale = self.offset_scale
        locations = xp.empty(offset.shape, dtype)
        start_x, start_y, tap_x, tap_y = (xp.asarray(a) for a in self.grid(dtype))
        locations[..., 0] = dcnv_position(start_x[:, None, None], tap_x, offset[..., 0], scale)
        locations[..., 1] = dcnv_position(start_y[:, None, None, None], tap_y, offset[..., 1], scale)
        return locations.reshape(offset.shape[0], out_h * out_w, self.group, 1, self.points, 2)

    def grid(self, dtype):
        """``locations``' terms without the offsets, as NumPy arrays of ``dtype``: ``(start_x (Wo,),
        start_y (Ho,), tap_x (K,), tap_y (K,))``, read-only."""
        return self._grid(np.dtype(dtype))

    @functools.lru_cache(maxsize=64)
    def _grid(self, dtype):
        # once per geometry: NumPy's calls on such small arrays take as long as a small call's kernels
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        out_h, out_w = self.output
        scale = self.offset_scale
        centre_y, centre_x = dh * (kh - 1) // 2, dw * (kw - 1) // 2
        taps = np.array(self.taps(), np.int64).reshape(-1, 2)
        grid = (np.arange(out_w) * sw - pw + centre_x - centre_x * scale,
                np.arange(out_h) * sh - ph + centre_y - centre_y * scale, taps[:, 0] * dw, taps[:, 1] * dh)
        grid = tuple(np.asarray(a, dtype) for a in grid)
        for a in grid:
            a.flags.writeable = False
        return grid


def geometry(input_shape, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
             group, group_channels, offset_scale=1.0, remove_center=False):
    """The checked ``Geometry`` of a call on a channels-last ``(N, H, W, C)`` input."""
    kernel = (_checks.count(kernel_h, "kernel_h", 1), _checks.count(kernel_w, "kernel_w", 1))
    stride = (_checks.count(stride_h, "stride_h", 1), _checks.count(stride_w, "stride_w", 1))
    padding = (_checks.count(pad_h, "pad_h", 0), _checks.count(pad_w, "pad_w", 0))
    dilation = (_checks.count(dilation_h, "dilation_h", 1), _checks.count(dilation_w, "dilation_w", 1))
    group = _checks.count(group, "group", 1)
    group_channels = _checks.count(group_channels, "group_channels", 1)
    offset_scale = float(_checks.finite_real(offset_scale, "offset_scale"))
    if not isinstance(remove_center, (bool, np.bool_, int, np.integer)) or remove_center not in (0, 1):
        raise ValueError(f"remove_center must be a bool, got {remove_center!r}")
    remove_center = bool(remove_center)
    points = kernel[0] * kernel[1] - remove_center
    if points < 1:
        raise ValueError(f"remove_center leaves no point of a {kernel[0]}x{kernel[1]} kernel")
    if input_shape[3] != group * group_channels:
        raise ValueError(f"input.shape[3] = {input_shape[3]} must be group * group_channels = {group} * "
                         f"{group_channels} = {group * group_channels}")
    if input_shape[1] * input_shape[2] > MAX_ROWS:
        raise ValueError(f"input's maps must have at most 2**30 pixels (the kernels index them with "
                         f"32-bit integers), got H*W = {input_shape[1]} * {input_shape[2]}")
    output = tuple((size + 2 * pad - (dil * (k - 1) + 1)) // step + 1 for size, pad, dil, k, step
                   in zip(input_shape[1:3], padding, dilation, kernel, stride))
    if min(output) < 1:
        raise ValueError(f"the output would be empty: input of size {tuple(input_shape[1:3])} with kernel "
                         f"{kernel}, padding {padding}, dilation {dilation} gives {output}")
    return Geometry(kernel, stride, padding, dilation, group, group_channels, offset_scale, remove_center,
                    points, output)


def _float_array(value, input, name, shape, layout, longer=False):
    """``value`` as an array of ``shape`` (named ``layout`` in the error; its last axis may be longer
    if ``longer``) on the input's device, of any floating dtype (the callers cast it)."""
    _backend.target_of(input, value, names=("input", name))
    array = _backend.as_array(value)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array, got {array.dtype}")
    if array.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions {layout}, got shape {tuple(array.shape)}")
    if not longer:
        _checks.same_shape(array, shape, name)
    elif tuple(array.shape[:3]) != tuple(shape[:3]) or array.shape[3] < shape[3]:
        raise ValueError(f"{name} must have shape {layout} = {tuple(shape[:3])} + (P,) with P >= "
                         f"{shape[3]}, got {tuple(array.shape)}")
    return array


def _input(input, options):
    input = _checks.features(input, "input", layout="(N, H, W, G*group_channels)")
    return input, geometry(input.shape, *options)


def _level(input, geometry):
    """The input as one level of ``ms_deform_attn``: ``(value, spatial_shapes, level_start_index)``."""
    images, height, width, _ = input.shape
    xp = _backend.array_module(input)
    return (input.reshape(images, height * width, geometry.group, geometry.group_channels),
            xp.asarray([[height, width]], np.int64), xp.zeros(1, np.int64))


def _forward(input, geometry, offset, mask):
    """The output from checked ``offset (N, Ho, Wo, G, K, 2)`` and ``mask (N, Ho, Wo, G, K)``."""
    value, shapes, starts = _level(input, geometry)
    if _backend.target_of(input) == "cpu":
        output = np.zeros(mask.shape[:4] + (geometry.group_channels,), input.dtype)
        if value.size:
            _backend.run("cpu", dcnv_forward_cpu, output.size, value, shapes, starts, _writable(offset),
                         _writable(mask), geometry.grid(input.dtype), geometry.offset_scale, output)
    else:
        xp = _backend.array_module(input)
        output = sample(value, shapes, starts, geometry.locations(offset, xp, input.dtype),
                        _attention_weights(mask, input.dtype), False)
    return output.reshape(input.shape[0], *geometry.output, input.shape[3])


def _backward(grad_output, input, geometry, offset, mask, wanted, into=None):
    """``(grad_input, grad_offset (N, Ho, Wo, G, K, 2), grad_mask (N, Ho, Wo, G, K))`` of checked
    arguments (``wanted``: a set of "input", "offset", "mask"); a gradient not wanted is None. On the
    cpu, the offset and mask gradients are written into ``into = (grad_offset, grad_mask)`` if given
    (views of dcnv4's packed gradient)."""
    _backend.target_of(input, grad_output, names=("input", "grad_output"))
    grad_output = _checks.features(grad_output, "grad_output", layout="(N, Ho, Wo, G*group_channels)")
    images, out_h, out_w, channels = input.shape[0], *geometry.output, input.shape[3]
    _checks.same_shape(grad_output, (images, out_h, out_w, channels), "grad_output")
    grad_output = grad_output.astype(input.dtype, copy=False).reshape(
        images, out_h, out_w, geometry.group, geometry.group_channels)
    value, shapes, starts = _level(input, geometry)
    if _backend.target_of(input) == "cpu":
        grad_value = np.zeros_like(value) if "input" in wanted else None
        grad_offset = grad_mask = None
        if wanted & {"offset", "mask"}:
            grad_offset, grad_mask = into or (np.empty(offset.shape, input.dtype),
                                              np.empty(mask.shape, input.dtype))
        if value.size and grad_output.size:
            _backend.run("cpu", dcnv_backward_cpu, grad_output.size, value, grad_output, shapes, starts,
                         _writable(offset), _writable(mask), geometry.grid(input.dtype),
                         geometry.offset_scale, grad_value, grad_offset, grad_mask)
        elif grad_mask is not None:
            grad_offset[...] = 0
            grad_mask[...] = 0
    else:
        xp = _backend.array_module(input)
        names = {"input": "value", "offset": "sampling_locations", "mask": "attention_weights"}
        grad_value, grad_offset, grad_mask = sample_backward(
            grad_output.reshape(images, out_h * out_w, geometry.group, geometry.group_channels), value,
            shapes, starts, geometry.locations(offset, xp, input.dtype),
            _attention_weights(mask, input.dtype), False, {names[name] for name in wanted})
        if grad_offset is not None:
            if geometry.offset_scale != 1:
                grad_offset *= input.dtype.type(geometry.offset_scale)
            grad_offset = grad_offset.reshape(offset.shape)
        if grad_mask is not None:
            grad_mask = grad_mask.reshape(mask.shape)
    return None if grad_value is None else grad_value.reshape(input.shape), grad_offset, grad_mask


def _attention_weights(mask, dtype):
    """``mask (N, Ho, Wo, G, K)`` as ms_deform_attn's attention weights, ``(N, Ho*Wo, G, 1, K)``."""
    images, out_h, out_w, group, points = mask.shape
    return _checks.contiguous(mask, dtype).reshape(images, out_h * out_w, group, 1, points)


def _writable(array):
    """A NumPy array as it is, or a copy if it is read-only (Numba would compile again for it)."""
    return array if array.flags.writeable else array.copy()


def _dcnv3_arguments(input, offset, mask, options):
    input, geometry = _input(input, options)
    images, (out_h, out_w), group, points = input.shape[0], geometry.output, geometry.group, geometry.points
    offset = _float_array(offset, input, "offset", (images, out_h, out_w, 2 * group * points),
                          "(N, Ho, Wo, G*K*2)").reshape(images, out_h, out_w, group, points, 2)
    mask = _float_array(mask, input, "mask", (images, out_h, out_w, group * points),
                        "(N, Ho, Wo, G*K)").reshape(images, out_h, out_w, group, points)
    return input, geometry, offset.astype(input.dtype, copy=False), mask.astype(input.dtype, copy=False)


def dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
          group, group_channels, offset_scale=1.0, remove_center=False):
    """The core of DCNv3, the deformable convolution of InternImage (Wang et al., "InternImage:
    Exploring Large-Scale Vision Foundation Models with Deformable Convolutions", CVPR 2023,
    https://arxiv.org/abs/2211.05778), as its ``DCNv3Function`` (less the ``im2col_step``).

    Channels-last: group ``g`` is channels ``g*group_channels ..`` of ``input``. Output position ``(ho,
    wo)`` of group ``g`` samples its ``K`` points ``k``, the kernel's ``(i, j)`` (column, row), columns
    outer, rows inner, with rule B2 of docs/operators.md (zero outside the input) at::

        x = wo*stride_w - pad_w + c_w + offset_scale * (i*dilation_w - c_w + offset[n, ho, wo, 2*(g*K+k)])
        y = ho*stride_h - pad_h + c_h + offset_scale * (j*dilation_h - c_h + offset[n, ho, wo, 2*(g*K+k) + 1])
        out[n, ho, wo, g*Cg + c] = sum_k mask[n, ho, wo, g*K + k] * B2(input[n, :, :, g*Cg + c], y, x)

    with ``Cg = group_channels`` and ``c_w = dilation_w*(kernel_w - 1) // 2`` (the same for ``c_h``):
    the kernel's window scaled by ``offset_scale`` about its centre, and the offsets too. ``K =
    kernel_h*kernel_w``, less the centre point ``(kernel_w // 2, kernel_h // 2)`` if
    ``remove_center``. The mask is used as given (the module's softmax over the ``K`` points is
    outside the operator).

    Args:
        input: ``(N, H, W, group*group_channels)`` float32 or float64, NumPy or CuPy.
        offset: ``(N, Ho, Wo, group*K*2)``, ``(x, y)`` per point; cast to the input's dtype.
        mask: ``(N, Ho, Wo, group*K)``; cast to the input's dtype.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w: the convolution's
            (``Ho = (H + 2*pad_h - (dilation_h*(kernel_h - 1) + 1)) // stride_h + 1``).
        group, group_channels: the groups and their channels.
        offset_scale: the factor of the window and the offsets.
        remove_center: leave out the kernel's centre point.

    Returns:
        ``(N, Ho, Wo, group*group_channels)`` array of the input's kind and dtype.
    """
    options = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
               group_channels, offset_scale, remove_center)
    input, geometry, offset, mask = _dcnv3_arguments(input, offset, mask, options)
    return _forward(input, geometry, offset, mask)


def dcnv3_backward(grad_output, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                   dilation_h, dilation_w, group, group_channels, offset_scale=1.0, remove_center=False, *,
                   wanted=None):
    """Gradients of ``dcnv3`` with respect to ``input``, ``offset`` and ``mask``, the true derivatives
    of its forward: the offset gradient is ``mask * offset_scale *`` the derivative of rule B2 summed
    over the group's channels (0 for a sample outside B2's support), the mask gradient the sum of the
    samples times ``grad_output``.

    Args:
        grad_output: ``(N, Ho, Wo, group*group_channels)`` gradient of the output.
        input, offset, mask and the options: as given to the forward.
        wanted: the gradients to compute, some of ``("input", "offset", "mask")``; None for all.

    Returns:
        ``(grad_input, grad_offset, grad_mask)`` in the shapes of the arguments; a gradient not wanted
        is None.
    """
    options = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
               group_channels, offset_scale, remove_center)
    wanted = _checks.wanted(wanted, ("input", "offset", "mask"))
    input, geometry, offset, mask = _dcnv3_arguments(input, offset, mask, options)
    grad_input, grad_offset, grad_mask = _backward(grad_output, input, geometry, offset, mask, wanted)
    points = (input.shape[0], *geometry.output, geometry.group * geometry.points)
    return (grad_input, grad_offset.reshape(points[:3] + (2 * points[3],)) if "offset" in wanted else None,
            grad_mask.reshape(points) if "mask" in wanted else None)


def _dcnv4_arguments(input, offset_mask, options):
    """``(input, geometry, offset_mask, offset, mask)``: the packed array checked, and views of it."""
    input, geometry = _input(input, options)
    images, (out_h, out_w), group, points = input.shape[0], geometry.output, geometry.group, geometry.points
    used = 3 * group * points
    offset_mask = _float_array(offset_mask, input, "offset_mask", (images, out_h, out_w, used),
                               "(N, Ho, Wo, P)", longer=True)
    if isinstance(offset_mask, np.ndarray) and not offset_mask.flags.writeable:
        offset_mask = offset_mask.copy()  # its offsets' view then has the layout of a writable one's
    offset, mask = _unpacked(offset_mask, geometry)
    return (input, geometry, offset_mask, offset.astype(input.dtype, copy=False),
            mask.astype(input.dtype, copy=False))


def _unpacked(offset_mask, geometry):
    """Views of dcnv4's packed ``offset_mask (N, Ho, Wo, P)``: ``(offset (N, Ho, Wo, G, K, 2), mask (N,
    Ho, Wo, G, K))`` (each splits the last axis of a slice: always a view)."""
    images, (out_h, out_w) = offset_mask.shape[0], geometry.output
    group, points = geometry.group, geometry.points
    packed = offset_mask[..., :3 * group * points].reshape(images, out_h, out_w, group, 3 * points)
    return packed[..., :2 * points].reshape(images, out_h, out_w, group, points, 2), packed[..., 2 * points:]


def dcnv4(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
          group, group_channels, offset_scale=1.0, remove_center=False):
    """The core of DCNv4 (Xiong et al., "Efficient Deformable ConvNets: Rethinking Dynamic and Sparse
    Operator for Vision Applications", CVPR 2024, https://arxiv.org/abs/2401.06197), as its
    ``DCNv4Function`` (less the ``im2col_step``): ``dcnv3`` with the offsets and the masks packed in one
    array, the aggregation weights unbounded (DCNv4's module applies no softmax).

    Group ``g``'s ``3*K`` values of ``offset_mask[n, ho, wo]`` start at ``3*K*g``: the ``(x, y)``
    offsets of its ``K`` points, then their ``K`` masks::

        offset[n, ho, wo, 2*(g*K + k) + t] = offset_mask[n, ho, wo, 3*K*g + 2*k + t]     (t = 0: x, 1: y)
        mask[n, ho, wo, g*K + k]           = offset_mask[n, ho, wo, 3*K*g + 2*K + k]
        out = dcnv3(input, offset, mask, ...)

    The last axis may be longer than ``3*K*group`` (DCNv4's module pads it to a multiple of 8); the
    values past ``3*K*group`` are not read.

    Args:
        input: ``(N, H, W, group*group_channels)`` float32 or float64, NumPy or CuPy.
        offset_mask: ``(N, Ho, Wo, P)``, ``P >= 3*K*group``; cast to the input's dtype.
        kernel_h ... remove_center: as ``dcnv3``'s.

    Returns:
        ``(N, Ho, Wo, group*group_channels)`` array of the input's kind and dtype.
    """
    options = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
               group_channels, offset_scale, remove_center)
    input, geometry, _, offset, mask = _dcnv4_arguments(input, offset_mask, options)
    return _forward(input, geometry, offset, mask)


def dcnv4_backward(grad_output, input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                   dilation_h, dilation_w, group, group_channels, offset_scale=1.0, remove_center=False, *,
                   wanted=None):
    """Gradients of ``dcnv4`` with respect to ``input`` and ``offset_mask`` (``dcnv3_backward``'s,
    packed as the forward's arguments; 0 for the values past ``3*K*group``).

    Args:
        grad_output: ``(N, Ho, Wo, group*group_channels)`` gradient of the output.
        input, offset_mask and the options: as given to the forward.
        wanted: the gradients to compute, some of ``("input", "offset_mask")``; None for both.

    Returns:
        ``(grad_input, grad_offset_mask)``; a gradient not wanted is None.
    """
    options = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
               group_channels, offset_scale, remove_center)
    wanted = _checks.wanted(wanted, ("input", "offset_mask"))
    input, geometry, offset_mask, offset, mask = _dcnv4_arguments(input, offset_mask, options)
    inner = {"input"} & wanted | ({"offset", "mask"} if "offset_mask" in wanted else set())
    if "offset_mask" in wanted and _backend.target_of(input) == "cpu":
        grad_offset_mask = np.empty(offset_mask.shape, input.dtype)
        grad_offset_mask[..., 3 * geometry.group * geometry.points:] = 0
        into = _unpacked(grad_offset_mask, geometry)  # written by the kernel
        return _backward(grad_output, input, geometry, offset, mask, inner, into)[0], grad_offset_mask
    grad_input, grad_offset, grad_mask = _backward(grad_output, input, geometry, offset, mask, inner)
    if "offset_mask" not in wanted:
        return grad_input, None
    xp = _backend.array_module(input)
    images, (out_h, out_w), group, points = input.shape[0], geometry.output, geometry.group, geometry.points
    packed = xp.concatenate([grad_offset.reshape(images, out_h, out_w, group, 2 * points), grad_mask],
                            axis=-1).reshape(images, out_h, out_w, 3 * group * points)
    if offset_mask.shape[3] == packed.shape[3]:
        return grad_input, packed
    grad_offset_mask = xp.zeros(offset_mask.shape, input.dtype)
    grad_offset_mask[..., :packed.shape[3]] = packed
    return grad_input, grad_offset_mask
