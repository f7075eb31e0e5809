"""Argument checks shared by the operators. Each runs on the host before any kernel launch and names
the argument and the bad value in its message."""
import numbers
import operator

import numpy as np

from .. import _backend
from ..kernels.roi_align import MAX_SAMPLING_RATIO

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def features(array, name="input", ndim=4, layout="(N, C, H, W)"):
    """``array`` as a C-contiguous float32/float64 array of ``ndim`` dimensions (named ``layout`` in
    the error); feature planes ``(N, C, H, W)`` are bounded by ``plane``."""
    array = _backend.as_array(array)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {tuple(array.shape)}")
    if array.dtype not in FLOAT_DTYPES:
        hint = (f" (half precision: compute in float32, {name}.astype(np.float32), and cast the result "
                "back)" if array.dtype.kind == "f" else "")
        raise TypeError(f"{name} must be float32 or float64, got {array.dtype}{hint}")
    if layout == "(N, C, H, W)":
        plane(array.shape, name)
    return contiguous(array)


# Kernels index a feature plane with 32-bit offsets (roi_pool's argmax, the cpu drivers' tables).
MAX_PLANE = 2 ** 31 - 1


def plane(shape, name):
    """Refuse feature planes of more than ``MAX_PLANE`` elements (a map of 46341 x 46341)."""
    if shape[2] * shape[3] > MAX_PLANE:
        raise ValueError(f"{name}'s feature planes must have at most 2**31 - 1 elements, got H*W = "
                         f"{shape[2]} * {shape[3]} = {shape[2] * shape[3]}")


BOXES = "[batch_index, x1, y1, x2, y2]"
ROTATED_BOXES = "[batch_index, cx, cy, w, h, angle]"


def rois(boxes, features_array, name="rois", features_name="input", layout=BOXES):
    """``boxes`` as a C-contiguous ``(K, 5)`` array (``(K, 6)`` for the ``layout`` ``ROTATED_BOXES``) of
    the features' dtype whose batch indices all lie in ``[0, N)``; box ``k`` reads image
    ``int(boxes[k, 0])`` of the boxes as given (a float64 index just below 1 is image 0, even where
    the features' float32 would round it to 1). ``features_name`` names the argument the features came
    from (a backward's ``grad_output``) in the error for arrays on different devices."""
    _backend.target_of(features_array, boxes, names=(features_name, name))
    given = _backend.as_array(boxes)
    columns = layout.count(",") + 1
    if given.ndim != 2 or given.shape[1] != columns:
        raise ValueError(f"{name} must have shape (K, {columns}) {layout}, got {tuple(given.shape)}")
    if given.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array, got {given.dtype}")
    xp = _backend.array_module(given)
    batch = given[:, 0]
    valid = (batch >= 0) & (batch < features_array.shape[0])  # NaN fails
    if given.shape[0] and not bool(valid.all()):
        row = int(xp.flatnonzero(~valid)[0])
        raise ValueError(f"{name}[{row}, 0] = {float(batch[row])} is not a batch index in "
                         f"[0, {features_array.shape[0]})")
    boxes = contiguous(given, features_array.dtype)
    images = xp.trunc(batch)
    if bool((xp.trunc(boxes[:, 0]) != images).any()):  # the cast moved an index to another image
        boxes = boxes.copy() if boxes is given else boxes
        boxes[:, 0] = images
    return boxes


def contiguous(array, dtype=None):
    """``array`` as a C-contiguous array of ``dtype`` (default: its own) that the kernels can be given:
    read-only NumPy arrays (a memory map, ``np.frombuffer``) are copied, since Numba compiles every
    kernel again for them."""
    xp = _backend.array_module(array)
    result = xp.ascontiguousarray(array, dtype=dtype)
    if xp is np and not result.flags.writeable:
        result = result.copy()
    return result


