"""Precise RoI Pooling as a separable sum: numba_droi.ops.prroi_pool's docstring.

The interpolant is ``f(y, x) = sum_{h, w} F[h, w] hat(y - h) hat(x - w)`` with ``hat(t) = max(0, 1 -
|t|)``, so a bin's integral is ``sum_{h, w} F[h, w] Hy[h] Hx[w]``, ``Hy[h]`` the integral of
``hat(y - h)`` over the bin's rows (same for x); moving an edge ``e`` of the bin changes ``Hy[h]`` by
``+-hat(e - h)``."""
import math

import numpy as np


def _hat(t):
    return max(0.0, 1.0 - abs(t))


def _hat_integral(t):
    """The integral of ``hat`` from -inf to ``t``."""
    if t < -1:
        return 0.0
    if t < 0:
        return (t + 1) ** 2 / 2
    if t < 1:
        return 1 - (1 - t) ** 2 / 2
    return 1.0


def _bins(roi, spatial_scale, pooled_h, pooled_w):
    """Batch index and the bins' ``(y_start, y_end, x_start, x_end)`` by ``(ph, pw)``; None for a box
    with a non-finite coordinate."""
    x1, y1, x2, y2 = (float(v) * spatial_scale for v in roi[1:])
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return int(roi[0]), None
    bin_h, bin_w = max(y2 - y1, 0.0) / pooled_h, max(x2 - x1, 0.0) / pooled_w
    return int(roi[0]), {(ph, pw): (y1 + ph * bin_h, y1 + (ph + 1) * bin_h,
                                    x1 + pw * bin_w, x1 + (pw + 1) * bin_w)
                         for ph in range(pooled_h) for pw in range(pooled_w)}


def _weights(start, end, size):
    return np.array([_hat_integral(end - i) - _hat_integral(start - i) for i in range(size)])


def prroi_pool(input, rois, output_size, spatial_scale=1.0):
    pooled_h, pooled_w = output_size
    out = np.zeros((len(rois), input.shape[1], pooled_h, pooled_w))
    for k, roi in enumerate(rois):
        n, bins = _bins(roi, spatial_scale, pooled_h, pooled_w)
        for (ph, pw), (ys, ye, xs, xe) in (bins or {}).items():
            area = (ye - ys) * (xe - xs)
            if area > 0:
                hy, hx = _weights(ys, ye, input.shape[2]), _weights(xs, xe, input.shape[3])
                for c in range(input.shape[1]):
                    out[k, c, ph, pw] = hy @ input[n, c] @ hx / area
    return out


def prroi_pool_backward(grad_output, input, rois, spatial_scale=1.0, wanted=None):
    pooled_h, pooled_w = grad_output.shape[2:]
    height, width = input.shape[2:]
    grad_input, grad_rois = np.zeros(input.shape), np.zeros((len(rois), 5))
    for k, roi in enumerate(rois):
        n, bins = _bins(roi, spatial_scale, pooled_h, pooled_w)
        for (ph, pw), (ys, ye, xs, xe) in (bins or {}).items():
            area = (ye - ys) * (xe - xs)
            if not area > 0:
                continue
            hy, hx = _weights(ys, ye, height), _weights(xs, xe, width)
            # d Hx / d x_start = -hat(x_start - w), d Hx / d x_end = hat(x_end - w)
            dx_start = -np.array([_hat(xs - w) for w in range(width)])
            dx_end = np.array([_hat(xe - w) for w in range(width)])
            dy_start = -np.array([_hat(ys - h) for h in range(height)])
            dy_end = np.array([_hat(ye - h) for h in range(height)])
            # edges as functions of the box: x_start = x1 + pw/PW (x2 - x1), x_end = x1 + (pw+1)/PW (x2 - x1)
            a, b = pw / pooled_w, (pw + 1) / pooled_w
            c_, d = ph / pooled_h, (ph + 1) / pooled_h
            d_hx = {"x1": (1 - a) * dx_start + (1 - b) * dx_end, "x2": a * dx_start + b * dx_end}
            d_hy = {"y1": (1 - c_) * dy_start + (1 - d) * dy_end, "y2": c_ * dy_start + d * dy_end}
            d_area = {"x1": -(ye - ys) / pooled_w, "x2": (ye - ys) / pooled_w,
                      "y1": -(xe - xs) / pooled_h, "y2": (xe - xs) / pooled_h}
            for c in range(input.shape[1]):
                g = grad_output[k, c, ph, pw]
                plane = input[n, c]
                grad_input[n, c] += g / area * np.outer(hy, hx)
                value = hy @ plane @ hx / area
                derivatives = {"x1": hy @ plane @ d_hx["x1"], "x2": hy @ plane @ d_hx["x2"],
                               "y1": d_hy["y1"] @ plane @ hx, "y2": d_hy["y2"] @ plane @ hx}
                for column, name in zip((1, 2, 3, 4), ("x1", "y1", "x2", "y2")):
                    grad_rois[k, column] += (g * spatial_scale * (derivatives[name] - value * d_area[name])
                                             / area)
    return grad_input, grad_rois
