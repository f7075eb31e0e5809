"""The operators, one record each: everything the rest of the package and the tests read about an
operator.

An ``Operator`` names the operator's array-level forward and backward (``numba_droi.ops``), which of
the forward's arguments are arrays and which of those get gradients, how to take the gradients
(``gradients``: the backward called in a uniform way), the shape of its output, its kernels, its
slow reference (``reference/``), example cases (small ones for tests and gradient checks, a
detection-sized one with a peer for benchmarks) and the names the peers give it. From that one record
come the differentiable ``Function`` (``numba_droi.functional``), the layer (``numba_droi.nn``), the
PyTorch and JAX adapters, ``demo``, ``check``, ``bench``, the PTX report and the tests'
parametrisation.

A new operator is its kernel, ops, reference and test files (or another operator's kernels: dcnv3 and
dcnv4 run ms_deform_attn's) and one record here, in ``OPERATORS``.
"""
import dataclasses
import functools
import inspect
import math
from typing import Callable, Optional

import numpy as np

from . import ops
from .kernels import deform_conv as deform_conv_kernels
from .kernels import deform_psroi_pool as deform_psroi_pool_kernels
from .kernels import deform_roi_pool as deform_roi_pool_kernels
from .kernels import ms_deform_attn as ms_deform_attn_kernels
from .kernels import prroi_pool as prroi_pool_kernels
from .kernels import ps_roi as ps_roi_kernels
from .kernels import roi_align as roi_align_kernels
from .kernels import roi_align_max as roi_align_max_kernels
from .kernels import roi_align_rotated as roi_align_rotated_kernels
from .kernels import roi_pool as roi_pool_kernels
from .ops import _checks


@dataclasses.dataclass(frozen=True)
class Example:
    """One call of an operator: its ``arrays`` (name -> NumPy array, or None for an optional one left
    out) and its other arguments, ``options``."""
    arrays: dict
    options: dict


@dataclasses.dataclass(frozen=True)
class Peer:
    """What a benchmark runs beside an operator: ``torchvision.ops.<name>`` on some of the operator's
    ``arrays`` with ``options`` (without torchvision, numba_droi's own operator ``name`` where it
    is another operator than the one measured: the deformable operators' offset-free counterparts)."""
    name: str
    arrays: tuple
    options: dict
    extra: dict = dataclasses.field(default_factory=dict)  # arrays of the peer's own, by name (the
                                                           # axis-aligned boxes of rotated ones)


@dataclasses.dataclass(frozen=True, eq=False)
class Operator:
    """Everything about one operator (see the module's docstring).

    ``gradients(functions, grad_output, arrays, options, wanted)`` calls the backward of
    ``functions`` (``numba_droi.ops``, or the operator's module of ``reference/``, which has the same
    functions) on the forward's ``arrays`` and ``options`` (plus what ``saving`` kept) and returns
    ``{name: gradient}`` for at least the ``wanted`` names. ``saving(functions, arrays, options,
    wanted)``, where given, runs the forward keeping what the backward needs beyond the arrays:
    ``(output, {name: array})`` (roi_pool's argmax).
    """
    name: str                    # numba_droi.<name>, functional.<name>, the adapters' name
    forward: Callable            # the array-level forward, e.g. ops.roi_align
    backward: Callable           # the array-level backward
    arrays: tuple                # the forward's array arguments
    differentiable: tuple        # those that get gradients
    gradients: Callable
    output_shape: Callable       # (shapes of the arrays by name, options) -> the output's shape
    kernels: dict                # stage -> {"cpu": driver, "cuda": kernel, "cuda_deterministic": ...}
    reference: str               # the module of reference/ that mirrors forward and backward
    example: Callable            # (rng, dtype, batch, channels, height, width, boxes, scale, **choices)
    choices: dict                # example's choices -> values worth trying (the property tests)
    benchmark: Callable          # (rng, boxes) -> (Example at a detection size, Peer or None)
    module: Optional[str]        # its layer's class name (options at construction, arrays at the
                                 # call) in nn and the torch adapter; None: the layer is written by hand
    peers: dict                  # library -> the same operator's name there
    optional: tuple = ()         # arrays that may be None
    offsets: tuple = ()          # arrays that move the samples (the adversarial tests fill them with
                                 # NaN, inf and huge values)
    saving: Optional[Callable] = None
    kept: tuple = ()             # (name, dtype) of what saving keeps: arrays of the output's shape
    box_columns: int = 5         # columns of its rois: 6 for rotated boxes
    no_derivative: tuple = ()    # (array, column): elements of a differentiable array that the output
                                 # has no derivative in (a batch index), held by finite differences
    untimed: tuple = ()          # differentiable arrays that the benchmarks and the demo's timings hold
                                 # constant: box gradients that the peers do not compute
    cpu_schedules: tuple = ()    # context managers inside which the cpu runs other schedules of its
                                 # kernels than the shapes of its examples choose (warmup runs each)
    simulated: tuple = ()        # (name, value) arguments of example that override the demo's small size
                                 # on the simulator (an operator with many elements per output pixel,
                                 # whose gradient check there evaluates it twice per element)

    @property
    def parameters(self):
        """The forward's parameters, by name in order (``inspect.Signature.parameters``)."""
        return _parameters(self.forward)

    @property
    def options(self):
        """Names of the forward's arguments that are not arrays, in order."""
        return tuple(name for name in self.parameters if name not in self.arrays)

    def call(self, functions, arrays, options):
        """The forward of ``functions`` (``numba_droi.ops`` or the reference module) on ``arrays``
        and ``options``."""
        return getattr(functions, self.forward.__name__)(**arrays, **options)

    def positional(self, arrays, options):
        """The forward's arguments in order: ``arrays`` (None for one left out) and ``options`` (the
        defaults for those left out)."""
        options = self.with_defaults(options)
        return [arrays.get(name) if name in self.arrays else options[name]
                for name in self.parameters]

    def with_defaults(self, options):
        """``options`` with the forward's defaults for those left out."""
        parameters = self.parameters
        return {name: options.get(name, parameters[name].default) for name in self.options
                if name in options or parameters[name].default is not parameters[name].empty}

    def wanted(self, arrays, names=None):
        """The differentiable arrays given (not None) among ``names`` (default: all), in order."""
        return tuple(name for name in self.differentiable
                     if arrays.get(name) is not None and (names is None or name in names))

    def timed(self, arrays):
        """The differentiable arrays given that the benchmarks differentiate (``wanted`` less
        ``untimed``)."""
        return tuple(name for name in self.wanted(arrays) if name not in self.untimed)

    def forward_saving(self, functions, arrays, options, wanted):
        """``(output, saved)``: the forward, and what ``vjp`` needs for the ``wanted`` gradients
        (the arrays, and what ``saving`` keeps)."""
        if self.saving is None or not wanted:
            return self.call(functions, arrays, options), dict(arrays)
        output, kept = self.saving(functions, arrays, self.with_defaults(options), wanted)
        return output, dict(arrays, **kept)

    def vjp(self, functions, grad_output, saved, options, wanted=None):
        """``{name: gradient}`` of ``sum(grad_output * output)`` for the ``wanted`` differentiable
        arrays (default: every one given) of the forward that ``saved`` came from."""
        wanted = self.wanted(saved, wanted)
        if not wanted:
            return {}
        gradients = self.gradients(functions, grad_output, saved, self.with_defaults(options), wanted)
        return {name: gradients[name] for name in wanted}

    @property
    def cuda_kernels(self):
        """The names of this operator's cuda kernels."""
        return {kernel.__name__ for stage in self.kernels.values() for target, kernel in stage.items()
                if target.startswith("cuda")}


