"""deform_conv2d and its backward at the array level, and the pieces they are made of.

The pieces can be used on their own (an ordinary convolution is ``im2col`` without offsets followed by
``grouped_matmul``):

* ``im2col(input, kernel_size, ...)``: the ``(N, C*kh*kw, Ho, Wo)`` column array, with optional
  offsets and mask (``offset=None``: no offsets, and no zero offset array is made);
* ``col2im(grad_columns, input_shape, kernel_size, ...)``: its adjoint, the input gradient;
* ``grouped_matmul(weight, columns)``: ``(N, C_out, Ho, Wo)`` from a ``(C_out, C_in/groups, kh, kw)``
  weight (the BLAS: ``_backend.matmul``).
"""
import contextlib
import math

import numpy as np

from .. import _backend
from ..kernels import deform_conv as deform_conv_kernels
from ..kernels.deform_conv import KERNELS
from . import _checks

__all__ = ["deform_conv2d", "deform_conv2d_backward", "im2col", "col2im", "grouped_matmul", "output_size"]

# The column buffer holds at most this many elements (or one image's columns, if that is more):
# deform_conv2d and its backward process the batch in chunks of images that fit.
COLUMN_BUFFER_ELEMENTS = 1 << 24

# On the cpu the backward works on channels-last columns (kernels/deform_conv.py) where there are at
# least this many output pixels (over the batch) per output channel: it costs two reordered copies of
# the weight and of its gradient, worth their time where the samples outnumber the weight (at 64
# channels of 64x64, 1.5x faster; at 512 channels of 7x7, slower).
CHANNELS_LAST_SAMPLES = 1


@contextlib.contextmanager
def backward_by_planes():
    """Inside the block the cpu backward works on the planes' column arrays whatever the shapes (the
    other schedule, for warmup and the tests)."""
    global CHANNELS_LAST_SAMPLES
    previous, CHANNELS_LAST_SAMPLES = CHANNELS_LAST_SAMPLES, math.inf
    try:
        yield
    finally:
        CHANNELS_LAST_SAMPLES = previous


def _array(value, name, ndim, layout, dtype):
    """``value`` as a C-contiguous float array of ``ndim`` dimensions, cast to ``dtype``."""
    array = _backend.as_array(value)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {tuple(array.shape)}")
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array, got {array.dtype}")
    return _checks.contiguous(array, dtype)


class _Geometry:
    """Kernel size, stride, padding, dilation and the output size of one convolution."""

    def __init__(self, input_shape, kernel_size, stride, padding, dilation):
        self.kernel = _checks.pair(kernel_size, "kernel_size")
        self.stride = _checks.pair(stride, "stride")
        self.padding = _checks.pair(padding, "padding", minimum=0)
        self.dilation = _checks.pair(dilation, "dilation")
        self.taps = self.kernel[0] * self.kernel[1]
        self.output = tuple((size + 2 * pad - (dil * (k - 1) + 1)) // step + 1 for size, pad, dil, k, step
                            in zip(input_shape[2:], self.padding, self.dilation, self.kernel, self.stride))
        if min(self.output) < 1:
            raise ValueError(f"the output would be empty: input of size {tuple(input_shape[2:])} with "
                             f"kernel {self.kernel}, padding {self.padding}, dilation {self.dilation} "
                             f"gives {self.output}")

    def arguments(self):
        return self.kernel + self.stride + self.padding + self.dilation


def output_size(input_shape, kernel_size, stride=1, padding=0, dilation=1):
    """``(Ho, Wo)`` of a convolution of an ``(N, C, H, W)`` input: ``Ho = (H + 2*pad_h - (dil_h*(kh-1)
    + 1)) // stride_h + 1``; ValueError where it would be empty."""
    return _Geometry(input_shape, kernel_size, stride, padding, dilation).output


