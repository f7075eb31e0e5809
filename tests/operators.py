"""Every operator behind one interface, for the cross-operator tests (properties, adversarial inputs,
determinism, inputs left unchanged, argument checks).

A case is a dict of NumPy float64 arrays (``input``, ``rois``, ``offset``, ...; None for an absent
optional one) plus ``options``. ``OPERATORS[name]`` runs a case forward or backward on the current
target, ``array`` turning each NumPy array into an array of that target, or through reference/.
``make_case`` builds one from an explicit structure (what the property tests draw) and an rng for the
values.
"""
from collections import namedtuple

import numpy as np

import numba_droi
from reference import deform_conv as ref_deform_conv
from reference import deform_psroi_pool as ref_deform_psroi_pool
from reference import deform_roi_pool as ref_deform_roi_pool
from reference import ps_roi as ref_ps_roi
from reference import roi_align as ref_roi_align
from reference import roi_pool as ref_roi_pool

Operator = namedtuple("Operator", "forward backward reference_forward reference_backward")


def identity(array):
    return array


def _maybe(array, value):
    return None if value is None else array(value)


def _without_size(options):
    return {k: v for k, v in options.items() if k != "output_size"}


def _roi_pool_backward(case, grad, array):
    rois = array(case["rois"])
    _, argmax = numba_droi.roi_pool_with_argmax(array(case["input"]), rois, **case["options"])
    return (numba_droi.roi_pool_backward(array(grad), rois, argmax, case["input"].shape),)


def _reference_roi_pool_backward(case, grad):
    _, argmax = ref_roi_pool.roi_pool(case["input"], case["rois"], **case["options"])
    return (ref_roi_pool.roi_pool_backward(grad, case["rois"], argmax, case["input"].shape),)


def _deform_roi_pool_forward(module, case, array):
    o = case["options"]
    return module.deform_roi_pool(array(case["input"]), array(case["rois"]), _maybe(array, case["offset"]),
                                  o["output_size"], o["spatial_scale"], o["sampling_ratio"], o["gamma"],
                                  mask=_maybe(array, case["mask"]))


def _deform_roi_pool_backward(module, case, grad, array):
    o = _without_size(case["options"])
    grads = module.deform_roi_pool_backward(
        array(grad), array(case["input"]), array(case["rois"]), _maybe(array, case["offset"]),
        o["spatial_scale"], o["sampling_ratio"], o["gamma"], mask=_maybe(array, case["mask"]))
    # reference/ returns every gradient; the operator None for an absent offset or mask
    return grads[0], grads[1] if case["offset"] is not None else None, \
        grads[2] if case["mask"] is not None else None


def _deform_psroi_pool_backward(module, case, grad, array):
    o = case["options"]
    return module.deform_psroi_pool_backward(
        array(grad), array(case["input"]), array(case["rois"]), _maybe(array, case["trans"]),
        o["spatial_scale"], o["group_size"], o["part_size"], o["sample_per_part"], o["trans_std"],
        o["no_trans"])


def _deform_conv2d_forward(module, case, array):
    return module.deform_conv2d(array(case["input"]), _maybe(array, case["offset"]), array(case["weight"]),
                                _maybe(array, case["bias"]), mask=_maybe(array, case["mask"]),
                                **case["options"])


def _deform_conv2d_backward(module, case, grad, array):
    return module.deform_conv2d_backward(array(grad), array(case["input"]), _maybe(array, case["offset"]),
                                         array(case["weight"]), mask=_maybe(array, case["mask"]),
                                         **case["options"])