@functools.cache
def _parameters(forward):
    # inspect.signature takes longer than a small operator's kernels: once per forward
    return inspect.signature(forward).parameters


# -- example cases -----------------------------------------------------------------------------------

INSIDE, ACROSS, OUTSIDE, DEGENERATE, REVERSED = range(5)
BOX_KINDS = (INSIDE, ACROSS, OUTSIDE, DEGENERATE, REVERSED)

# The arguments every example takes, and their defaults: small cases, quick on the CUDA simulator.
EXAMPLE_SIZES = dict(batch=2, channels=2, height=5, width=6, boxes=BOX_KINDS, scale=0.5)


def example_rois(rng, boxes, batch, height, width, scale):
    """``(K, 5)`` rois in image coordinates for a ``height x width`` map at ``scale``. ``boxes`` is a
    number of boxes (inside or across the map), a sequence of kinds (``INSIDE``, ``ACROSS`` the
    border, ``OUTSIDE``, ``DEGENERATE``: zero size, ``REVERSED``: x2 < x1 and y2 < y1), or a ``(K,
    5)`` array used as it is."""
    if isinstance(boxes, np.ndarray) and boxes.ndim == 2:
        return boxes.astype(np.float64)
    if isinstance(boxes, (int, np.integer)):
        low = rng.uniform(-1, 0.8, (boxes, 2)) * (width, height)
        size = rng.uniform(0.1, 0.6, (boxes, 2)) * (width, height)
    else:
        kinds = np.asarray(boxes, dtype=np.int64)
        low = rng.uniform(-0.3, 0.9, (len(kinds), 2)) * (width, height)
        size = rng.uniform(0.05, 0.8, (len(kinds), 2)) * (width, height)
        size[kinds == ACROSS] *= 3
        low[kinds == OUTSIDE] += (width, height)
        size[kinds == DEGENERATE] = 0
        size[kinds == REVERSED] *= -1
    count = len(low)
    images = rng.integers(0, max(batch, 1), (count, 1))
    return np.concatenate([images, low / scale, (low + size) / scale], 1).reshape(count, 5)


def _cast(arrays, dtype):
    """The floating arrays of ``arrays`` in ``dtype`` (integer ones, such as spatial shapes, as they
    are)."""
    return {name: a if a is None or a.dtype.kind != "f" else np.ascontiguousarray(a, dtype=dtype)
            for name, a in arrays.items()}


def _features(rng, batch, channels, height, width):
    return rng.standard_normal((batch, channels, height, width))


# -- detection-sized cases for the benchmarks -----------------------------------------------------------

def detection_case(rng, batch=2, channels=256, height=50, width=68, boxes=512, dtype=np.float32):
    """Features of a stride-16 map of an 800x1088 image and boxes of 16 to 512 pixels on it."""
    features = rng.standard_normal((batch, channels, height, width)).astype(dtype)
    size = np.exp(rng.uniform(np.log(16), np.log(512), (boxes, 2)))
    centre = rng.uniform(0, 1, (boxes, 2)) * (width * 16, height * 16)
    rois = np.concatenate([rng.integers(0, batch, (boxes, 1)), centre - size / 2, centre + size / 2], 1)
    return features, rois.astype(dtype)


def _torchvision_benchmark(name, options, channels=256):
    """A benchmark of the RoI operator ``name`` at the detection case against torchvision's."""
    def benchmark(rng, boxes=512):
        features, rois = detection_case(rng, channels=channels, boxes=boxes)
        return Example(dict(input=features, rois=rois), options), Peer(name, ("input", "rois"), options)
    return benchmark


def _without(options, *names):
    return {key: value for key, value in options.items() if key not in names}


# -- roi_align ---------------------------------------------------------------------------------------

def _roi_align_example(rng, dtype=np.float64, batch=2, channels=2, height=5, width=6, boxes=BOX_KINDS,
                       scale=0.5, output_size=(2, 2), sampling_ratio=2, aligned=True):
    arrays = dict(input=_features(rng, batch, channels, height, width),
                  rois=example_rois(rng, boxes, batch, height, width, scale))
    return Example(_cast(arrays, dtype), dict(output_size=output_size, spatial_scale=scale,
                                              sampling_ratio=sampling_ratio, aligned=aligned))


def _roi_align_gradients(functions, grad_output, arrays, options, wanted):
    options = _without(options, "output_size")
    grads = {}
    if "input" in wanted:
        grads["input"] = functions.roi_align_backward(grad_output, arrays["rois"], arrays["input"].shape,
                                                      **options)
    if "rois" in wanted:
        grads["rois"] = functions.roi_align_box_backward(grad_output, arrays["input"], arrays["rois"],
                                                         **options)
    return grads


