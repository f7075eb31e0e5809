"""Adversarial boxes and offsets (NaN, inf, 1e30, negative sizes, offsets that move samples far outside)
through every kernel: under the simulator, which raises on any out-of-range index, no kernel reads or
writes outside its arrays; outputs and gradients stay finite, and a bad box or offset never changes the
result of the others. Huge finite boxes take a bounded sampling grid (MAX_SAMPLING_RATIO)."""
import numpy as np
import pytest

import numba_droi
from numba_droi import _backend, kernels
from numba_droi.kernels.roi_align import MAX_SAMPLING_RATIO
from operators import CUDA_KERNELS, NAMES, OPERATORS, ROI_NAMES, gradient_arrays, make_case

NAN, INF = np.nan, np.inf
# [x1, y1, x2, y2] in image coordinates; the first ones give 0 (a non-finite coordinate)
NON_FINITE = [[NAN, 1, 3, 3], [1, INF, 3, 3], [1, 1, -INF, 3], [-INF, -INF, INF, INF], [NAN] * 4]
HUGE = [[-1e30, -1e30, 1e30, 1e30], [1e30, 1e30, 1e30, 1e30], [1, 1, 1e30, 3], [4, 4, -1e30, -1e30],
        [3, 3, 1, 1], [1e30, 1, 1e30 + 5, 3], [-1e30, 2, -1e30, 2]]


def adversarial_case(name, dtype=np.float64, huge=HUGE, sampling_ratio=2, aligned=True):
    """Two ordinary boxes first, then the adversarial ones (all in image 0)."""
    case = make_case(name, np.random.default_rng(0), batch=1, height=5, width=6, kinds=(0, 1), channels=1,
                     pooled=(2, 2), sampling_ratio=sampling_ratio, aligned=aligned)
    bad = np.array(NON_FINITE + huge, dtype=np.float64)
    case["rois"] = np.concatenate([case["rois"], np.concatenate([np.zeros((len(bad), 1)), bad], 1)])
    count = len(case["rois"])
    rng = np.random.default_rng(1)
    if name == "deform_roi_pool":
        case["offset"] = rng.uniform(-1, 1, (count, 2, 2, 2))
        case["mask"] = rng.uniform(0.5, 1, (count, 1, 2, 2))
    if name == "deform_psroi_pool":
        case["trans"] = rng.uniform(-1, 1, (count, 2, 2, 2))
    return {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in case.items()}


def everything(name, case, on):
    """Output and gradients (atomic and, on cuda, deterministic backwards) as NumPy arrays."""
    operator = OPERATORS[name]
    with on:
        output = operator.forward(case, on.array)
        grad_output = np.random.default_rng(2).standard_normal(output.shape).astype(output.dtype)
        grads = gradient_arrays(operator.backward(case, grad_output, on.array))
        with numba_droi.deterministic():
            grads += gradient_arrays(operator.backward(case, grad_output, on.array))
    return on.numpy(output), grads


def check_adversarial(name, on, dtype, huge=HUGE, sampling_ratio=2, aligned=True):
    case = adversarial_case(name, dtype, huge, sampling_ratio, aligned)
    output, grads = everything(name, case, on)
    assert np.isfinite(output).all()
    assert all(np.isfinite(g).all() for g in grads)
    assert not output[2:2 + len(NON_FINITE)].any()
    ordinary = {k: v[:2] if k in ("rois", "offset", "mask", "trans") else v for k, v in case.items()}
    with on:
        alone = on.numpy(OPERATORS[name].forward(ordinary, on.array))
    np.testing.assert_array_equal(output[:2], alone)


@pytest.fixture
def launched(monkeypatch):
    names = set()
    launch = _backend.launch
    monkeypatch.setattr(_backend, "launch", lambda kernel, *args: (names.add(kernel.__name__),
                                                                  launch(kernel, *args)))
    return names


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ROI_NAMES)
def test_bad_boxes_run_through_every_cuda_kernel_in_bounds(cuda, launched, name, dtype):
    check_adversarial(name, cuda, dtype)
    assert launched == CUDA_KERNELS[name]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ROI_NAMES)
def test_bad_boxes_on_cpu_with_the_adaptive_grid(cpu, name, dtype):
    check_adversarial(name, cpu, dtype, sampling_ratio=0)


