"""The three bilinear sampling rules of docs/operators.md, with their derivatives in the sample
coordinate.

Plain Python, callable from the kernels of both targets (and from Python, as the CUDA simulator does).
``features`` is an ``(N, C, H, W)`` array; ``(y, x)`` a sample position in its pixel grid. Every
constant goes through ``features.dtype.type`` so that float32 kernels do float32 arithmetic. The rules
are not interchangeable: each reproduces the border behaviour of the operators that use it.

Each rule's value, derivative and scatter serve both targets' bodies; the forms on tabulated rows and
columns (flat plane offsets) and on channels-last images, marked "cpu only", serve the cpu fast paths
and give the same sums in the same order.
"""
from .._backend import add_4d, ceil_int, floor_int, jitable, jitable_inlined_on_cpu


# -- B1: the RoI-Align rule (roi_align, ps_roi_align, deform_roi_pool) -----------------------------

@jitable
def b1_axis(features, coordinate, size):
    """Rule B1 along one axis of ``size`` pixels, for a coordinate in ``[-1, size]``: ``(low, high,
    fraction, free)``. Clamps up to 0 and to the last pixel; ``free`` is False where it clamps."""
    f = features.dtype.type
    free = coordinate >= f(0)
    coordinate = max(coordinate, f(0))
    low = int(coordinate)
    if low >= size - 1:
        return size - 1, size - 1, f(0), False
    return low, low + 1, coordinate - f(low), free


@jitable
def b1_weights(features, y, x):
    """Corners and weights of rule B1 at ``(y, x)``.

    Returns ``(y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh, y_free, x_free)``: the value is
    ``w_ll*F[y_low, x_low] + w_lh*F[y_low, x_high] + w_hl*F[y_high, x_low] + w_hh*F[y_high, x_high]``.
    Outside ``[-1, H] x [-1, W]`` (NaN included) all weights are 0. A coordinate in ``[-1, 0)`` or
    ``[H-1, H]`` is clamped to the border, so the value does not depend on it there: ``y_free`` is
    False then (same for x), which is what the coordinate derivative needs.
    """
    f = features.dtype.type
    zero = f(0)
    if not (y >= f(-1) and y <= f(features.shape[2]) and x >= f(-1) and x <= f(features.shape[3])):
        return 0, 0, 0, 0, zero, zero, zero, zero, False, False
    y_low, y_high, ly, y_free = b1_axis(features, y, features.shape[2])
    x_low, x_high, lx, x_free = b1_axis(features, x, features.shape[3])
    hy = f(1) - ly
    hx = f(1) - lx
    return y_low, x_low, y_high, x_high, hy * hx, hy * lx, ly * hx, ly * lx, y_free, x_free


@jitable_inlined_on_cpu
def b1_interpolate(features, n, c, y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh):
    """The value at corners and weights from ``b1_weights``; 0 without reading when all weights are 0
    (a sample outside the map: its corners might hold inf or NaN)."""
    value = features.dtype.type(0)
    if w_ll + w_lh + w_hl + w_hh != value:
        value = (w_ll * features[n, c, y_low, x_low] + w_lh * features[n, c, y_low, x_high]
                 + w_hl * features[n, c, y_high, x_low] + w_hh * features[n, c, y_high, x_high])
    return value


@jitable
def b1_value(features, n, c, y, x):
    """Rule B1: the bilinear value of ``features[n, c]`` at ``(y, x)``."""
    y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh, _, _ = b1_weights(features, y, x)
    return b1_interpolate(features, n, c, y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh)


@jitable_inlined_on_cpu
def b1_axis_weights(features, coordinate, size):
    """Rule B1 along one axis, for drivers that tabulate the rows and the columns of a separable
    sampling grid: ``(low, high, w_low, w_high, free)``, with weights 0 outside ``[-1, size]`` (NaN
    included) and ``free`` as ``b1_weights`` gives it. The corner weights of ``b1_weights`` are the
    products of a row's and a column's weights, so the tabulated value is the same, bit for bit."""
    f = features.dtype.type
    if not (coordinate >= f(-1) and coordinate <= f(size)):
        return 0, 0, f(0), f(0), False
    low, high, fraction, free = b1_axis(features, coordinate, size)
    return low, high, f(1) - fraction, fraction, free


# Cpu drivers that tabulate a separable grid's rows as offsets ``y*W`` into a flat feature plane
# ``features[n, c].ravel()`` (unsigned, so that no negative-index wraparound is computed) read the four
# corners without 4-d index arithmetic. A sample outside the map has a row or a column whose weights
# are both 0, and contributes nothing: the drivers skip such rows and columns (``b1_axis_inside``) and
# call these for the others. Same corner weights and the same sums as b1_interpolate and b1_scatter,
# so the same values bit for bit.