def _pooled_shape(shapes, options):
    """``(K, C, PH, PW)``."""
    return (shapes["rois"][0], shapes["input"][1]) + _checks.pair(options["output_size"], "output_size")


_PAIRS = tuple((h, w) for h in (1, 2, 3) for w in (1, 2, 3))
_SAMPLING_RATIOS = (-1, 0, 1, 2, 3)

ROI_ALIGN = Operator(
    name="roi_align", forward=ops.roi_align, backward=ops.roi_align_backward,
    arrays=("input", "rois"), differentiable=("input", "rois"), no_derivative=(("rois", 0),),
    untimed=("rois",),
    gradients=_roi_align_gradients, output_shape=_pooled_shape,
    # the box gradient: deformable RoI pooling's coordinate gradients, with zero offsets
    kernels=dict(roi_align_kernels.KERNELS,
                 box_backward=deform_roi_pool_kernels.KERNELS["coordinate_grad"]),
    reference="reference.roi_align",
    example=_roi_align_example,
    choices=dict(output_size=_PAIRS, sampling_ratio=_SAMPLING_RATIOS, aligned=(False, True)),
    benchmark=_torchvision_benchmark("roi_align", dict(output_size=7, spatial_scale=1 / 16,
                                                       sampling_ratio=2, aligned=True)),
    module="RoIAlign", peers={"torchvision": "roi_align", "mmcv": "roi_align"})


# -- roi_align_max ------------------------------------------------------------------------------------

def _roi_align_max_saving(functions, arrays, options, wanted):
    output, argmax = functions.roi_align_max_with_argmax(arrays["input"], arrays["rois"], **options)
    return output, {"argmax": argmax}


def _roi_align_max_gradients(functions, grad_output, arrays, options, wanted):
    argmax = arrays.get("argmax")
    if argmax is None:  # the forward did not keep it (the JAX adapter): recompute it
        _, argmax = functions.roi_align_max_with_argmax(arrays["input"], arrays["rois"], **options)
    return {"input": functions.roi_align_max_backward(grad_output, arrays["rois"], argmax,
                                                      arrays["input"].shape,
                                                      **_without(options, "output_size"))}


ROI_ALIGN_MAX = Operator(
    name="roi_align_max", forward=ops.roi_align_max, backward=ops.roi_align_max_backward,
    arrays=("input", "rois"), differentiable=("input",),
    gradients=_roi_align_max_gradients, saving=_roi_align_max_saving, kept=(("argmax", np.int32),),
    output_shape=_pooled_shape,
    kernels=roi_align_max_kernels.KERNELS, reference="reference.roi_align_max",
    example=_roi_align_example,
    choices=dict(output_size=_PAIRS, sampling_ratio=_SAMPLING_RATIOS, aligned=(False, True)),
    benchmark=_torchvision_benchmark("roi_align", dict(output_size=7, spatial_scale=1 / 16,
                                                       sampling_ratio=2, aligned=True)),
    module="RoIAlignMax", peers={"mmcv": "roi_align(pool_mode='max')"})


# -- roi_align_rotated --------------------------------------------------------------------------------

def example_rotated_rois(rng, boxes, batch, height, width, scale):
    """``(K, 6)`` rotated rois ``[n, cx, cy, w, h, angle]`` for ``height x width`` maps at ``scale``:
    ``example_rois``' boxes (the same kinds) as centres and sizes, with angles in ``[-pi, pi]``."""
    axis_aligned = example_rois(rng, boxes, batch, height, width, scale)
    low, high = axis_aligned[:, 1:3], axis_aligned[:, 3:5]
    angle = rng.uniform(-np.pi, np.pi, (len(axis_aligned), 1))
    with np.errstate(invalid="ignore"):  # the adversarial tests' boxes at inf
        return np.concatenate([axis_aligned[:, :1], (low + high) / 2, high - low, angle], 1)


def _roi_align_rotated_example(rng, dtype=np.float64, batch=2, channels=2, height=5, width=6,
                               boxes=BOX_KINDS, scale=0.5, output_size=(2, 2), sampling_ratio=2, aligned=True,
                               clockwise=False):
    arrays = dict(input=_features(rng, batch, channels, height, width),
                  rois=example_rotated_rois(rng, boxes, batch, height, width, scale))
    return Example(_cast(arrays, dtype), dict(output_size=output_size, spatial_scale=scale,
                                              sampling_ratio=sampling_ratio, aligned=aligned,
                                              clockwise=clockwise))


def _roi_align_rotated_gradients(functions, grad_output, arrays, options, wanted):
    return {"input": functions.roi_align_rotated_backward(grad_output, arrays["rois"], arrays["input"].shape,
                                                          **_without(options, "output_size"))}


def _roi_align_rotated_benchmark(rng, boxes=512):
    """The detection case's boxes turned by random angles, against RoI Align of the unturned boxes."""
    features, rois = detection_case(rng, boxes=boxes)
    rotated = np.concatenate([rois[:, :1], (rois[:, 1:3] + rois[:, 3:5]) / 2, rois[:, 3:5] - rois[:, 1:3],
                              rng.uniform(-np.pi, np.pi, (len(rois), 1))], 1).astype(rois.dtype)
    options = dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    return (Example(dict(input=features, rois=rotated), options),
            Peer("roi_align", ("input", "boxes"), options, extra=dict(boxes=rois)))


ROI_ALIGN_ROTATED = Operator(
    name="roi_align_rotated", forward=ops.roi_align_rotated, backward=ops.roi_align_rotated_backward,
    arrays=("input", "rois"), differentiable=("input",),
    gradients=_roi_align_rotated_gradients, output_shape=_pooled_shape,
    kernels=roi_align_rotated_kernels.KERNELS, reference="reference.roi_align_rotated",
    example=_roi_align_rotated_example,
    choices=dict(output_size=_PAIRS, sampling_ratio=_SAMPLING_RATIOS, aligned=(False, True),
                 clockwise=(False, True)),
    benchmark=_roi_align_rotated_benchmark, box_columns=6,
    module="RoIAlignRotated", peers={"mmcv": "roi_align_rotated", "detectron2": "ROIAlignRotated"})


