"""DCNv3 (InternImage, Wang et al. 2023) and DCNv4 (Xiong et al. 2024) as their CUDA extensions compute
them: docs/operators.md, dcnv3 and dcnv4. Each point samples its group's channels with rule B2 (zero
padding) at a position in pixels of the unpadded input."""
import numpy as np

from .bilinear import b2, b2_gradient, b2_scatter


def taps(kernel_h, kernel_w, remove_center):
    """The kernel's points ``(i, j)`` (column, row) in the order of the offsets' and masks' last axis:
    columns outer, rows inner, the centre ``(kernel_w // 2, kernel_h // 2)`` left out if
    ``remove_center``."""
    return [(i, j) for i in range(kernel_w) for j in range(kernel_h)
            if not (remove_center and i == kernel_w // 2 and j == kernel_h // 2)]


def _samples(input, offset, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
             group, group_channels, offset_scale, remove_center):
    """Per ``(n, ho, wo, g, k)``: the group's ``(H, W, group_channels)`` view of ``input`` and the
    sample ``(y, x)``."""
    images, out_h, out_w = offset.shape[:3]
    points = taps(kernel_h, kernel_w, remove_center)
    offset = offset.reshape(images, out_h, out_w, group, len(points), 2)
    centre_y = dilation_h * (kernel_h - 1) // 2
    centre_x = dilation_w * (kernel_w - 1) // 2
    for n, ho, wo, g in np.ndindex(images, out_h, out_w, group):
        planes = input[n, :, :, g * group_channels:(g + 1) * group_channels]
        for k, (i, j) in enumerate(points):
            x = (wo * stride_w - pad_w + centre_x
                 + offset_scale * (i * dilation_w - centre_x + float(offset[n, ho, wo, g, k, 0])))
            y = (ho * stride_h - pad_h + centre_y
                 + offset_scale * (j * dilation_h - centre_y + float(offset[n, ho, wo, g, k, 1])))
            yield (n, ho, wo, g, k), planes, y, x


def dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
          group, group_channels, offset_scale=1.0, remove_center=False):
    images, out_h, out_w = offset.shape[:3]
    points = len(taps(kernel_h, kernel_w, remove_center))
    mask = mask.reshape(images, out_h, out_w, group, points)
    out = np.zeros((images, out_h, out_w, group, group_channels))
    for (n, ho, wo, g, k), planes, y, x in _samples(
            input, offset, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
            group, group_channels, offset_scale, remove_center):
        for c in range(group_channels):
            out[n, ho, wo, g, c] += mask[n, ho, wo, g, k] * b2(planes[:, :, c], y, x)
    return out.reshape(images, out_h, out_w, group * group_channels)


def dcnv3_backward(grad_output, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                   dilation_h, dilation_w, group, group_channels, offset_scale=1.0, remove_center=False,
                   wanted=None):
    """Gradients of ``sum(grad_output * dcnv3(...))``: (input, offset, mask), all of them (``wanted`` is
    accepted, as the operator's, and ignored)."""
    images, out_h, out_w = offset.shape[:3]
    points = len(taps(kernel_h, kernel_w, remove_center))
    mask = mask.reshape(images, out_h, out_w, group, points)
    grad_output = grad_output.reshape(images, out_h, out_w, group, group_channels)
    grad_input = np.zeros(input.shape)
    grad_offset = np.zeros((images, out_h, out_w, group, points, 2))
    grad_mask = np.zeros((images, out_h, out_w, group, points))
    for (n, ho, wo, g, k), planes, y, x in _samples(
            input, offset, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
            group, group_channels, offset_scale, remove_center):
        grad_planes = grad_input[n, :, :, g * group_channels:(g + 1) * group_channels]
        weight = mask[n, ho, wo, g, k]
        for c in range(group_channels):
            grad = grad_output[n, ho, wo, g, c]
            b2_scatter(grad_planes[:, :, c], y, x, grad * weight)
            dy, dx = b2_gradient(planes[:, :, c], y, x)
            grad_offset[n, ho, wo, g, k, 0] += grad * weight * offset_scale * dx
            grad_offset[n, ho, wo, g, k, 1] += grad * weight * offset_scale * dy
            grad_mask[n, ho, wo, g, k] += grad * b2(planes[:, :, c], y, x)
    return (grad_input, grad_offset.reshape(offset.shape),
            grad_mask.reshape(images, out_h, out_w, group * points))


def unpack(offset_mask, group, points):
    """DCNv4's ``offset_mask (N, Ho, Wo, P)`` as DCNv3's ``(offset, mask)``: group ``g``'s ``3*points``
    values from ``3*points*g`` on, the ``(x, y)`` offsets of its points, then their masks; the last
    ``P - 3*points*group`` values unused."""
    images, out_h, out_w = offset_mask.shape[:3]
    packed = offset_mask[..., :3 * points * group].reshape(images, out_h, out_w, group, 3 * points)
    return (packed[..., :2 * points].reshape(images, out_h, out_w, 2 * points * group),
            packed[..., 2 * points:].reshape(images, out_h, out_w, points * group))


def dcnv4(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
          group, group_channels, offset_scale=1.0, remove_center=False):
    offset, mask = unpack(offset_mask, group, len(taps(kernel_h, kernel_w, remove_center)))
    return dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                 dilation_w, group, group_channels, offset_scale, remove_center)


def dcnv4_backward(grad_output, input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                   dilation_h, dilation_w, group, group_channels, offset_scale=1.0, remove_center=False,
                   wanted=None):
    """Gradients of ``sum(grad_output * dcnv4(...))``: (input, offset_mask), the unused values' 0."""
    points = len(taps(kernel_h, kernel_w, remove_center))
    offset, mask = unpack(offset_mask, group, points)
    grad_input, grad_offset, grad_mask = dcnv3_backward(
        grad_output, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
        dilation_w, group, group_channels, offset_scale, remove_center)
    images, out_h, out_w = offset_mask.shape[:3]
    grad_offset_mask = np.zeros(offset_mask.shape)
    grad_packed = grad_offset_mask[..., :3 * points * group].reshape(-1, group, 3 * points)
    grad_packed[:, :, :2 * points] = grad_offset.reshape(-1, group, 2 * points)
    grad_packed[:, :, 2 * points:] = grad_mask.reshape(-1, group, points)
    grad_offset_mask[..., :3 * points * group] = grad_packed.reshape(images, out_h, out_w, 3 * points * group)
    return grad_input, grad_offset_mask