@jitable_inlined_on_cpu
def b1_axis_inside(weights, s):
    """Whether tabulated row or column ``s`` (``weights[s]`` from ``b1_axis_weights``) lies in the
    map."""
    return weights[s, 0] + weights[s, 1] != weights.dtype.type(0)


@jitable_inlined_on_cpu
def b1_interpolate_rows(plane, row_low, row_high, hy, ly, x_low, x_high, hx, lx):
    """``b1_interpolate`` from a row's (as plane offsets) and a column's ``b1_axis_weights``, both in
    the map."""
    return (hy * hx * plane[row_low + x_low] + hy * lx * plane[row_low + x_high]
            + ly * hx * plane[row_high + x_low] + ly * lx * plane[row_high + x_high])


@jitable_inlined_on_cpu
def b1_scatter_rows(grad_plane, row_low, row_high, hy, ly, x_low, x_high, hx, lx, grad):
    """``b1_scatter`` from a row's (as plane offsets) and a column's ``b1_axis_weights``, both in the
    map; cpu only (a plain add)."""
    grad_plane[row_low + x_low] += grad * (hy * hx)
    grad_plane[row_low + x_high] += grad * (hy * lx)
    grad_plane[row_high + x_low] += grad * (ly * hx)
    grad_plane[row_high + x_high] += grad * (ly * lx)


# Cpu drivers that pool a bin for every channel at once read a channels-last image ``pixels[h*W + w,
# c]`` (see ``roi_align.channels_last``), so that their innermost loop runs over contiguous channels
# and is vectorised. Per channel, the same products and sums in the same order as
# b1_interpolate_rows, so the same values bit for bit.

@jitable_inlined_on_cpu(by_numba=True)
def b1_add_rows_channels(total, pixels, first, row_low, row_high, hy, ly, x_low, x_high, hx, lx):
    """``total[j] += b1_interpolate_rows(plane of channel first + j, ...)`` for every ``j <
    len(total)``, from a channels-last image ``pixels``; cpu only."""
    w_ll, w_lh, w_hl, w_hh = hy * hx, hy * lx, ly * hx, ly * lx
    v_ll, v_lh = pixels[row_low + x_low], pixels[row_low + x_high]
    v_hl, v_hh = pixels[row_high + x_low], pixels[row_high + x_high]
    for j in range(total.shape[0]):
        c = first + j
        total[j] += w_ll * v_ll[c] + w_lh * v_lh[c] + w_hl * v_hl[c] + w_hh * v_hh[c]


@jitable_inlined_on_cpu(by_numba=True)
def b1_scatter_rows_channels(grad_pixels, first, last, grads, row_low, row_high, hy, ly, x_low, x_high,
                             hx, lx):
    """``b1_scatter_rows(grads[c - first])`` into channel ``c`` of a channels-last gradient, for every
    ``first <= c < last``; cpu only."""
    w_ll, w_lh, w_hl, w_hh = hy * hx, hy * lx, ly * hx, ly * lx
    g_ll, g_lh = grad_pixels[row_low + x_low], grad_pixels[row_low + x_high]
    g_hl, g_hh = grad_pixels[row_high + x_low], grad_pixels[row_high + x_high]
    for c in range(first, last):
        grad = grads[c - first]
        g_ll[c] += grad * w_ll
        g_lh[c] += grad * w_lh
        g_hl[c] += grad * w_hl
        g_hh[c] += grad * w_hh


@jitable_inlined_on_cpu(by_numba=True)
def b1_scatter_pixel_channels(grad_pixels, first, last, grads, pixel, weight):
    """``grads[c - first] * weight`` added to channel ``c`` of pixel ``pixel`` of a channels-last
    gradient, for every ``first <= c < last``; cpu only."""
    row = grad_pixels[pixel]
    for c in range(first, last):
        row[c] += grads[c - first] * weight


@jitable
def b1_coordinate_gradient(features, n, c, y, x):
    """Derivatives ``(d value/dy, d value/dx)`` of ``b1_value``; 0 where B1 clamps the coordinate."""
    y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh, y_free, x_free = b1_weights(features, y, x)
    return b1_corner_gradient(features, n, c, y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh,
                              y_free, x_free)