# -- prroi_pool ---------------------------------------------------------------------------------------

def _prroi_pool_example(rng, dtype=np.float64, batch=2, channels=2, height=5, width=6, boxes=BOX_KINDS,
                        scale=0.5, output_size=(2, 2)):
    arrays = dict(input=_features(rng, batch, channels, height, width),
                  rois=example_rois(rng, boxes, batch, height, width, scale))
    return Example(_cast(arrays, dtype), dict(output_size=output_size, spatial_scale=scale))


def _prroi_pool_gradients(functions, grad_output, arrays, options, wanted):
    grads = functions.prroi_pool_backward(grad_output, arrays["input"], arrays["rois"],
                                          options["spatial_scale"], wanted=wanted)
    return dict(zip(("input", "rois"), grads))


def _prroi_pool_benchmark(rng, boxes=512):
    """The detection case, against RoI Align with 2x2 samples per bin (which gives no box gradient)."""
    features, rois = detection_case(rng, boxes=boxes)
    return (Example(dict(input=features, rois=rois), dict(output_size=7, spatial_scale=1 / 16)),
            Peer("roi_align", ("input", "rois"), dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=2,
                                                      aligned=False)))


PRROI_POOL = Operator(
    name="prroi_pool", forward=ops.prroi_pool, backward=ops.prroi_pool_backward,
    arrays=("input", "rois"), differentiable=("input", "rois"), no_derivative=(("rois", 0),),
    gradients=_prroi_pool_gradients, output_shape=_pooled_shape,
    kernels=prroi_pool_kernels.KERNELS, reference="reference.prroi_pool",
    example=_prroi_pool_example, choices=dict(output_size=_PAIRS),
    benchmark=_prroi_pool_benchmark,
    module="PrRoIPool", peers={"mmcv": "prroi_pool", "PreciseRoIPooling": "PrRoIPool2D"})


# -- roi_pool ----------------------------------------------------------------------------------------

def _roi_pool_example(rng, dtype=np.float64, batch=2, channels=2, height=5, width=6, boxes=BOX_KINDS,
                      scale=0.5, output_size=(2, 2)):
    size = batch * channels * height * width
    # distinct values, far apart next to a finite-difference step: no ties for the maximum
    features = (rng.permutation(size) / max(size, 1)).reshape(batch, channels, height, width)
    arrays = dict(input=features, rois=example_rois(rng, boxes, batch, height, width, scale))
    return Example(_cast(arrays, dtype), dict(output_size=output_size, spatial_scale=scale))


def _roi_pool_saving(functions, arrays, options, wanted):
    output, argmax = functions.roi_pool_with_argmax(arrays["input"], arrays["rois"], **options)
    return output, {"argmax": argmax}


def _roi_pool_gradients(functions, grad_output, arrays, options, wanted):
    argmax = arrays.get("argmax")
    if argmax is None:  # the forward did not keep it (the JAX adapter): recompute it
        _, argmax = functions.roi_pool_with_argmax(arrays["input"], arrays["rois"], **options)
    return {"input": functions.roi_pool_backward(grad_output, arrays["rois"], argmax,
                                                 arrays["input"].shape)}


ROI_POOL = Operator(
    name="roi_pool", forward=ops.roi_pool, backward=ops.roi_pool_backward,
    arrays=("input", "rois"), differentiable=("input",),
    gradients=_roi_pool_gradients, saving=_roi_pool_saving, kept=(("argmax", np.int32),),
    output_shape=_pooled_shape,
    kernels=roi_pool_kernels.KERNELS, reference="reference.roi_pool",
    example=_roi_pool_example, choices=dict(output_size=_PAIRS),
    benchmark=_torchvision_benchmark("roi_pool", dict(output_size=7, spatial_scale=1 / 16)),
    module="RoIPool", peers={"torchvision": "roi_pool", "mmcv": "roi_pool"})


# -- ps_roi_pool and ps_roi_align --------------------------------------------------------------------

def _ps_example(rng, dtype, batch, channels, height, width, boxes, scale, output_size, **options):
    """``channels`` output channels: ``channels * PH * PW`` input channels."""
    pooled_h, pooled_w = _checks.pair(output_size, "output_size")
    arrays = dict(input=_features(rng, batch, channels * pooled_h * pooled_w, height, width),
                  rois=example_rois(rng, boxes, batch, height, width, scale))
    return Example(_cast(arrays, dtype), dict(output_size=output_size, spatial_scale=scale, **options))


def _ps_roi_pool_example(rng, dtype=np.float64, batch=2, channels=2, height=5, width=6,
                         boxes=BOX_KINDS, scale=0.5, output_size=(2, 2)):
    return _ps_example(rng, dtype, batch, channels, height, width, boxes, scale, output_size)


def _ps_roi_align_example(rng, dtype=np.float64, batch=2, channels=2, height=5, width=6,
                          boxes=BOX_KINDS, scale=0.5, output_size=(2, 2), sampling_ratio=2):
    return _ps_example(rng, dtype, batch, channels, height, width, boxes, scale, output_size,
                       sampling_ratio=sampling_ratio)


def _ps_roi_pool_gradients(functions, grad_output, arrays, options, wanted):
    return {"input": functions.ps_roi_pool_backward(grad_output, arrays["rois"], arrays["input"].shape,
                                                    **_without(options, "output_size"))}


def _ps_roi_align_gradients(functions, grad_output, arrays, options, wanted):
    return {"input": functions.ps_roi_align_backward(grad_output, arrays["rois"], arrays["input"].shape,
                                                     **_without(options, "output_size"))}


def _ps_shape(shapes, options):
    """``(K, C // (PH*PW), PH, PW)``."""
    pooled_h, pooled_w = _checks.pair(options["output_size"], "output_size")
    return (shapes["rois"][0], _checks.position_sensitive_channels(shapes["input"][1], pooled_h, pooled_w),
            pooled_h, pooled_w)


