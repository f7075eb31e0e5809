"""Deformable convolution v1/v2 as torchvision computes it: docs/operators.md, deform_conv2d."""
import numpy as np

from .bilinear import b2, b2_gradient, b2_scatter


def _pair(value):
    return (value, value) if np.isscalar(value) else tuple(value)


def _samples(input, offset, mask, kernel, stride, padding, dilation):
    """Every sample of the convolution: ``{(n, c, i, j, oy, ox): (y, x, m, g)}`` (``g`` the offset
    group, ``m`` its mask value) and the output size."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, _pair(stride), _pair(padding), _pair(dilation)
    batch, channels, height, width = input.shape
    out_h = (height + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    out_w = (width + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    groups = offset.shape[1] // (2 * kh * kw) if offset is not None else (
        mask.shape[1] // (kh * kw) if mask is not None else 1)
    samples = {}
    for n in range(batch):
        for c in range(channels):
            g = c // (channels // groups)
            for i in range(kh):
                for j in range(kw):
                    tap = g * kh * kw + i * kw + j
                    for oy in range(out_h):
                        for ox in range(out_w):
                            y = oy * sh - ph + i * dh
                            x = ox * sw - pw + j * dw
                            if offset is not None:
                                y += offset[n, 2 * tap, oy, ox]
                                x += offset[n, 2 * tap + 1, oy, ox]
                            m = mask[n, tap, oy, ox] if mask is not None else 1.0
                            samples[n, c, i, j, oy, ox] = y, x, m, g
    return samples, (out_h, out_w)


def _weight_groups(input, weight):
    groups = input.shape[1] // weight.shape[1]
    return groups, weight.shape[0] // groups, weight.shape[1]


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    samples, (out_h, out_w) = _samples(input, offset, mask, weight.shape[2:], stride, padding, dilation)
    groups, out_per_group, in_per_group = _weight_groups(input, weight)
    values = np.zeros((input.shape[0], input.shape[1]) + weight.shape[2:] + (out_h, out_w))
    for (n, c, i, j, oy, ox), (y, x, m, _) in samples.items():
        values[n, c, i, j, oy, ox] = m * b2(input[n, c], y, x)
    out = np.zeros((input.shape[0], weight.shape[0], out_h, out_w))
    for o in range(weight.shape[0]):
        first = (o // out_per_group) * in_per_group
        for c in range(in_per_group):
            for i in range(weight.shape[2]):
                for j in range(weight.shape[3]):
                    out[:, o] += weight[o, c, i, j] * values[:, first + c, i, j]
    if bias is not None:
        out += np.asarray(bias)[None, :, None, None]
    return out


def deform_conv2d_backward(grad_output, input, offset, weight, stride=1, padding=0, dilation=1,
                           mask=None, wanted=None):
    """``(grad_input, grad_offset, grad_weight, grad_bias, grad_mask)`` of
    ``sum(grad_output * deform_conv2d(...))``; None for an absent offset or mask (``wanted`` is
    accepted, as the operator's, and ignored)."""
    samples, _ = _samples(input, offset, mask, weight.shape[2:], stride, padding, dilation)
    groups, out_per_group, in_per_group = _weight_groups(input, weight)
    grad_input = np.zeros(input.shape)
    grad_offset = None if offset is None else np.zeros(offset.shape)
    grad_mask = None if mask is None else np.zeros(mask.shape)
    grad_weight = np.zeros(weight.shape)
    kh, kw = weight.shape[2:]
    for (n, c, i, j, oy, ox), (y, x, m, g) in samples.items():
        wg = c // in_per_group
        outputs = range(wg * out_per_group, (wg + 1) * out_per_group)
        c_local = c - wg * in_per_group
        # d out[n, o, oy, ox] / d sample = weight[o, c_local, i, j]
        grad_sample = sum(grad_output[n, o, oy, ox] * weight[o, c_local, i, j] for o in outputs)
        value = b2(input[n, c], y, x)
        for o in outputs:
            grad_weight[o, c_local, i, j] += grad_output[n, o, oy, ox] * m * value
        b2_scatter(grad_input[n, c], y, x, grad_sample * m)
        tap = g * kh * kw + i * kw + j
        if offset is not None:
            dy, dx = b2_gradient(input[n, c], y, x)
            grad_offset[n, 2 * tap, oy, ox] += grad_sample * m * dy
            grad_offset[n, 2 * tap + 1, oy, ox] += grad_sample * m * dx
        if mask is not None:
            grad_mask[n, tap, oy, ox] += grad_sample * value
    return grad_input, grad_offset, grad_weight, grad_output.sum(axis=(0, 2, 3)), grad_mask