@jitable
def b1_corner_gradient(features, n, c, y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh, y_free,
                       x_free):
    """``b1_coordinate_gradient`` from the corners, weights and flags of ``b1_weights`` (drivers that
    reuse one sample's weights across channels)."""
    zero = features.dtype.type(0)
    if not (y_free or x_free):
        return zero, zero
    return b1_gradient_of_corners(features[n, c, y_low, x_low], features[n, c, y_low, x_high],
                                  features[n, c, y_high, x_low], features[n, c, y_high, x_high],
                                  w_ll, w_lh, w_hl, w_hh, y_free, x_free)


@jitable_inlined_on_cpu
def b1_gradient_of_corners(v_ll, v_lh, v_hl, v_hh, w_ll, w_lh, w_hl, w_hh, y_free, x_free):
    """``(d value/dy, d value/dx)`` of rule B1 for corner values ``v`` and the weights and flags of
    ``b1_weights``. Linear in the corner values: for sums over channels of ``g_c * v_c`` it gives the
    sum of ``g_c`` times each channel's derivative."""
    zero = type(w_ll)(0)
    # w_ll + w_lh = 1 - ly etc.: recover the one-dimensional weights from the corner weights.
    hy = w_ll + w_lh
    ly = w_hl + w_hh
    hx = w_ll + w_hl
    lx = w_lh + w_hh
    dy = hx * (v_hl - v_ll) + lx * (v_hh - v_lh) if y_free else zero
    dx = hy * (v_lh - v_ll) + ly * (v_hh - v_hl) if x_free else zero
    return dy, dx


@jitable_inlined_on_cpu
def b1_scatter(grad_features, n, c, y_low, x_low, y_high, x_high, w_ll, w_lh, w_hl, w_hh, grad,
               atomic=True):
    """The adjoint of ``b1_interpolate``: add ``grad`` times the corner weights of ``b1_weights`` into
    ``grad_features[n, c]`` (atomically on the GPU unless ``atomic`` is False, see ``add_4d``);
    nothing for a sample outside the map."""
    if w_ll + w_lh + w_hl + w_hh != grad_features.dtype.type(0):
        add_4d(grad_features, n, c, y_low, x_low, grad * w_ll, atomic)
        add_4d(grad_features, n, c, y_low, x_high, grad * w_lh, atomic)
        add_4d(grad_features, n, c, y_high, x_low, grad * w_hl, atomic)
        add_4d(grad_features, n, c, y_high, x_high, grad * w_hh, atomic)


# -- B2: the deformable-convolution rule (deform_conv2d) -------------------------------------------

@jitable_inlined_on_cpu
def b2_corner(features, n, c, y, x):
    """``features[n, c, y, x]``, or 0 outside the map: B2 pads with zeros."""
    if y >= 0 and y < features.shape[2] and x >= 0 and x < features.shape[3]:
        return features[n, c, y, x]
    return features.dtype.type(0)


@jitable_inlined_on_cpu
def b2_cell(features, y, x):
    """``b2_cell_of`` in the planes of ``(N, C, H, W)`` features."""
    return b2_cell_of(features.shape[2], features.shape[3], y, x)


@jitable_inlined_on_cpu
def b2_cell_of(height, width, y, x):
    """``(inside, y_low, x_low, ly, lx)`` of rule B2 at ``(y, x)`` in a ``height x width`` map:
    whether ``-1 < y < H`` and ``-1 < x < W`` (False for NaN), the top-left corner ``floor`` and the
    fractions past it."""
    f = type(y)
    if not (y > f(-1) and y < f(height) and x > f(-1) and x < f(width)):
        return False, 0, 0, f(0), f(0)
    y_low = floor_int(y)
    x_low = floor_int(x)
    return True, y_low, x_low, y - f(y_low), x - f(x_low)


@jitable_inlined_on_cpu
def b2_combine(v_ll, v_lh, v_hl, v_hh, ly, lx):
    """The bilinear value in a cell of ``b2_cell`` from its corner values (0 for those outside the
    map) and its fractions."""
    f = type(ly)
    hy = f(1) - ly
    hx = f(1) - lx
    return hy * hx * v_ll + hy * lx * v_lh + ly * hx * v_hl + ly * lx * v_hh


@jitable_inlined_on_cpu
def b2_gradient_of_corners(v_ll, v_lh, v_hl, v_hh, ly, lx):
    """``(d value/dy, d value/dx)`` of ``b2_combine`` in its cell."""
    f = type(ly)
    dy = (f(1) - lx) * (v_hl - v_ll) + lx * (v_hh - v_lh)
    dx = (f(1) - ly) * (v_lh - v_ll) + ly * (v_hh - v_hl)
    return dy, dx