OPERATORS = {
    "roi_align": Operator(
        lambda c, a: numba_droi.roi_align(a(c["input"]), a(c["rois"]), **c["options"]),
        lambda c, g, a: (numba_droi.roi_align_backward(a(g), a(c["rois"]), c["input"].shape,
                                                       **_without_size(c["options"])),),
        lambda c: ref_roi_align.roi_align(c["input"], c["rois"], **c["options"]),
        lambda c, g: (ref_roi_align.roi_align_backward(g, c["rois"], c["input"].shape,
                                                       **_without_size(c["options"])),)),
    "roi_pool": Operator(
        lambda c, a: numba_droi.roi_pool(a(c["input"]), a(c["rois"]), **c["options"]),
        _roi_pool_backward,
        lambda c: ref_roi_pool.roi_pool(c["input"], c["rois"], **c["options"])[0],
        _reference_roi_pool_backward),
    "ps_roi_pool": Operator(
        lambda c, a: numba_droi.ps_roi_pool(a(c["input"]), a(c["rois"]), **c["options"]),
        lambda c, g, a: (numba_droi.ps_roi_pool_backward(a(g), a(c["rois"]), c["input"].shape,
                                                         **_without_size(c["options"])),),
        lambda c: ref_ps_roi.ps_roi_pool(c["input"], c["rois"], **c["options"]),
        lambda c, g: (ref_ps_roi.ps_roi_pool_backward(g, c["rois"], c["input"].shape,
                                                      **_without_size(c["options"])),)),
    "ps_roi_align": Operator(
        lambda c, a: numba_droi.ps_roi_align(a(c["input"]), a(c["rois"]), **c["options"]),
        lambda c, g, a: (numba_droi.ps_roi_align_backward(a(g), a(c["rois"]), c["input"].shape,
                                                          **_without_size(c["options"])),),
        lambda c: ref_ps_roi.ps_roi_align(c["input"], c["rois"], **c["options"]),
        lambda c, g: (ref_ps_roi.ps_roi_align_backward(g, c["rois"], c["input"].shape,
                                                       **_without_size(c["options"])),)),
    "deform_roi_pool": Operator(
        lambda c, a: _deform_roi_pool_forward(numba_droi, c, a),
        lambda c, g, a: _deform_roi_pool_backward(numba_droi, c, g, a),
        lambda c: _deform_roi_pool_forward(ref_deform_roi_pool, c, identity),
        lambda c, g: _deform_roi_pool_backward(ref_deform_roi_pool, c, g, identity)),
    "deform_psroi_pool": Operator(
        lambda c, a: numba_droi.deform_psroi_pool(a(c["input"]), a(c["rois"]), _maybe(a, c["trans"]),
                                                  **c["options"]),
        lambda c, g, a: _deform_psroi_pool_backward(numba_droi, c, g, a),
        lambda c: ref_deform_psroi_pool.deform_psroi_pool(c["input"], c["rois"], c["trans"],
                                                          **c["options"]),
        lambda c, g: _deform_psroi_pool_backward(ref_deform_psroi_pool, c, g, identity)),
    "deform_conv2d": Operator(
        lambda c, a: _deform_conv2d_forward(numba_droi, c, a),
        lambda c, g, a: _deform_conv2d_backward(numba_droi, c, g, a),
        lambda c: _deform_conv2d_forward(ref_deform_conv, c, identity),
        lambda c, g: _deform_conv2d_backward(ref_deform_conv, c, g, identity)),
}
NAMES = tuple(OPERATORS)
ROI_NAMES = NAMES[:-1]  # the operators that take boxes

# The cuda kernels each operator launches, forward and backward, atomic and deterministic.
CUDA_KERNELS = {
    "roi_align": {"roi_align_forward_cuda", "roi_align_backward_cuda",
                  "roi_align_backward_deterministic_cuda"},
    "roi_pool": {"roi_pool_forward_cuda", "roi_pool_backward_cuda", "roi_pool_backward_deterministic_cuda"},
    "ps_roi_pool": {"ps_roi_pool_forward_cuda", "ps_roi_pool_backward_cuda",
                    "ps_roi_pool_backward_deterministic_cuda"},
    "ps_roi_align": {"ps_roi_align_forward_cuda", "ps_roi_align_backward_cuda",
                     "ps_roi_align_backward_deterministic_cuda"},
    "deform_roi_pool": {"deform_roi_pool_forward_cuda", "deform_roi_pool_backward_cuda",
                        "deform_roi_pool_backward_deterministic_cuda",
                        "deform_roi_pool_offset_mask_grad_cuda"},
    "deform_psroi_pool": {"deform_psroi_pool_forward_cuda", "deform_psroi_pool_backward_cuda",
                          "deform_psroi_pool_backward_deterministic_cuda",
                          "deform_psroi_pool_trans_grad_cuda"},
    "deform_conv2d": {"deform_im2col_cuda", "deform_im2col_backward_cuda",
                      "deform_im2col_backward_deterministic_cuda", "deform_im2col_coordinate_gradient_cuda"},
}

INSIDE, ACROSS, OUTSIDE, DEGENERATE, REVERSED = range(5)
BOX_KINDS = range(5)