PS_ROI_POOL = Operator(
    name="ps_roi_pool", forward=ops.ps_roi_pool, backward=ops.ps_roi_pool_backward,
    arrays=("input", "rois"), differentiable=("input",),
    gradients=_ps_roi_pool_gradients, output_shape=_ps_shape,
    kernels=ps_roi_kernels.KERNELS["ps_roi_pool"], reference="reference.ps_roi",
    example=_ps_roi_pool_example, choices=dict(output_size=_PAIRS),
    benchmark=_torchvision_benchmark("ps_roi_pool", dict(output_size=7, spatial_scale=1 / 16),
                                     channels=10 * 7 * 7),
    module="PSRoIPool", peers={"torchvision": "ps_roi_pool"})

PS_ROI_ALIGN = Operator(
    name="ps_roi_align", forward=ops.ps_roi_align, backward=ops.ps_roi_align_backward,
    arrays=("input", "rois"), differentiable=("input",),
    gradients=_ps_roi_align_gradients, output_shape=_ps_shape,
    kernels=ps_roi_kernels.KERNELS["ps_roi_align"], reference="reference.ps_roi",
    example=_ps_roi_align_example, choices=dict(output_size=_PAIRS, sampling_ratio=_SAMPLING_RATIOS),
    benchmark=_torchvision_benchmark("ps_roi_align", dict(output_size=7, spatial_scale=1 / 16,
                                                          sampling_ratio=2), channels=10 * 7 * 7),
    module="PSRoIAlign", peers={"torchvision": "ps_roi_align"})


# -- deform_roi_pool ---------------------------------------------------------------------------------

def _deform_roi_pool_example(rng, dtype=np.float64, batch=2, channels=2, height=5, width=6,
                             boxes=BOX_KINDS, scale=0.5, output_size=(2, 2), sampling_ratio=2,
                             gamma=0.1, with_offset=True, with_mask=True):
    rois = example_rois(rng, boxes, batch, height, width, scale)
    pooled_h, pooled_w = _checks.pair(output_size, "output_size")
    arrays = dict(input=_features(rng, batch, channels, height, width), rois=rois,
                  offset=rng.uniform(-1, 1, (len(rois), 2, pooled_h, pooled_w)) if with_offset else None,
                  mask=rng.uniform(0.2, 1.5, (len(rois), 1, pooled_h, pooled_w)) if with_mask else None)
    return Example(_cast(arrays, dtype), dict(output_size=output_size, spatial_scale=scale,
                                              sampling_ratio=sampling_ratio, gamma=gamma))


def _deform_roi_pool_gradients(functions, grad_output, arrays, options, wanted):
    given = (grad_output, arrays["input"], arrays["rois"], arrays["offset"], options["spatial_scale"],
             options["sampling_ratio"], options["gamma"], arrays.get("mask"))
    grads = {}
    if set(wanted) - {"rois"}:
        grads = dict(zip(("input", "offset", "mask"), functions.deform_roi_pool_backward(
            *given, wanted=tuple(name for name in wanted if name != "rois"))))
    if "rois" in wanted:
        grads["rois"] = functions.deform_roi_pool_box_backward(*given)
    return grads


def _deform_roi_pool_benchmark(rng, boxes=512):
    """Against RoI Align (aligned, at the same size): deformable pooling with zero offsets."""
    features, rois = detection_case(rng, boxes=boxes)
    offset = (0.1 * rng.standard_normal((len(rois), 2, 7, 7))).astype(features.dtype)
    options = dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=2)
    return (Example(dict(input=features, rois=rois, offset=offset), options),
            Peer("roi_align", ("input", "rois"), dict(options, aligned=True)))


DEFORM_ROI_POOL = Operator(
    name="deform_roi_pool", forward=ops.deform_roi_pool, backward=ops.deform_roi_pool_backward,
    arrays=("input", "rois", "offset", "mask"), differentiable=("input", "rois", "offset", "mask"),
    no_derivative=(("rois", 0),), untimed=("rois",), optional=("offset", "mask"), offsets=("offset",),
    gradients=_deform_roi_pool_gradients, output_shape=_pooled_shape,
    kernels=deform_roi_pool_kernels.KERNELS, reference="reference.deform_roi_pool",
    example=_deform_roi_pool_example,
    choices=dict(output_size=_PAIRS, sampling_ratio=_SAMPLING_RATIOS, gamma=(0.1, 0.5, 1.0),
                 with_offset=(False, True), with_mask=(False, True)),
    benchmark=_deform_roi_pool_benchmark,
    module="DeformRoIPool", peers={"mmcv": "deform_roi_pool"})


# -- deform_psroi_pool -------------------------------------------------------------------------------

def _deform_psroi_pool_example(rng, dtype=np.float64, batch=2, channels=2, height=5, width=6,
                               boxes=BOX_KINDS, scale=0.5, pooled_size=2, group_size=2, part_size=None,
                               sample_per_part=2, trans_std=0.1, no_trans=False, classes=1):
    """``channels`` output channels per class of offsets."""
    rois = example_rois(rng, boxes, batch, height, width, scale)
    output_dim = channels * classes
    parts = pooled_size if part_size is None else part_size
    arrays = dict(input=_features(rng, batch, output_dim * group_size ** 2, height, width), rois=rois,
                  trans=None if no_trans else rng.uniform(-1, 1, (len(rois), 2 * classes, parts, parts)))
    return Example(_cast(arrays, dtype), dict(
        spatial_scale=scale, output_dim=output_dim, group_size=group_size, pooled_size=pooled_size,
        part_size=part_size, sample_per_part=sample_per_part, trans_std=trans_std, no_trans=no_trans))


def _deform_psroi_pool_gradients(functions, grad_output, arrays, options, wanted):
    grads = functions.deform_psroi_pool_backward(
        grad_output, arrays["input"], arrays["rois"], arrays["trans"],
        **_without(options, "output_dim", "pooled_size"), wanted=wanted)
    return dict(zip(("input", "trans"), grads))