def test_an_end_at_minus_infinity_is_not_clamped_to_a_finite_box(on):
    """roi_align's minimum size of 1 (not aligned) would make x2 = -inf a box of width 1."""
    check_adversarial("roi_align", on, np.float64, aligned=False)
    check_adversarial("roi_align", on, np.float64, huge=[], sampling_ratio=0, aligned=False)


@pytest.mark.parametrize("name", ["roi_align", "ps_roi_align", "deform_roi_pool"])
def test_a_huge_box_on_cuda_takes_the_capped_adaptive_grid(cuda, cpu, name):
    """A box 1e30 wide: 256 samples per bin along x (a 2-d cap would be slow in the simulator)."""
    huge = [[1, 1, 1e30, 3], [-1e30, 1, 1e30, 4]]
    check_adversarial(name, cuda, np.float64, huge, sampling_ratio=-1)
    case = adversarial_case(name, np.float64, huge, sampling_ratio=-1)
    on_cuda, on_cpu = everything(name, case, cuda), everything(name, case, cpu)
    for a, b in zip([on_cuda[0]] + on_cuda[1], [on_cpu[0]] + on_cpu[1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["roi_align", "ps_roi_align", "deform_roi_pool"])
def test_the_adaptive_grid_of_a_huge_box_is_capped_at_max_sampling_ratio(cpu, name):
    case = adversarial_case(name, huge=[[-1e30, -1e30, 1e30, 1e30], [0, 0, 1e30, 1e30]])
    case["rois"] = case["rois"][-2:]
    for key in ("offset", "mask"):
        if key in case:
            case[key] = case[key][-2:]
    capped = everything(name, dict(case, options=dict(case["options"], sampling_ratio=0)), cpu)
    explicit = everything(name, dict(case, options=dict(case["options"], sampling_ratio=MAX_SAMPLING_RATIO)),
                          cpu)
    for a, b in zip([capped[0]] + capped[1], [explicit[0]] + explicit[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, option", [("roi_align", "sampling_ratio"), ("ps_roi_align", "sampling_ratio"),
                                          ("deform_roi_pool", "sampling_ratio"),
                                          ("deform_psroi_pool", "sample_per_part")])
@pytest.mark.parametrize("value", [MAX_SAMPLING_RATIO + 1, 10 ** 12])
def test_a_huge_explicit_sampling_ratio_is_refused(cpu, name, option, value):
    case = make_case(name, np.random.default_rng(0))
    case["options"][option] = value
    with pytest.raises(ValueError, match=f"{option} must be at most {MAX_SAMPLING_RATIO} .* got {value}"):
        OPERATORS[name].forward(case, np.asarray)


def bad_offsets(name, case):
    """``case`` with non-finite and huge offsets: for all of boxes 0 to 5 (ROI ops), or for one tap of
    six output pixels (deform_conv2d)."""
    key = {"deform_roi_pool": "offset", "deform_psroi_pool": "trans", "deform_conv2d": "offset"}[name]
    values = [np.nan, np.inf, -np.inf, 1e30, -1e30, 1e6]
    offset = case[key].copy()
    if name == "deform_conv2d":
        for i, value in enumerate(values):  # one tap of one pixel each, y or x
            offset[0, i % offset.shape[1], 0, i % offset.shape[3]] = value
    else:
        for k, value in enumerate(values):
            offset[k % len(offset)] = value
    return dict(case, **{key: offset})


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["deform_roi_pool", "deform_psroi_pool", "deform_conv2d"])
def test_bad_offsets_run_through_every_kernel_in_bounds(on, name, dtype):
    rng = np.random.default_rng(3)
    case = make_case(name, rng, batch=1, height=5, width=6, kinds=(0, 1) * 3, channels=1, pooled=(2, 2))
    case = bad_offsets(name, case)
    case = {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in case.items()}
    output, grads = everything(name, case, on)
    assert np.isfinite(output).all() and all(np.isfinite(g).all() for g in grads)
    if name != "deform_conv2d":  # every sample of the boxes with bad offsets is outside: 0
        assert not output[:6].any()


def test_every_cuda_kernel_is_covered():
    kernels.import_all()
    assert set().union(*CUDA_KERNELS.values()) == set(_backend.CUDA_KERNELS)
    assert set(CUDA_KERNELS) == set(NAMES)
