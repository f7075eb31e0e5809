"""Adversarial boxes and offsets (NaN, inf, 1e30, negative sizes, offsets that move samples far outside)
through every kernel: under the simulator, which raises on any out-of-range index, no kernel reads or
writes outside its arrays; outputs and gradients stay finite, and a bad box or offset never changes the
result of the others. Huge finite boxes take a bounded sampling grid (MAX_SAMPLING_RATIO)."""
import numpy as np
import pytest

import numba_droi
from numba_droi import _backend, ops, registry
from numba_droi.kernels.roi_align import MAX_SAMPLING_RATIO

NAN, INF = np.nan, np.inf
# [x1, y1, x2, y2] in image coordinates; the first ones give 0 (a non-finite coordinate)
NON_FINITE = [[NAN, 1, 3, 3], [1, INF, 3, 3], [1, 1, -INF, 3], [-INF, -INF, INF, INF], [NAN] * 4]
HUGE = [[-1e30, -1e30, 1e30, 1e30], [1e30, 1e30, 1e30, 1e30], [1, 1, 1e30, 3], [4, 4, -1e30, -1e30],
        [3, 3, 1, 1], [1e30, 1, 1e30 + 5, 3], [-1e30, 2, -1e30, 2]]
ROI_OPERATORS = [operator for operator in registry.OPERATORS if "rois" in operator.arrays]
BY_NAME = registry.BY_NAME


def roi_operators(*names):
    chosen = [BY_NAME[name] for name in names] if names else ROI_OPERATORS
    return pytest.mark.parametrize("operator", chosen, ids=lambda operator: operator.name)


def adversarial_case(operator, dtype=np.float64, huge=HUGE, **choices):
    """Two ordinary boxes first, then the adversarial ones (all in image 0)."""
    rng = np.random.default_rng(0)
    ordinary = registry.example_rois(rng, (registry.INSIDE, registry.ACROSS), 1, 5, 6, 0.5)
    ordinary[:, 0] = 0
    bad = np.array(NON_FINITE + huge, dtype=np.float64)
    rois = np.concatenate([ordinary, np.concatenate([np.zeros((len(bad), 1)), bad], 1)])
    options = {"pooled_size": 2} if "pooled_size" in operator.options else {"output_size": (2, 2)}
    example = operator.example(rng, dtype, batch=1, channels=1, height=5, width=6, boxes=rois,
                               **options, **choices)
    return example


def everything(operator, example, on):
    """Output and gradients (atomic and, on cuda, deterministic backwards) as NumPy arrays."""
    with on:
        arrays = on.arrays(example.arrays)
        output = operator.call(ops, arrays, example.options)
        grad_output = on.array(np.random.default_rng(2).standard_normal(output.shape).astype(output.dtype))
        grads = list(operator.vjp(ops, grad_output, arrays, example.options).values())
        with numba_droi.deterministic():
            grads += list(operator.vjp(ops, grad_output, arrays, example.options).values())
    return on.numpy(output), [on.numpy(g) for g in grads]


def first_boxes(example, count):
    """``example`` with only its first ``count`` boxes (and their offsets, masks)."""
    boxes = len(example.arrays["rois"])
    return registry.Example({name: a[:count] if a is not None and len(a) == boxes else a
                             for name, a in example.arrays.items()}, example.options)


def check_adversarial(operator, on, dtype, huge=HUGE, **choices):
    example = adversarial_case(operator, dtype, huge, **choices)
    output, grads = everything(operator, example, on)
    assert np.isfinite(output).all()
    assert all(np.isfinite(g).all() for g in grads)
    assert not output[2:2 + len(NON_FINITE)].any()
    with on:
        alone = on.numpy(operator.call(ops, on.arrays(first_boxes(example, 2).arrays), example.options))
    np.testing.assert_array_equal(output[:2], alone)


@pytest.fixture
def launched(monkeypatch):
    names = set()
    launch = _backend.launch
    monkeypatch.setattr(_backend, "launch", lambda kernel, *args: (names.add(kernel.__name__),
                                                                  launch(kernel, *args)))
    return names


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@roi_operators()
def test_bad_boxes_run_through_every_cuda_kernel_in_bounds(cuda, launched, operator, dtype):
    check_adversarial(operator, cuda, dtype, **({"sampling_ratio": 2} if "sampling_ratio" in operator.options
                                                 else {}))
    assert launched == operator.cuda_kernels


def adaptive(operator):
    """The adaptive sampling grid, for the operators that have one."""
    return {"sampling_ratio": 0} if "sampling_ratio" in operator.options else {}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@roi_operators()
