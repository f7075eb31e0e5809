"""The three bilinear rules of docs/operators.md, one sample at a time, on a 2-d ``(H, W)`` plane."""
import math

import numpy as np


def b1(plane, y, x):
    """RoI-Align rule: 0 outside [-1, H] x [-1, W]; clamp up to 0; border rows/columns take the border."""
    height, width = plane.shape
    if not (plane.size and -1 <= y <= height and -1 <= x <= width):  # (a map without pixels: 0)
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * plane[y0, x0] + (1 - ly) * lx * plane[y0, x1]
            + ly * (1 - lx) * plane[y1, x0] + ly * lx * plane[y1, x1])


def b1_scatter(grad_plane, y, x, grad):
    """Add ``grad`` times the B1 weights of ``(y, x)`` into ``grad_plane`` (the adjoint of ``b1``)."""
    height, width = grad_plane.shape
    if not (-1 <= y <= height and -1 <= x <= width):
        return
    # b1 is linear in the plane: probe it with unit planes around the sample (its support).
    rows = range(max(int(math.floor(y)) - 1, 0), min(int(math.floor(y)) + 3, height))
    columns = range(max(int(math.floor(x)) - 1, 0), min(int(math.floor(x)) + 3, width))
    for yy in rows:
        for xx in columns:
            basis = np.zeros(grad_plane.shape)
            basis[yy, xx] = 1.0
            weight = b1(basis, y, x)
            if weight:
                grad_plane[yy, xx] += grad * weight


def b2(plane, y, x):
    """Deformable-convolution rule: 0 unless -1 < y < H, -1 < x < W; corners outside are zeros."""
    height, width = plane.shape
    if not (-1 < y < height and -1 < x < width):
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0

    def corner(yy, xx):
        return plane[yy, xx] if 0 <= yy < height and 0 <= xx < width else 0.0

    return ((1 - ly) * (1 - lx) * corner(y0, x0) + (1 - ly) * lx * corner(y0, x0 + 1)
            + ly * (1 - lx) * corner(y0 + 1, x0) + ly * lx * corner(y0 + 1, x0 + 1))


def b2_scatter(grad_plane, y, x, grad):
    """Add ``grad`` times the B2 weights of ``(y, x)`` into ``grad_plane`` (the adjoint of ``b2``)."""
    height, width = grad_plane.shape
    if not (-1 < y < height and -1 < x < width):
        return
    for yy in range(max(math.floor(y), 0), min(math.floor(y) + 2, height)):
        for xx in range(max(math.floor(x), 0), min(math.floor(x) + 2, width)):
            basis = np.zeros(grad_plane.shape)
            basis[yy, xx] = 1.0
            grad_plane[yy, xx] += grad * b2(basis, y, x)


def b2_gradient(plane, y, x):
    """``(d b2/dy, d b2/dx)``: the derivative of the bilinear form inside the support, 0 outside."""
    height, width = plane.shape
    if not (-1 < y < height and -1 < x < width):
        return 0.0, 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0

    def corner(yy, xx):
        return plane[yy, xx] if 0 <= yy < height and 0 <= xx < width else 0.0

    dy = (1 - lx) * (corner(y0 + 1, x0) - corner(y0, x0)) + lx * (corner(y0 + 1, x0 + 1) - corner(y0, x0 + 1))
    dx = (1 - ly) * (corner(y0, x0 + 1) - corner(y0, x0)) + ly * (corner(y0 + 1, x0 + 1) - corner(y0 + 1, x0))
    return dy, dx


def b3(plane, y, x):
    """MXNet deformable-PS rule: None (not counted) outside [-0.5, H-0.5] x [-0.5, W-0.5]; otherwise
    clamp into the map and interpolate between floor and ceil."""
    height, width = plane.shape
    if not (plane.size and -0.5 <= y <= height - 0.5 and -0.5 <= x <= width - 0.5):
        return None
    y = min(max(y, 0.0), height - 1.0)
    x = min(max(x, 0.0), width - 1.0)
    y0, y1, x0, x1 = math.floor(y), math.ceil(y), math.floor(x), math.ceil(x)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * plane[y0, x0] + (1 - ly) * lx * plane[y0, x1]
            + ly * (1 - lx) * plane[y1, x0] + ly * lx * plane[y1, x1])


def _linear_gradient(plane, y, x, y0, y1, x0, x1):
    """``(d/dy, d/dx)`` of the bilinear interpolation between rows ``y0, y1`` and columns ``x0, x1``
    at ``(y, x)`` (the corners taken as they are)."""
    ly, lx = y - y0, x - x0
    dy = (1 - lx) * (plane[y1, x0] - plane[y0, x0]) + lx * (plane[y1, x1] - plane[y0, x1])
    dx = (1 - ly) * (plane[y0, x1] - plane[y0, x0]) + ly * (plane[y1, x1] - plane[y1, x0])
    return dy, dx


def b1_gradient(plane, y, x):
    """``(d b1/dy, d b1/dx)``: 0 outside the support and along an axis where b1 clamps (below 0, at
    or beyond the last pixel); the derivative from above at integer coordinates."""
    height, width = plane.shape
    if not (plane.size and -1 <= y <= height and -1 <= x <= width):
        return 0.0, 0.0
    y_free, x_free = 0 <= y < height - 1, 0 <= x < width - 1
    y, x = min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
    y0, x0 = min(int(y), height - 1), min(int(x), width - 1)
    dy, dx = _linear_gradient(plane, y, x, y0, min(y0 + 1, height - 1), x0, min(x0 + 1, width - 1))
    return (dy if y_free else 0.0), (dx if x_free else 0.0)


def b3_gradient(plane, y, x):
    """``(d b3/dy, d b3/dx)`` at a sample that b3 counts: 0 along an axis where it clamps or sits on
    an integer (floor = ceil there)."""
    height, width = plane.shape
    y_free, x_free = 0 < y < height - 1 and y != math.floor(y), 0 < x < width - 1 and x != math.floor(x)
    y, x = min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
    dy, dx = _linear_gradient(plane, y, x, math.floor(y), math.ceil(y), math.floor(x), math.ceil(x))
    return (dy if y_free else 0.0), (dx if x_free else 0.0)


def b3_scatter(grad_plane, y, x, grad):
    """Add ``grad`` times the b3 weights of a counted sample ``(y, x)`` into ``grad_plane``."""
    height, width = grad_plane.shape
    y, x = min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
    y0, y1, x0, x1 = math.floor(y), math.ceil(y), math.floor(x), math.ceil(x)
    ly, lx = y - y0, x - x0
    grad_plane[y0, x0] += grad * (1 - ly) * (1 - lx)
    grad_plane[y0, x1] += grad * (1 - ly) * lx
    grad_plane[y1, x0] += grad * ly * (1 - lx)
    grad_plane[y1, x1] += grad * ly * lx