def boxes(rng, kinds, batch, height, width, scale):
    """``(K, 5)`` boxes of the given kinds (inside, across the border, outside, degenerate, reversed)
    in image coordinates for a ``height x width`` map at ``scale``."""
    kinds = np.asarray(kinds, dtype=np.int64)
    count = len(kinds)
    low = rng.uniform(-0.3, 0.9, (count, 2)) * (width, height)
    size = rng.uniform(0.05, 0.8, (count, 2)) * (width, height)
    size[kinds == ACROSS] *= 3
    low[kinds == OUTSIDE] += (width, height)
    size[kinds == DEGENERATE] = 0
    size[kinds == REVERSED] *= -1
    return np.concatenate([rng.integers(0, batch, (count, 1)), low / scale, (low + size) / scale],
                          1).reshape(count, 5)


def make_case(name, rng, batch=2, height=5, width=6, channels=2, kinds=(0, 1, 2, 3, 4), scale=0.5,
              pooled=(2, 2), sampling_ratio=2, aligned=True, gamma=0.1, with_offset=True,
              with_mask=True, group_size=2, part_size=None, sample_per_part=2, trans_std=0.1,
              no_trans=False, classes=1, kernel=(2, 2), stride=(1, 1), padding=(1, 0),
              dilation=(1, 1), weight_groups=1, offset_groups=1, with_bias=True, offset_scale=2.0):
    """A case of operator ``name``. ``channels`` is the output channels of the position-sensitive
    operators (per class for deform_psroi_pool) and the input channels per group of deform_conv2d."""
    rois = boxes(rng, kinds, batch, height, width, scale)
    ph, pw = pooled
    if name in ("roi_align", "roi_pool", "deform_roi_pool", "ps_roi_pool", "ps_roi_align"):
        planes = channels * ph * pw if name.startswith("ps_") else channels
        case = dict(input=rng.standard_normal((batch, planes, height, width)), rois=rois,
                    options=dict(output_size=(ph, pw), spatial_scale=scale))
        if name in ("roi_align", "ps_roi_align", "deform_roi_pool"):
            case["options"]["sampling_ratio"] = sampling_ratio
        if name == "roi_align":
            case["options"]["aligned"] = aligned
        if name == "deform_roi_pool":
            case["options"]["gamma"] = gamma
            case["offset"] = rng.uniform(-1, 1, (len(rois), 2, ph, pw)) if with_offset else None
            case["mask"] = rng.uniform(0.2, 1.5, (len(rois), 1, ph, pw)) if with_mask else None
        return case
    if name == "deform_psroi_pool":
        output_dim = channels * classes
        parts = ph if part_size is None else part_size
        trans = None if no_trans else rng.uniform(-1, 1, (len(rois), 2 * classes, parts, parts))
        return dict(input=rng.standard_normal((batch, output_dim * group_size ** 2, height, width)),
                    rois=rois, trans=trans,
                    options=dict(spatial_scale=scale, output_dim=output_dim, group_size=group_size,
                                 pooled_size=ph, part_size=part_size, sample_per_part=sample_per_part,
                                 trans_std=trans_std, no_trans=no_trans))
    assert name == "deform_conv2d"
    in_channels = channels * weight_groups * offset_groups
    out_channels = 2 * weight_groups
    kh, kw = kernel
    out_h, out_w = ((size + 2 * pad - (dil * (k - 1) + 1)) // step + 1 for size, pad, dil, k, step
                    in zip((height, width), padding, dilation, kernel, stride))
    taps = offset_groups * kh * kw
    return dict(input=rng.standard_normal((batch, in_channels, height, width)),
                offset=offset_scale * rng.uniform(-1, 1, (batch, 2 * taps, out_h, out_w)) if with_offset else None,
                weight=rng.standard_normal((out_channels, in_channels // weight_groups, kh, kw)),
                bias=rng.standard_normal(out_channels) if with_bias else None,
                mask=rng.uniform(0.2, 1.5, (batch, taps, out_h, out_w)) if with_mask else None,
                options=dict(stride=stride, padding=padding, dilation=dilation))


def gradient_arrays(grads):
    """The gradients that exist (not None), as NumPy arrays."""
    return [numba_droi._backend.to_numpy(g) for g in grads if g is not None]


def run(name, case, on, grad_seed=1):
    """``(output, gradients)`` of ``case`` on target ``on`` (a conftest ``On``), gradients of a random
    ``grad_output``, as NumPy arrays (absent gradients left out)."""
    operator = OPERATORS[name]
    with on:
        output = on.numpy(operator.forward(case, on.array))
        grad = np.random.default_rng(grad_seed).standard_normal(output.shape)
        grads = gradient_arrays(operator.backward(case, grad, on.array))
    return output, grads, grad


def reference(name, case, grad):
    operator = OPERATORS[name]
    return operator.reference_forward(case), [g for g in operator.reference_backward(case, grad)
                                             if g is not None]