def _deform_psroi_pool_shape(shapes, options):
    """``(K, output_dim, P, P)``."""
    return shapes["rois"][0], options["output_dim"], options["pooled_size"], options["pooled_size"]


def _deform_psroi_pool_benchmark(rng, boxes=512):
    """R-FCN: 7x7 bins, groups and parts, 4 samples per part side, 10 x 49 channels; against PS RoI
    Align with 4x4 samples per bin."""
    features, rois = detection_case(rng, channels=10 * 49, boxes=boxes)
    trans = rng.standard_normal((len(rois), 2, 7, 7)).astype(features.dtype)
    options = dict(spatial_scale=1 / 16, output_dim=10, group_size=7, pooled_size=7, part_size=7,
                   sample_per_part=4, trans_std=0.1)
    return (Example(dict(input=features, rois=rois, trans=trans), options),
            Peer("ps_roi_align", ("input", "rois"),
                 dict(output_size=7, spatial_scale=1 / 16, sampling_ratio=4)))


DEFORM_PSROI_POOL = Operator(
    name="deform_psroi_pool", forward=ops.deform_psroi_pool, backward=ops.deform_psroi_pool_backward,
    arrays=("input", "rois", "trans"), differentiable=("input", "trans"), optional=("trans",),
    offsets=("trans",),
    gradients=_deform_psroi_pool_gradients, output_shape=_deform_psroi_pool_shape,
    kernels=deform_psroi_pool_kernels.KERNELS, reference="reference.deform_psroi_pool",
    example=_deform_psroi_pool_example,
    choices=dict(pooled_size=(1, 2, 3), group_size=(1, 2, 3), part_size=(None, 1, 2, 3),
                 sample_per_part=(1, 2, 3), trans_std=(0.0, 0.1, 0.5), no_trans=(False, True),
                 classes=(1, 2)),
    benchmark=_deform_psroi_pool_benchmark,
    module="DeformPSRoIPool",
    peers={"mxnet": "contrib.DeformablePSROIPooling", "mmdet v1": "deform_roi_pooling"})


# -- deform_conv2d -----------------------------------------------------------------------------------