def pair(value, name, minimum=1):
    """``value`` (an int or a pair of ints) as a pair of ints of at least ``minimum`` (1 or 0)."""
    if isinstance(value, numbers.Integral):
        pair_ = (value, value)
    else:
        try:
            pair_ = tuple(value)
        except TypeError:
            pair_ = ()
    # Integers are what has __index__: ints, NumPy's, and the symbolic sizes of torch's compilers.
    if len(pair_) != 2 or not all(hasattr(type(v), "__index__") and not isinstance(v, (bool, np.bool_))
                                  and v >= minimum for v in pair_):
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} int or a pair of {kind} ints, got {value!r}")
    return operator.index(pair_[0]), operator.index(pair_[1])


def count(value, name, minimum=1):
    """``value`` as an int of at least ``minimum`` (1 or 0), as ``pair`` takes each of its two."""
    if (not hasattr(type(value), "__index__") or isinstance(value, (bool, np.bool_))
            or operator.index(value) < minimum):
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} int, got {value!r}")
    return operator.index(value)


def finite_real(value, name):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def integer(value, name):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def sampling_ratio(value, name="sampling_ratio"):
    """``value`` as an int of at most ``MAX_SAMPLING_RATIO`` samples per bin side."""
    value = integer(value, name)
    if value > MAX_SAMPLING_RATIO:
        raise ValueError(f"{name} must be at most {MAX_SAMPLING_RATIO} samples per bin side, got {value}")
    return value


def same_shape(array, shape, name):
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(array.shape)}")


def per_bin(array, features_array, shape, name):
    """``array`` (offsets, masks: one value per box and bin) as a C-contiguous array of ``shape`` and
    of the features' dtype."""
    _backend.target_of(features_array, array, names=("input", name))
    array = _backend.as_array(array)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array, got {array.dtype}")
    same_shape(array, shape, name)
    return contiguous(array, features_array.dtype)
def position_sensitive_channels(channels, pooled_h, pooled_w, name="input.shape[1]"):
    """Output channels of a position-sensitive op: ``channels // (PH*PW)``; ValueError unless
    ``channels`` is a multiple of ``PH*PW``."""
    bins = pooled_h * pooled_w
    if channels % bins:
        raise ValueError(f"{name} = {channels} must be a multiple of PH*PW = {pooled_h}*{pooled_w} = "
                         f"{bins} for a position-sensitive output_size ({pooled_h}, {pooled_w})")
    return channels // bins


def argmax(array, grad_output, bound, bound_text, forward):
    """``array``, the argmax that ``forward`` (its name) returned, as a C-contiguous int32 array: on
    ``grad_output``'s device and of its shape, of an integer dtype, with values in ``[-1, bound)`` (named
    ``bound_text`` in the error)."""
    _backend.target_of(grad_output, array, names=("grad_output", "argmax"))
    array = _backend.as_array(array)
    same_shape(array, grad_output.shape, "argmax")
    if array.dtype.kind not in "iu":
        raise TypeError(f"argmax must be an integer array (int32 from {forward}), got {array.dtype}")
    # min and max, not a comparison of the whole array: no temporaries the size of the output
    if array.size and not (int(array.min()) >= -1 and int(array.max()) < bound):
        raise ValueError(f"argmax values must lie in [-1, {bound_text}): not an argmax that {forward} gave "
                         f"for these arguments")
    return contiguous(array, np.int32)


def input_shape(shape, plane_bound=True):
    """``shape`` as a tuple of four non-negative ints ``(N, C, H, W)`` (a float such as 12.7 is refused,
    not truncated), its planes bounded by ``plane`` unless not ``plane_bound``."""
    try:
        shape = tuple(operator.index(v) for v in shape)
    except TypeError:
        raise TypeError(f"input_shape must be four ints (N, C, H, W), got {tuple(shape)}") from None
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"input_shape must be (N, C, H, W), got {shape}")
    if plane_bound:
        plane(shape, "input_shape")
    return shape


def wanted(names, gradients):
    """The set of ``gradients`` (names) a backward should compute: ``names`` (an iterable of some of
    them), or all of them for None."""
    if names is None:
        return set(gradients)
    names = set(names)
    if not names <= set(gradients):
        raise ValueError(f"wanted must name gradients among {gradients}, got {sorted(names)}")
    return names