@jitable_inlined_on_cpu
def b2_interpolate(features, n, c, y_low, x_low, ly, lx):
    """The bilinear value of ``features[n, c]`` in the cell of ``b2_cell``; corners outside count 0."""
    return b2_combine(b2_corner(features, n, c, y_low, x_low), b2_corner(features, n, c, y_low, x_low + 1),
                      b2_corner(features, n, c, y_low + 1, x_low),
                      b2_corner(features, n, c, y_low + 1, x_low + 1), ly, lx)


@jitable_inlined_on_cpu
def b2_value(features, n, c, y, x):
    """Rule B2: 0 unless ``-1 < y < H`` and ``-1 < x < W``; corners outside the map count as 0."""
    inside, y_low, x_low, ly, lx = b2_cell(features, y, x)
    if not inside:
        return features.dtype.type(0)
    return b2_interpolate(features, n, c, y_low, x_low, ly, lx)


@jitable_inlined_on_cpu
def b2_coordinate_gradient(features, n, c, y, x):
    """Derivatives ``(d value/dy, d value/dx)`` of ``b2_value``; 0 outside its support."""
    f = features.dtype.type
    inside, y_low, x_low, ly, lx = b2_cell(features, y, x)
    if not inside:
        return f(0), f(0)
    return b2_gradient_of_corners(
        b2_corner(features, n, c, y_low, x_low), b2_corner(features, n, c, y_low, x_low + 1),
        b2_corner(features, n, c, y_low + 1, x_low), b2_corner(features, n, c, y_low + 1, x_low + 1),
        ly, lx)


@jitable_inlined_on_cpu
def b2_scatter_corner(grad_features, n, c, y, x, value, atomic=True):
    """``grad_features[n, c, y, x] += value`` (atomically on the GPU unless ``atomic`` is False),
    nothing outside the map."""
    if y >= 0 and y < grad_features.shape[2] and x >= 0 and x < grad_features.shape[3]:
        add_4d(grad_features, n, c, y, x, value, atomic)


@jitable_inlined_on_cpu
def b2_scatter(grad_features, n, c, y, x, grad, atomic=True):
    """The adjoint of ``b2_value``: add ``grad`` times the B2 corner weights of ``(y, x)`` into
    ``grad_features[n, c]``."""
    inside, y_low, x_low, ly, lx = b2_cell(grad_features, y, x)
    if inside:
        b2_scatter_cell(grad_features, n, c, y_low, x_low, ly, lx, grad, atomic)


@jitable_inlined_on_cpu
def b2_scatter_cell(grad_features, n, c, y_low, x_low, ly, lx, grad, atomic=True):
    """``b2_scatter`` in the cell of ``b2_cell``: ``grad`` times its corner weights, into the corners
    that lie in the map."""
    f = grad_features.dtype.type
    hy = f(1) - ly
    hx = f(1) - lx
    b2_scatter_corner(grad_features, n, c, y_low, x_low, hy * hx * grad, atomic)
    b2_scatter_corner(grad_features, n, c, y_low, x_low + 1, hy * lx * grad, atomic)
    b2_scatter_corner(grad_features, n, c, y_low + 1, x_low, ly * hx * grad, atomic)
    b2_scatter_corner(grad_features, n, c, y_low + 1, x_low + 1, ly * lx * grad, atomic)


# -- B3: the MXNet deformable position-sensitive rule (deform_psroi_pool) --------------------------

@jitable_inlined_on_cpu
def b3_inside(features, y, x):
    """Whether rule B3 takes a sample at ``(y, x)``: inside ``[-0.5, H-0.5] x [-0.5, W-0.5]``."""
    f = features.dtype.type
    half = f(0.5)
    return (y >= -half and y <= f(features.shape[2]) - half
            and x >= -half and x <= f(features.shape[3]) - half)


@jitable_inlined_on_cpu
def b3_cell(features, y, x):
    """Rule B3's cell at a sample that ``b3_inside`` accepts: clamp into the map; ``(y_low, x_low,
    y_high, x_high, ly, lx)``, floor and ceil and the fractions past the floor."""
    f = features.dtype.type
    y = min(max(y, f(0)), f(features.shape[2] - 1))
    x = min(max(x, f(0)), f(features.shape[3] - 1))
    y_low = floor_int(y)
    x_low = floor_int(x)
    return y_low, x_low, ceil_int(y), ceil_int(x), y - f(y_low), x - f(x_low)


