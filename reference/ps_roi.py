"""PS RoI Pool and PS RoI Align (R-FCN, Dai et al. 2016) as torchvision computes them, except where
docs/operators.md says we differ: docs/operators.md, ps_roi_pool and ps_roi_align."""
import numpy as np

from .bilinear import b1, b1_scatter
from .roi_align import _samples
from .roi_pool import pool_windows


def input_channel(c, ph, pw, pooled_h, pooled_w):
    return (c * pooled_h + ph) * pooled_w + pw


def ps_roi_pool(input, rois, output_size, spatial_scale=1.0):
    pooled_h, pooled_w = output_size
    channels = input.shape[1] // (pooled_h * pooled_w)
    out = np.zeros((len(rois), channels, pooled_h, pooled_w))
    for k, roi in enumerate(rois):
        batch, windows = pool_windows(roi, spatial_scale, pooled_h, pooled_w, *input.shape[2:], 0)
        for (ph, pw), (rows, columns) in windows.items():
            for c in range(channels):
                if len(rows) and len(columns):
                    plane = input[batch, input_channel(c, ph, pw, pooled_h, pooled_w)]
                    out[k, c, ph, pw] = plane[rows.start:rows.stop, columns.start:columns.stop].mean()
    return out


def ps_roi_pool_backward(grad_output, rois, input_shape, spatial_scale=1.0):
    pooled_h, pooled_w = grad_output.shape[2:]
    grad_input = np.zeros(input_shape)
    for k, roi in enumerate(rois):
        batch, windows = pool_windows(roi, spatial_scale, pooled_h, pooled_w, *input_shape[2:], 0)
        for (ph, pw), (rows, columns) in windows.items():
            for c in range(grad_output.shape[1]):
                area = len(rows) * len(columns)
                if area:
                    plane = grad_input[batch, input_channel(c, ph, pw, pooled_h, pooled_w)]
                    window = plane[rows.start:rows.stop, columns.start:columns.stop]
                    window += grad_output[k, c, ph, pw] / area
    return grad_input


def ps_roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """roi_align's samples (aligned, no size clamp, an empty grid gives 0) on the mapped channel."""
    pooled_h, pooled_w = output_size
    channels = input.shape[1] // (pooled_h * pooled_w)
    out = np.zeros((len(rois), channels, pooled_h, pooled_w))
    for k, roi in enumerate(rois):
        batch, bins = _samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned=True)
        for (ph, pw), (points, count) in bins.items():
            for c in range(channels):
                plane = input[batch, input_channel(c, ph, pw, pooled_h, pooled_w)]
                out[k, c, ph, pw] = sum(b1(plane, y, x) for y, x in points) / count
    return out


def ps_roi_align_backward(grad_output, rois, input_shape, spatial_scale=1.0, sampling_ratio=-1):
    pooled_h, pooled_w = grad_output.shape[2:]
    grad_input = np.zeros(input_shape)
    for k, roi in enumerate(rois):
        batch, bins = _samples(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned=True)
        for (ph, pw), (points, count) in bins.items():
            for c in range(grad_output.shape[1]):
                plane = grad_input[batch, input_channel(c, ph, pw, pooled_h, pooled_w)]
                for y, x in points:
                    b1_scatter(plane, y, x, grad_output[k, c, ph, pw] / count)
    return grad_input