def _offset_and_mask(offset, mask, input, geometry):
    """Checked offset and mask (either may be None) and the number of offset groups."""
    batch, channels = input.shape[:2]
    groups = 1
    if offset is not None:
        offset = _array(offset, "offset", 4, "(N, 2*offset_groups*kh*kw, Ho, Wo)", input.dtype)
        if offset.shape[1] == 0 or offset.shape[1] % (2 * geometry.taps):
            raise ValueError(f"offset.shape[1] = {offset.shape[1]} must be 2 * offset_groups * kh * kw, "
                             f"a positive multiple of {2 * geometry.taps}")
        groups = offset.shape[1] // (2 * geometry.taps)
        if channels % groups:
            raise ValueError(f"offset.shape[1] = {offset.shape[1]} gives {groups} offset groups, which "
                             f"must divide the {channels} input channels")
        _checks.same_shape(offset, (batch, offset.shape[1]) + geometry.output, "offset")
    if mask is not None:
        mask = _array(mask, "mask", 4, "(N, offset_groups*kh*kw, Ho, Wo)", input.dtype)
        if offset is None and mask.shape[1] and mask.shape[1] % geometry.taps == 0:
            groups = mask.shape[1] // geometry.taps
        if mask.shape[1] != groups * geometry.taps or channels % groups:
            raise ValueError(f"mask.shape[1] = {mask.shape[1]} must be offset_groups * kh * kw = "
                             f"{groups} * {geometry.taps} (and offset_groups must divide the "
                             f"{channels} input channels)")
        _checks.same_shape(mask, (batch, mask.shape[1]) + geometry.output, "mask")
    return offset, mask, groups


def _weight(weight, input):
    """Checked weight and the number of weight groups ``C_in // weight.shape[1]``."""
    weight = _array(weight, "weight", 4, "(C_out, C_in/groups, kh, kw)", input.dtype)
    channels = input.shape[1]
    if weight.shape[1] == 0 or channels % weight.shape[1] or channels < weight.shape[1]:
        raise ValueError(f"weight.shape[1] = {weight.shape[1]} must divide the {channels} input "
                         f"channels (groups = C_in // weight.shape[1], at least 1)")
    groups = channels // weight.shape[1]
    if weight.shape[0] % groups:
        raise ValueError(f"weight.shape[0] = {weight.shape[0]} must be a multiple of groups = {groups} "
                         f"(C_in {channels} // weight.shape[1] {weight.shape[1]})")
    if min(weight.shape[2:]) < 1:
        raise ValueError(f"weight.shape[2:] = {tuple(weight.shape[2:])}: the kernel must be at least 1x1")
    return weight, groups


def _placeholder(array, like):
    """``array``, or for None a never-read empty array of ``like``'s kind and dtype."""
    if array is not None:
        return array
    return _backend.array_module(like).zeros((0, 0, 0, 0), dtype=like.dtype)


def _im2col_into(target, input, offset, mask, geometry, columns):
    _backend.run(target, KERNELS["im2col"][target], columns.size, input, _placeholder(offset, input),
                 _placeholder(mask, input), *geometry.arguments(), offset is not None, mask is not None,
                 columns)


def _col2im_into(target, grad_columns, offset, mask, geometry, grad_input):
    kernel, size = _backend.scatter_kernel(KERNELS["col2im"], target, grad_columns.size,
                                           grad_input.shape[0] * grad_input.shape[1])
    _backend.run(target, kernel, size, grad_columns, _placeholder(offset, grad_input),
                 _placeholder(mask, grad_input), *geometry.arguments(), offset is not None,
                 mask is not None, grad_input)