@jitable_inlined_on_cpu
def b3_interpolate(features, n, c, y_low, x_low, y_high, x_high, ly, lx):
    """The bilinear value of ``features[n, c]`` in the cell of ``b3_cell``."""
    f = features.dtype.type
    hy = f(1) - ly
    hx = f(1) - lx
    return (hy * hx * features[n, c, y_low, x_low] + hy * lx * features[n, c, y_low, x_high]
            + ly * hx * features[n, c, y_high, x_low] + ly * lx * features[n, c, y_high, x_high])


@jitable_inlined_on_cpu
def b3_cell_gradient(features, n, c, y_low, x_low, y_high, x_high, ly, lx):
    """Derivatives ``(d value/dy, d value/dx)`` of ``b3_interpolate`` in the cell of ``b3_cell``: 0
    along an axis where floor and ceil meet, which is where B3 clamps (to 0 or the last pixel) and
    at integer coordinates (where B3 is not differentiable, and 0 is neither one-sided derivative in
    general)."""
    return b3_gradient_of_corners(features[n, c, y_low, x_low], features[n, c, y_low, x_high],
                                  features[n, c, y_high, x_low], features[n, c, y_high, x_high],
                                  y_low, x_low, y_high, x_high, ly, lx)


@jitable_inlined_on_cpu
def b3_gradient_of_corners(v_ll, v_lh, v_hl, v_hh, y_low, x_low, y_high, x_high, ly, lx):
    """``b3_cell_gradient`` for the cell's corner values ``v``."""
    f = type(ly)
    dy = (f(1) - lx) * (v_hl - v_ll) + lx * (v_hh - v_lh) if y_high > y_low else f(0)
    dx = (f(1) - ly) * (v_lh - v_ll) + ly * (v_hh - v_hl) if x_high > x_low else f(0)
    return dy, dx


@jitable_inlined_on_cpu
def b3_scatter(grad_features, n, c, y_low, x_low, y_high, x_high, ly, lx, grad, atomic=True):
    """The adjoint of ``b3_interpolate``: add ``grad`` times its corner weights into
    ``grad_features[n, c]`` (atomically on the GPU unless ``atomic`` is False)."""
    f = grad_features.dtype.type
    hy = f(1) - ly
    hx = f(1) - lx
    add_4d(grad_features, n, c, y_low, x_low, grad * (hy * hx), atomic)
    add_4d(grad_features, n, c, y_low, x_high, grad * (hy * lx), atomic)
    add_4d(grad_features, n, c, y_high, x_low, grad * (ly * hx), atomic)
    add_4d(grad_features, n, c, y_high, x_high, grad * (ly * lx), atomic)


# Cpu drivers over a channels-last image ``pixels[h*W + w, c]`` (as for B1 above): channels
# ``first <= c < last`` at once, with B1's helpers (B3's cell has the same corner weights), so the
# same products and sums per channel as b3_interpolate and b3_scatter.

@jitable_inlined_on_cpu
def b3_add_cell_channels(total, pixels, first, width, y_low, x_low, y_high, x_high, ly, lx):
    """``total[j] += b3_interpolate(channel first + j, ...)`` for every ``j < len(total)``; cpu only."""
    f = total.dtype.type
    b1_add_rows_channels(total, pixels, first, y_low * width, y_high * width, f(1) - ly, ly, x_low,
                         x_high, f(1) - lx, lx)


@jitable_inlined_on_cpu
def b3_scatter_cell_channels(grad_pixels, first, last, grads, width, y_low, x_low, y_high, x_high,
                             ly, lx):
    """``b3_scatter(grads[c - first])`` into channel ``c`` for every ``first <= c < last``; cpu only
    (a plain add)."""
    f = grad_pixels.dtype.type
    b1_scatter_rows_channels(grad_pixels, first, last, grads, y_low * width, y_high * width,
                             f(1) - ly, ly, x_low, x_high, f(1) - lx, lx)


@jitable_inlined_on_cpu
def b3_value(features, n, c, y, x):
    """Rule B3 at a sample that ``b3_inside`` accepts: clamp into the map, interpolate floor/ceil."""
    y_low, x_low, y_high, x_high, ly, lx = b3_cell(features, y, x)
    return b3_interpolate(features, n, c, y_low, x_low, y_high, x_high, ly, lx)


@jitable_inlined_on_cpu
def b3_coordinate_gradient(features, n, c, y, x):
    """Derivatives ``(d value/dy, d value/dx)`` of ``b3_value``: 0 where it clamps, and 0 at integer
    coordinates, where floor and ceil meet (see ``b3_cell_gradient``)."""
    y_low, x_low, y_high, x_high, ly, lx = b3_cell(features, y, x)
    return b3_cell_gradient(features, n, c, y_low, x_low, y_high, x_high, ly, lx)