def test_bad_boxes_on_cpu_with_the_adaptive_grid(cpu, operator, dtype):
    check_adversarial(operator, cpu, dtype, **adaptive(operator))


def test_an_end_at_minus_infinity_is_not_clamped_to_a_finite_box(on):
    """roi_align's minimum size of 1 (not aligned) would make x2 = -inf a box of width 1."""
    check_adversarial(BY_NAME["roi_align"], on, np.float64, aligned=False)
    check_adversarial(BY_NAME["roi_align"], on, np.float64, huge=[], sampling_ratio=0, aligned=False)


ADAPTIVE = [operator for operator in ROI_OPERATORS if "sampling_ratio" in operator.options]
adaptive_operators = pytest.mark.parametrize("operator", ADAPTIVE, ids=lambda operator: operator.name)


@adaptive_operators
def test_a_huge_box_on_cuda_takes_the_capped_adaptive_grid(cuda, cpu, operator):
    """A box 1e30 wide: 256 samples per bin along x (a 2-d cap would be slow in the simulator)."""
    huge = [[1, 1, 1e30, 3], [-1e30, 1, 1e30, 4]]
    check_adversarial(operator, cuda, np.float64, huge, sampling_ratio=-1)
    example = adversarial_case(operator, np.float64, huge, sampling_ratio=-1)
    on_cuda, on_cpu = everything(operator, example, cuda), everything(operator, example, cpu)
    for a, b in zip([on_cuda[0]] + on_cuda[1], [on_cpu[0]] + on_cpu[1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@adaptive_operators
def test_the_adaptive_grid_of_a_huge_box_is_capped_at_max_sampling_ratio(cpu, operator):
    example = adversarial_case(operator, huge=[[-1e30, -1e30, 1e30, 1e30], [0, 0, 1e30, 1e30]])
    count = len(example.arrays["rois"])
    last = registry.Example({name: a[-2:] if a is not None and len(a) == count else a
                             for name, a in example.arrays.items()}, example.options)
    capped = everything(operator, registry.Example(last.arrays, dict(last.options, sampling_ratio=0)), cpu)
    explicit = everything(operator, registry.Example(
        last.arrays, dict(last.options, sampling_ratio=MAX_SAMPLING_RATIO)), cpu)
    for a, b in zip([capped[0]] + capped[1], [explicit[0]] + explicit[1]):
        np.testing.assert_array_equal(a, b)


SAMPLING = [(operator, option) for operator in registry.OPERATORS
            for option in ("sampling_ratio", "sample_per_part") if option in operator.options]


@pytest.mark.parametrize("operator, option", SAMPLING, ids=[f"{o.name}-{option}" for o, option in SAMPLING])
@pytest.mark.parametrize("value", [MAX_SAMPLING_RATIO + 1, 10 ** 12])
def test_a_huge_explicit_sampling_ratio_is_refused(cpu, operator, option, value):
    example = operator.example(np.random.default_rng(0))
    with pytest.raises(ValueError, match=f"{option} must be at most {MAX_SAMPLING_RATIO} .* got {value}"):
        operator.call(ops, example.arrays, dict(example.options, **{option: value}))


BAD_OFFSETS = [np.nan, np.inf, -np.inf, 1e30, -1e30, 1e6]


def bad_offsets(operator, example):
    """``example`` with non-finite and huge offsets: every offset of boxes 0 to 5 (operators with
    boxes), or single elements spread over the offsets (the others)."""
    arrays = dict(example.arrays)
    for name in operator.offsets:
        offset = arrays[name].copy()
        if "rois" in operator.arrays:
            for k, value in enumerate(BAD_OFFSETS):
                offset[k % len(offset)] = value
        else:
            offset.reshape(-1)[np.linspace(0, offset.size - 1, len(BAD_OFFSETS)).astype(int)] = BAD_OFFSETS
        arrays[name] = offset
    return registry.Example(arrays, example.options)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("operator", [operator for operator in registry.OPERATORS if operator.offsets],
                         ids=lambda operator: operator.name)
def test_bad_offsets_run_through_every_kernel_in_bounds(on, operator, dtype):
    example = operator.example(np.random.default_rng(3), dtype, batch=1, channels=1, height=5, width=6,
                               boxes=(0, 1) * 3 if "rois" in operator.arrays else None)
    output, grads = everything(operator, bad_offsets(operator, example), on)
    assert np.isfinite(output).all() and all(np.isfinite(g).all() for g in grads)
    if "rois" in operator.arrays:  # every sample of the boxes with bad offsets is outside: 0
        assert not output[:6].any()