def _grouped(array, groups, axis):
    """View ``array`` with its axis ``axis`` split into ``(groups, size // groups)``."""
    shape = tuple(array.shape)
    return array.reshape(shape[:axis] + (groups, shape[axis] // groups) + shape[axis + 1:])


def _matmul_into(weight, columns, groups, out):
    """``out[b, g] = weight[g] @ columns[b, g]`` on the grouped, flattened views."""
    w = _grouped(weight.reshape(weight.shape[0], -1), groups, 0)  # (G, C_out/G, C_in/G*taps)
    cols = _grouped(columns.reshape(columns.shape[0], columns.shape[1], -1), groups, 1)
    _backend.matmul(w, cols, _grouped(out.reshape(out.shape[0], out.shape[1], -1), groups, 1))


def im2col(input, kernel_size, stride=1, padding=0, dilation=1, offset=None, mask=None):
    """Deformable im2col: ``columns[n, c*kh*kw + i*kw + j, oy, ox] = mask * B2(input[n, c], y, x)``
    with ``y = oy*stride_h - pad_h + i*dil_h + offset_y`` (rule B2 of docs/operators.md; offsets and
    mask of the channel's offset group, as ``deform_conv2d`` reads them; none given: offset 0, mask 1).

    Returns the ``(N, C*kh*kw, Ho, Wo)`` column array (all of it: no chunking here).
    """
    input = _checks.features(input)
    _backend.target_of(input, offset, mask, names=("input", "offset", "mask"))
    geometry = _Geometry(input.shape, kernel_size, stride, padding, dilation)
    offset, mask, _ = _offset_and_mask(offset, mask, input, geometry)
    target = _backend.target_of(input)
    xp = _backend.array_module(input)
    columns = xp.zeros((input.shape[0], input.shape[1] * geometry.taps) + geometry.output, input.dtype)
    if columns.size:
        _im2col_into(target, input, offset, mask, geometry, columns)
    return columns


def col2im(grad_columns, input_shape, kernel_size, stride=1, padding=0, dilation=1, offset=None,
           mask=None):
    """The adjoint of ``im2col`` in its input: the gradient of ``sum(grad_columns * im2col(input,
    ...))`` with respect to ``input`` of shape ``input_shape``."""
    grad_columns = _checks.features(grad_columns, "grad_columns")
    input_shape = _checks.input_shape(input_shape, plane_bound=False)
    xp = _backend.array_module(grad_columns)
    grad_input = xp.zeros(input_shape, grad_columns.dtype)
    _backend.target_of(grad_columns, offset, mask, names=("grad_columns", "offset", "mask"))
    geometry = _Geometry(input_shape, kernel_size, stride, padding, dilation)
    offset, mask, _ = _offset_and_mask(offset, mask, grad_input, geometry)
    _checks.same_shape(grad_columns, (input_shape[0], input_shape[1] * geometry.taps) + geometry.output,
                       "grad_columns")
    if grad_columns.size:
        _col2im_into(_backend.target_of(grad_columns), grad_columns, offset, mask, geometry, grad_input)
    return grad_input


def grouped_matmul(weight, columns):
    """``(N, C_out, Ho, Wo)`` output of a grouped convolution from its ``(N, C_in*kh*kw, Ho, Wo)``
    columns and its ``(C_out, C_in/groups, kh, kw)`` weight: ``out[n, g] = W[g] @ columns[n, g]``
    per weight group ``g``, flattened over the kernel and the output pixels."""
    columns = _checks.features(columns, "columns")
    weight = _array(weight, "weight", 4, "(C_out, C_in/groups, kh, kw)", columns.dtype)
    per_group = weight.shape[1] * weight.shape[2] * weight.shape[3]
    if per_group == 0 or columns.shape[1] % per_group or weight.shape[0] % (columns.shape[1] // per_group):
        raise ValueError(f"columns.shape[1] = {columns.shape[1]} must be groups * C_in/groups * kh * kw "
                         f"for weight of shape {tuple(weight.shape)}")
    out = _backend.array_module(columns).empty((columns.shape[0], weight.shape[0]) + columns.shape[2:],
                                               columns.dtype)
    _matmul_into(weight, columns, columns.shape[1] // per_group, out)
    return out


def _arguments(input, offset, weight, bias, stride, padding, dilation, mask):
    """Checked arrays and geometry of a deform_conv2d call."""
    input = _checks.features(input)
    _backend.target_of(input, offset, weight, bias, mask,
                       names=("input", "offset", "weight", "bias", "mask"))
    weight, groups = _weight(weight, input)
    geometry = _Geometry(input.shape, weight.shape[2:], stride, padding, dilation)
    offset, mask, offset_groups = _offset_and_mask(offset, mask, input, geometry)
    if bias is not None:
        bias = _array(bias, "bias", 1, "(C_out,)", input.dtype)
        _checks.same_shape(bias, (weight.shape[0],), "bias")
    return input, offset, weight, bias, mask, groups, offset_groups, geometry


def _chunk(input, geometry):
    """Images per chunk: as many as keep the column buffer within ``COLUMN_BUFFER_ELEMENTS``."""
    per_image = input.shape[1] * geometry.taps * geometry.output[0] * geometry.output[1]
    return max(1, min(input.shape[0], COLUMN_BUFFER_ELEMENTS // max(per_image, 1)))


def _slice(array, start, stop):
    return None if array is None else array[start:stop]


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable convolution v1 (Dai et al., 2017, https://arxiv.org/abs/1703.06211) and, with a
    ``mask``, v2 (Zhu et al., 2019, https://arxiv.org/abs/1811.11168), as torchvision::

        out[n, o, oy, ox] = bias[o] + sum_{c in group(o), i < kh, j < kw} weight[o, c', i, j]
                            * mask[n, g*kh*kw + i*kw + j, oy, ox] * B2(input[n, c], y, x)
        y = oy*stride_h - pad_h + i*dil_h + offset[n, 2*(g*kh*kw + i*kw + j), oy, ox]
        x = ox*stride_w - pad_w + j*dil_w + offset[n, 2*(g*kh*kw + i*kw + j) + 1, oy, ox]

    with ``g`` the offset group of channel ``c`` (``G = offset.shape[1] // (2*kh*kw)`` groups of
    ``C_in // G`` channels), weight groups ``C_in // weight.shape[1]`` and rule B2 of docs/operators.md (zero
    outside ``(-1, H) x (-1, W)``, zero-padded corners). Computed as a deformable im2col followed by a
    grouped matrix product (the BLAS), in chunks of images.

    Memory: besides the output, one column buffer of ``chunk * C_in * kh * kw * Ho * Wo`` elements, at
    most ``max(COLUMN_BUFFER_ELEMENTS = 2**24, C_in * kh * kw * Ho * Wo)`` (64 MiB in float32 unless
    one image needs more).

    Args:
        input: ``(N, C_in, H, W)`` float32 or float64, NumPy or CuPy.
        offset: ``(N, 2*G*kh*kw, Ho, Wo)``, y before x for each tap; None for no offsets (an
            ordinary convolution, or a modulated one with ``mask``).
        weight: ``(C_out, C_in/groups, kh, kw)``.
        bias: ``(C_out,)`` or None.
        stride, padding, dilation: ints or ``(h, w)`` pairs.
        mask: ``(N, G*kh*kw, Ho, Wo)`` modulation (DCNv2), not limited to [0, 1]; None for v1.

    offset, weight, bias and mask are cast to the input's dtype. Differs from torchvision in the
    gradient only (``deform_conv2d_backward``).

    Returns:
        ``(N, C_out, Ho, Wo)`` with ``Ho = (H + 2*pad_h - (dil_h*(kh-1) + 1)) // stride_h + 1``.
    """
    input, offset, weight, bias, mask, groups, _, geometry = _arguments(
        input, offset, weight, bias, stride, padding, dilation, mask)
    target = _backend.target_of(input)
    xp = _backend.array_module(input)
    batch = input.shape[0]
    output = xp.zeros((batch, weight.shape[0]) + geometry.output, input.dtype)
    chunk = _chunk(input, geometry)
    buffer = xp.empty((chunk, input.shape[1] * geometry.taps) + geometry.output, input.dtype)
    for start in range(0, batch if weight.shape[0] else 0, chunk):
        stop = min(start + chunk, batch)
        columns = buffer[:stop - start]
        _im2col_into(target, input[start:stop], _slice(offset, start, stop), _slice(mask, start, stop),
                     geometry, columns)
        _matmul_into(weight, columns, groups, output[start:stop])
    if bias is not None:
        output += bias[:, None, None]
    return output


def deform_conv2d_backward(grad_output, input, offset, weight, stride=1, padding=0, dilation=1,
                           mask=None, *, wanted=None):
    """Gradients of ``deform_conv2d`` (its bias does not enter them).

    Returns ``(grad_input, grad_offset, grad_weight, grad_bias, grad_mask)``; a gradient not
    ``wanted`` (some of ``("input", "offset", "weight", "bias", "mask")``; None for all) is None, and
    so are ``grad_offset`` and ``grad_mask`` when ``offset`` or ``mask`` is None. ``grad_input`` by the
    adjoint of the im2col (``col2im``), ``grad_weight`` and ``grad_bias`` by matrix products and sums,
    the offset and mask gradients per element from the derivative of rule B2 in the sample coordinate.

    The offset gradient is the true derivative of the forward: 0 where the sample lies outside
    ``(-1, H) x (-1, W)``, where the forward is 0. torchvision's coordinate weight lacks that test and
    gives a non-zero value at ``y = -1`` or ``x = -1`` exactly (pytorch/vision#6885).

    Memory: the column buffer of ``deform_conv2d`` (reused for the column gradient); on the cpu, for
    the input gradient, a table of the sample cells, ``chunk * offset_groups * kh * kw * Ho * Wo``
    times two int64 and three floats (a ninth of the column buffer at 64 channels in float32), or,
    where ``N * Ho * Wo >= C_out`` (``CHANNELS_LAST_SAMPLES``), two zero-bordered channels-last
    copies of the input's size (the input and its gradient) and a reordered copy of the weight.
    """
    input, offset, weight, _, mask, groups, offset_groups, geometry = _arguments(
        input, offset, weight, None, stride, padding, dilation, mask)
    wanted = _checks.wanted(wanted, ("input", "offset", "weight", "bias", "mask"))
    want_input, want_weight = "input" in wanted, "weight" in wanted
    want_coordinates = (offset is not None and "offset" in wanted) or (mask is not None and "mask" in wanted)
    output_pixels = geometry.output[0] * geometry.output[1]
    grad_output = _checks.features(grad_output, "grad_output")
    _backend.target_of(input, grad_output, names=("input", "grad_output"))
    _checks.same_shape(grad_output, (input.shape[0], weight.shape[0]) + geometry.output, "grad_output")
    grad_output = grad_output.astype(input.dtype, copy=False)
    target = _backend.target_of(input)
    xp = _backend.array_module(input)
    batch = input.shape[0]
    grad_input = xp.zeros_like(input) if want_input else None
    # the coordinate gradient kernels write both the offset and the mask gradient of what is given
    grad_offset = xp.zeros_like(offset) if offset is not None and want_coordinates else None
    grad_mask = xp.zeros_like(mask) if mask is not None and want_coordinates else None
    grad_weight = xp.zeros_like(weight) if want_weight else None
    grad_bias = grad_output.sum(axis=(0, 2, 3)) if "bias" in wanted else None
    # (no output channel: no gradient reaches the input, the offsets or the mask)
    if (want_input or want_weight or want_coordinates) and weight.shape[0] and input.size:
        on_cpu = target == "cpu" and batch * output_pixels >= CHANNELS_LAST_SAMPLES * weight.shape[0]
        (_backward_on_cpu if on_cpu else _backward_by_planes)(
            grad_output, input, offset, mask, weight, groups, offset_groups, geometry, grad_input,
            grad_offset, grad_mask, grad_weight)
    return (grad_input, grad_offset if "offset" in wanted else None, grad_weight, grad_bias,
            grad_mask if "mask" in wanted else None)


def _backward_by_planes(grad_output, input, offset, mask, weight, groups, offset_groups, geometry,
                        grad_input, grad_offset, grad_mask, grad_weight):
    """``deform_conv2d_backward``'s loop on the column arrays of the im2col, into the zero-filled
    gradients given (None: not wanted)."""
    target = _backend.target_of(input)
    xp = _backend.array_module(input)
    batch = input.shape[0]
    output_pixels = geometry.output[0] * geometry.output[1]
    want_coordinates = grad_offset is not None or grad_mask is not None
    chunk = _chunk(input, geometry)
    buffer = xp.empty((chunk, input.shape[1] * geometry.taps) + geometry.output, input.dtype)
    weight_t = _grouped(weight.reshape(weight.shape[0], -1), groups, 0).swapaxes(1, 2)
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        chunk_offset, chunk_mask = _slice(offset, start, stop), _slice(mask, start, stop)
        columns = buffer[:stop - start]
        grad_grouped = _grouped(grad_output[start:stop].reshape(stop - start, weight.shape[0], -1),
                                groups, 1)  # (nb, G, C_out/G, Ho*Wo)
        cols = _grouped(columns.reshape(stop - start, columns.shape[1], -1), groups, 1)
        if grad_weight is not None:
            _im2col_into(target, input[start:stop], chunk_offset, chunk_mask, geometry, columns)
            grad_weight_grouped = _grouped(grad_weight.reshape(weight.shape[0], -1), groups, 0)
            for image in range(stop - start):
                _backend.matmul(grad_grouped[image], cols[image].swapaxes(1, 2), grad_weight_grouped,
                                add=True)
        if grad_input is None and not want_coordinates:
            continue
        _backend.matmul(weight_t, grad_grouped, cols)  # the buffer now holds the column gradient
        if grad_input is not None:
            _col2im_into(target, columns, chunk_offset, chunk_mask, geometry, grad_input[start:stop])
        if want_coordinates:
            _backend.run(target, KERNELS["coordinate_gradient"][target],
                         (stop - start) * offset_groups * geometry.taps * output_pixels, columns,
                         input[start:stop], _placeholder(chunk_offset, input),
                         _placeholder(chunk_mask, input), *geometry.arguments(), offset is not None,
                         mask is not None, _placeholder(_slice(grad_offset, start, stop), input),
                         _placeholder(_slice(grad_mask, start, stop), input))


def _backward_on_cpu(grad_output, input, offset, mask, weight, groups, offset_groups, geometry, grad_input,
                     grad_offset, grad_mask, grad_weight):
    """``deform_conv2d_backward``'s loop with channels-last column arrays (kernels/deform_conv.py), into
    the zero-filled gradients given (None: not wanted): each image's columns ``(Ho*Wo, C_in*kh*kw)``,
    each weight group's ``kh*kw*C_in/groups`` of them tap by tap, and the weight's columns in that
    order."""
    batch, channels = input.shape[:2]
    pixels = geometry.output[0] * geometry.output[1]
    group_channels = channels // groups
    per_group = (weight.shape[0] // groups, geometry.taps * group_channels)  # (C_out/G, taps*C_in/G)
    by_channels = (groups, per_group[0], group_channels, geometry.taps)
    by_taps = (groups, per_group[0], geometry.taps, group_channels)
    # (assigned: ascontiguousarray of the swapped view copies in its order, ten times slower)
    weight_taps = np.empty((groups,) + per_group, weight.dtype)
    weight_taps.reshape(by_taps)[...] = weight.reshape(by_channels).swapaxes(2, 3)
    # the weight gradient tap by tap in its own zero-filled memory, reordered at the end
    grad_weight_taps = None if grad_weight is None else grad_weight.reshape(weight_taps.shape)
    bordered = deform_conv_kernels.channels_last_bordered(input)
    grad_bordered = None if grad_input is None else np.zeros_like(bordered)
    want_coordinates = grad_offset is not None or grad_mask is not None
    arguments = geometry.arguments() + (offset is not None, mask is not None)
    chunk = _chunk(input, geometry)
    buffer = np.empty(chunk * pixels * channels * geometry.taps, input.dtype)
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        images = stop - start
        chunk_offset, chunk_mask = (_placeholder(_slice(a, start, stop), input) for a in (offset, mask))
        columns = buffer[:images * pixels * channels * geometry.taps].reshape(images, pixels, -1)
        grouped_columns = columns.reshape(images, pixels, groups, per_group[1]).swapaxes(1, 2)
        grad_grouped = grad_output[start:stop].reshape(images, groups, per_group[0], pixels)
        if grad_weight is not None:
            deform_conv_kernels.deform_im2col_channels_last_cpu(
                input[start:stop], bordered[start:stop], chunk_offset, chunk_mask, *arguments,
                *geometry.output, group_channels, columns)
            for image in range(images):
                _backend.matmul(grad_grouped[image], grouped_columns[image], grad_weight_taps, add=True)
        if grad_input is None and not want_coordinates:
            continue
        _backend.matmul(grad_grouped.swapaxes(2, 3), weight_taps, grouped_columns)  # the column gradient
        if grad_input is not None:
            deform_conv_kernels.deform_col2im_channels_last_cpu(
                columns, input[start:stop], chunk_offset, chunk_mask, *arguments, *geometry.output,
                group_channels, grad_bordered[start:stop])
        if want_coordinates:
            deform_conv_kernels.deform_coordinate_gradient_channels_last_cpu(
                columns, input[start:stop], bordered[start:stop], chunk_offset, chunk_mask, *arguments,
                group_channels, _placeholder(_slice(grad_offset, start, stop), input),
                _placeholder(_slice(grad_mask, start, stop), input))
    if grad_weight is not None:
        weight_taps[...] = grad_weight_taps  # (no longer needed)
        grad_weight.reshape(by_channels)[...] = weight_taps.reshape(by_taps).swapaxes(2, 3)
    if grad_input is not None:
        deform_conv_kernels.channels_first_inside(grad_bordered, grad_input)