def _deform_conv2d_example(rng, dtype=np.float64, batch=2, channels=2, height=5, width=6,
                           boxes=None, scale=None, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                           dilation=(1, 1), weight_groups=1, offset_groups=1, with_offset=True,
                           with_mask=True, with_bias=True, offset_scale=2.0):
    """``channels`` input channels per weight and offset group, as many output channels per weight
    group; the map grows to give at least one output pixel. Offsets keep every sample off integer
    coordinates (B2's kinks)."""
    kh, kw = kernel
    height = max(height, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    width = max(width, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    in_channels = channels * weight_groups * offset_groups
    out_h, out_w = ((size + 2 * pad - (dil * (k - 1) + 1)) // step + 1 for size, pad, dil, k, step
                    in zip((height, width), padding, dilation, kernel, stride))
    taps = offset_groups * kh * kw
    reach = math.ceil(offset_scale)
    offset_shape = (batch, 2 * taps, out_h, out_w)
    arrays = dict(
        input=_features(rng, batch, in_channels, height, width),
        offset=(rng.integers(-reach, reach + 1, offset_shape) + rng.uniform(0.1, 0.9, offset_shape)
                if with_offset else None),
        weight=rng.standard_normal((channels * weight_groups, in_channels // weight_groups, kh, kw))
        / math.sqrt(in_channels * kh * kw),
        bias=rng.standard_normal(channels * weight_groups) if with_bias else None,
        mask=rng.uniform(0.2, 1.5, (batch, taps, out_h, out_w)) if with_mask else None)
    return Example(_cast(arrays, dtype), dict(stride=stride, padding=padding, dilation=dilation))


def _deform_conv2d_gradients(functions, grad_output, arrays, options, wanted):
    grads = functions.deform_conv2d_backward(grad_output, arrays["input"], arrays["offset"],
                                             arrays["weight"], mask=arrays.get("mask"), wanted=wanted,
                                             **options)
    return dict(zip(("input", "offset", "weight", "bias", "mask"), grads))


def _deform_conv2d_shape(shapes, options):
    """``(N, C_out, Ho, Wo)``."""
    kernel = shapes["weight"][2:]
    return (shapes["input"][0], shapes["weight"][0]) + ops.deform_conv.output_size(
        shapes["input"], kernel, options["stride"], options["padding"], options["dilation"])


def _deform_conv2d_benchmark(rng, boxes=None):
    """Batch 2, 64 -> 64 channels, 64x64, 3x3 kernel, padding 1, random offsets (DCNv1)."""
    arrays = dict(input=rng.standard_normal((2, 64, 64, 64)).astype(np.float32),
                  offset=rng.uniform(-2, 2, (2, 18, 64, 64)).astype(np.float32),
                  weight=(rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32),
                  bias=rng.standard_normal(64).astype(np.float32))
    options = dict(padding=1)
    return Example(arrays, options), Peer("deform_conv2d", tuple(arrays), options)


_KERNELS = tuple((h, w) for h in (1, 2, 3) for w in (1, 2, 3))

DEFORM_CONV2D = Operator(
    name="deform_conv2d", forward=ops.deform_conv2d, backward=ops.deform_conv2d_backward,
    arrays=("input", "offset", "weight", "bias", "mask"),
    differentiable=("input", "offset", "weight", "bias", "mask"), optional=("offset", "bias", "mask"),
    offsets=("offset",),
    gradients=_deform_conv2d_gradients, output_shape=_deform_conv2d_shape,
    kernels=deform_conv_kernels.KERNELS, reference="reference.deform_conv",
    example=_deform_conv2d_example,
    choices=dict(kernel=_KERNELS, padding=tuple((h, w) for h in (0, 1, 2) for w in (0, 1, 2)),
                 dilation=((1, 1), (1, 2), (2, 1), (2, 2)), stride=((1, 1), (1, 2), (2, 1), (2, 2)),
                 weight_groups=(1, 2), offset_groups=(1, 2), with_offset=(False, True),
                 with_mask=(False, True), with_bias=(False, True), offset_scale=(0.5, 2.0, 6.0)),
    benchmark=_deform_conv2d_benchmark, cpu_schedules=(ops.deform_conv.backward_by_planes,),
    module=None,  # nn.DeformConv2d and the torch adapter's are layers with a weight and a bias
    peers={"torchvision": "deform_conv2d", "mmcv": "modulated_deform_conv2d"})


# -- ms_deform_attn -----------------------------------------------------------------------------------

def _levels(sizes):
    """``(spatial_shapes, level_start_index)`` of levels of ``sizes`` ``(H, W)``."""
    shapes = np.array(sizes, np.int64).reshape(-1, 2)
    areas = shapes[:, 0] * shapes[:, 1]
    return shapes, np.concatenate([[0], np.cumsum(areas)[:-1]]).astype(np.int64)


def _ms_deform_attn_example(rng, dtype=np.float64, batch=2, channels=2, height=5, width=6, boxes=None,
                            scale=None, heads=2, levels=2, points=2, queries=3, spread=0.2):
    """``channels`` channels per head; level ``l``'s map is ``height x width`` halved ``l`` times
    (rounded up); locations in ``[-spread, 1 + spread]``, so some sample outside the map. The example
    takes no boxes."""
    shapes, starts = _levels([(-(-height // 2 ** k), -(-width // 2 ** k)) for k in range(levels)])
    arrays = dict(value=rng.standard_normal((batch, int((shapes[:, 0] * shapes[:, 1]).sum()), heads,
                                             channels)),
                  spatial_shapes=shapes, level_start_index=starts,
                  sampling_locations=rng.uniform(-spread, 1 + spread,
                                                 (batch, queries, heads, levels, points, 2)),
                  attention_weights=rng.uniform(0.1, 1.0, (batch, queries, heads, levels, points)))
    return Example(_cast(arrays, dtype), {})


# Deformable DETR's feature pyramid for an 800x1200 image: strides 8 to 64.
DETR_LEVELS = ((100, 150), (50, 75), (25, 38), (13, 19))


def detr_case(rng, queries=300, batch=2, heads=8, channels=32, points=4, dtype=np.float32):
    """Deformable DETR's attention: 8 heads of 32 channels over its four levels, 4 points per level
    and head; ``queries`` queries (300: the decoder's; ``None``: one per pixel, the encoder's) with
    softmax-normalised weights."""
    shapes, starts = _levels(DETR_LEVELS)
    rows = int((shapes[:, 0] * shapes[:, 1]).sum())
    queries = rows if queries is None else queries
    logits = rng.standard_normal((batch, queries, heads, len(shapes) * points))
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return Example(dict(value=rng.standard_normal((batch, rows, heads, channels)).astype(dtype),
                        spatial_shapes=shapes, level_start_index=starts,
                        sampling_locations=rng.uniform(0, 1, (batch, queries, heads, len(shapes), points,
                                                              2)).astype(dtype),
                        attention_weights=weights.reshape(batch, queries, heads, len(shapes), points)
                        .astype(dtype)), {})


def _ms_deform_attn_gradients(functions, grad_output, arrays, options, wanted):
    grads = functions.ms_deform_attn_backward(
        grad_output, arrays["value"], arrays["spatial_shapes"], arrays["level_start_index"],
        arrays["sampling_locations"], arrays["attention_weights"], wanted=wanted)
    return dict(zip(("value", "sampling_locations", "attention_weights"), grads))


MS_DEFORM_ATTN = Operator(
    name="ms_deform_attn", forward=ops.ms_deform_attn, backward=ops.ms_deform_attn_backward,
    arrays=("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"),
    differentiable=("value", "sampling_locations", "attention_weights"),
    offsets=("sampling_locations",),
    gradients=_ms_deform_attn_gradients,
    output_shape=lambda shapes, options: (shapes["value"][0], shapes["attention_weights"][1],
                                          shapes["value"][2] * shapes["value"][3]),
    kernels=ms_deform_attn_kernels.KERNELS, reference="reference.ms_deform_attn",
    example=_ms_deform_attn_example,
    choices=dict(heads=(1, 2), levels=(1, 2, 3), points=(1, 2, 3), queries=(1, 2, 4), spread=(0.0, 0.3)),
    benchmark=lambda rng, boxes=None: (detr_case(rng), None),  # the decoder's size; no peer in torchvision
    module=None,  # the layers with projections are nn.MSDeformAttn and the torch adapter's
    peers={"Deformable DETR": "MSDeformAttnFunction", "mmcv": "MultiScaleDeformableAttnFunction"})


# -- dcnv3 and dcnv4 ------------------------------------------------------------------------------------

def _dcnv3_example(rng, dtype=np.float64, batch=2, channels=2, height=4, width=3, boxes=None, scale=None,
                   kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), group=2, offset_scale=1.5,
                   remove_center=False, reach=2.0):
    """``group`` groups of ``channels`` channels, channels-last; the map grows to give at least one
    output pixel; a small map by default (every output pixel has ``2*group*K`` offsets, and the
    simulator's gradient check evaluates the operator twice per element). Offsets up to ``reach``
    pixels, nudged to keep every sample off integer coordinates (B2's kinks); masks in ``[-0.5, 1.5]``.
    The example takes no boxes."""
    kh, kw = kernel
    height = max(height, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    width = max(width, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    options = dict(kernel_h=kh, kernel_w=kw, stride_h=stride[0], stride_w=stride[1], pad_h=padding[0],
                   pad_w=padding[1], dilation_h=dilation[0], dilation_w=dilation[1], group=group,
                   group_channels=channels, offset_scale=offset_scale,
                   remove_center=remove_center and kh * kw > 1)
    geometry = ops.dcnv3_dcnv4.geometry((batch, height, width, group * channels), **options)
    points = (batch,) + geometry.output + (group, geometry.points)
    offset = rng.uniform(-reach, reach, points + (2,))
    where = geometry.locations(offset, np, np.float64).reshape(offset.shape)
    offset[np.abs(where - np.round(where)) < 0.1] += 0.3 / offset_scale
    per_pixel = points[3] * points[4]
    arrays = dict(input=rng.standard_normal((batch, height, width, group * channels)),
                  offset=offset.reshape(points[:3] + (2 * per_pixel,)),
                  mask=rng.uniform(-0.5, 1.5, points).reshape(points[:3] + (per_pixel,)))
    return Example(_cast(arrays, dtype), options)


def internimage_case(rng, channels=64, size=56, group=4, dtype=np.float32):
    """A DCNv3 layer of InternImage-T's first stage (batch 2, 64 channels at 56x56, 4 groups, 3x3):
    offsets up to 2 pixels, masks softmax-normalised over the 9 points."""
    options = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1,
                   dilation_w=1, group=group, group_channels=channels // group, offset_scale=1.0)
    logits = rng.standard_normal((2, size, size, group, 9))
    mask = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return Example(dict(input=rng.standard_normal((2, size, size, channels)).astype(dtype),
                        offset=rng.uniform(-2, 2, (2, size, size, group * 18)).astype(dtype),
                        mask=mask.reshape(2, size, size, -1).astype(dtype)), options)


def _dcnv3_gradients(functions, grad_output, arrays, options, wanted):
    grads = functions.dcnv3_backward(grad_output, arrays["input"], arrays["offset"], arrays["mask"],
                                     **options, wanted=wanted)
    return dict(zip(("input", "offset", "mask"), grads))


def _dcnv3_shape(shapes, options):
    """``(N, Ho, Wo, C)``."""
    output = ops.dcnv3_dcnv4.geometry(shapes["input"], **options).output
    return (shapes["input"][0],) + output + (shapes["input"][3],)


_DCN_CHOICES = dict(kernel=_KERNELS, padding=tuple((h, w) for h in (0, 1, 2) for w in (0, 1, 2)),
                    dilation=((1, 1), (1, 2), (2, 1), (2, 2)), stride=((1, 1), (1, 2), (2, 1), (2, 2)),
                    group=(1, 2, 3), offset_scale=(0.5, 1.0, 2.0), remove_center=(False, True))

DCNV3 = Operator(
    name="dcnv3", forward=ops.dcnv3, backward=ops.dcnv3_backward,
    arrays=("input", "offset", "mask"), differentiable=("input", "offset", "mask"), offsets=("offset",),
    gradients=_dcnv3_gradients, output_shape=_dcnv3_shape,
    kernels=ms_deform_attn_kernels.KERNELS, reference="reference.dcnv3_dcnv4",
    example=_dcnv3_example, choices=_DCN_CHOICES, simulated=(("height", 4), ("width", 3)),
    benchmark=lambda rng, boxes=None: (internimage_case(rng), None),
    module=None,  # nn.DCNv3 and the torch adapter's are layers with InternImage's projections
    peers={"InternImage": "DCNv3Function"})


def pack_offset_mask(offset, mask, group, multiple=8):
    """DCNv4's ``offset_mask (N, Ho, Wo, P)`` from DCNv3's ``offset`` and ``mask``: each group's ``(x,
    y)`` offsets, then its masks; ``P`` rounded up to a ``multiple`` with zeros, as DCNv4's module."""
    images, out_h, out_w = offset.shape[:3]
    points = mask.shape[3] // group
    packed = np.concatenate([offset.reshape(images, out_h, out_w, group, 2 * points),
                             mask.reshape(images, out_h, out_w, group, points)],
                            -1).reshape(images, out_h, out_w, 3 * points * group)
    extra = -packed.shape[3] % multiple
    return np.concatenate([packed, np.zeros((images, out_h, out_w, extra), packed.dtype)], -1)


def _dcnv4_example(rng, dtype=np.float64, **choices):
    """``_dcnv3_example``'s case, packed; the values past the points' (the padding to a multiple of 8)
    random, to show they are not read."""
    example = _dcnv3_example(rng, dtype, **choices)
    arrays = example.arrays
    offset_mask = pack_offset_mask(arrays["offset"], arrays["mask"], example.options["group"])
    used = arrays["offset"].shape[3] + arrays["mask"].shape[3]
    offset_mask[..., used:] = rng.standard_normal(offset_mask[..., used:].shape)
    return Example(dict(input=arrays["input"], offset_mask=offset_mask.astype(dtype)), example.options)


def _dcnv4_benchmark(rng, boxes=None):
    """``internimage_case`` packed, with DCNv4's unnormalised masks."""
    example = internimage_case(rng)
    mask = rng.uniform(-1, 1, example.arrays["mask"].shape).astype(np.float32)
    offset_mask = pack_offset_mask(example.arrays["offset"], mask, example.options["group"])
    return Example(dict(input=example.arrays["input"], offset_mask=offset_mask), example.options), None


def _dcnv4_gradients(functions, grad_output, arrays, options, wanted):
    grads = functions.dcnv4_backward(grad_output, arrays["input"], arrays["offset_mask"], **options,
                                     wanted=wanted)
    return dict(zip(("input", "offset_mask"), grads))


DCNV4 = Operator(
    name="dcnv4", forward=ops.dcnv4, backward=ops.dcnv4_backward,
    arrays=("input", "offset_mask"), differentiable=("input", "offset_mask"), offsets=("offset_mask",),
    gradients=_dcnv4_gradients, output_shape=_dcnv3_shape,
    kernels=ms_deform_attn_kernels.KERNELS, reference="reference.dcnv3_dcnv4",
    example=_dcnv4_example, choices=_DCN_CHOICES, simulated=(("height", 4), ("width", 3)),
    benchmark=_dcnv4_benchmark,
    module=None,  # nn.DCNv4 and the torch adapter's are layers with DCNv4's projections
    peers={"DCNv4": "DCNv4Function"})


OPERATORS = (ROI_ALIGN, ROI_ALIGN_MAX, ROI_ALIGN_ROTATED, PRROI_POOL, ROI_POOL, PS_ROI_POOL, PS_ROI_ALIGN,
             DEFORM_ROI_POOL, DEFORM_PSROI_POOL, DEFORM_CONV2D, MS_DEFORM_ATTN, DCNV3, DCNV4)
BY_NAME = {operator.name: operator for operator in OPERATORS}
