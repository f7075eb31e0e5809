"""RoI Pool (Fast R-CNN, Girshick 2015) as torchvision computes it: docs/operators.md, roi_pool. The
integer box geometry is shared with PS RoI Pool (reference/ps_roi.py)."""
import math
from fractions import Fraction

import numpy as np


def round_half_away(value):
    """C's ``round``: halves away from zero, in exact rational arithmetic."""
    rounded = math.floor(abs(Fraction(value)) + Fraction(1, 2))
    return rounded if value >= 0 else -rounded


def pool_windows(roi, spatial_scale, pooled_h, pooled_w, height, width, plus_one):
    """Batch index and, per bin ``(ph, pw)``, the row and column ranges of its window (empty ranges
    for an empty bin or a box with a non-finite coordinate)."""
    batch = int(roi[0])
    scaled = [float(v) * spatial_scale for v in roi[1:]]
    if not all(math.isfinite(v) for v in scaled):
        return batch, {(ph, pw): (range(0), range(0)) for ph in range(pooled_h) for pw in range(pooled_w)}
    x1, y1, x2, y2 = (round_half_away(v) for v in scaled)
    roi_w = max(x2 - x1 + plus_one, 1)
    roi_h = max(y2 - y1 + plus_one, 1)
    bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w

    def axis(start, bin_size, index, size):
        low = min(max(math.floor(index * bin_size) + start, 0), size)
        high = min(max(math.ceil((index + 1) * bin_size) + start, 0), size)
        return range(low, high)

    return batch, {(ph, pw): (axis(y1, bin_h, ph, height), axis(x1, bin_w, pw, width))
                   for ph in range(pooled_h) for pw in range(pooled_w)}


def roi_pool(input, rois, output_size, spatial_scale=1.0):
    """The maximum of each bin (0 if empty)."""
    return roi_pool_with_argmax(input, rois, output_size, spatial_scale)[0]


def roi_pool_with_argmax(input, rois, output_size, spatial_scale=1.0):
    """``(output, argmax)``: the maximum of each bin (0 if empty) and its flat index ``h*W + w``
    (-1 if empty); the first of equal maxima in row-major order."""
    pooled_h, pooled_w = output_size
    channels, height, width = input.shape[1:]
    out = np.zeros((len(rois), channels, pooled_h, pooled_w))
    argmax = np.full(out.shape, -1, dtype=np.int64)
    for k, roi in enumerate(rois):
        batch, windows = pool_windows(roi, spatial_scale, pooled_h, pooled_w, height, width, 1)
        for (ph, pw), (rows, columns) in windows.items():
            for c in range(channels):
                for h in rows:
                    for w in columns:
                        if argmax[k, c, ph, pw] == -1 or input[batch, c, h, w] > out[k, c, ph, pw]:
                            out[k, c, ph, pw] = input[batch, c, h, w]
                            argmax[k, c, ph, pw] = h * width + w
    return out, argmax


def roi_pool_backward(grad_output, rois, argmax, input_shape):
    """Gradient of ``sum(grad_output * roi_pool(...))``: each output's gradient at its argmax."""
    grad_input = np.zeros(input_shape)
    width = input_shape[3]
    for k, roi in enumerate(rois):
        for c, ph, pw in np.ndindex(*grad_output.shape[1:]):
            if argmax[k, c, ph, pw] >= 0:
                h, w = divmod(int(argmax[k, c, ph, pw]), width)
                grad_input[int(roi[0]), c, h, w] += grad_output[k, c, ph, pw]
    return grad_input
