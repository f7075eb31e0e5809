"""Deterministic gradients: ``use_deterministic_algorithms(True)`` runs, on the cuda target, backwards
that add without atomics in a fixed order (tests/test_ptx.py checks their PTX has no float atomics).
Under the simulator they equal the atomic backwards to rounding and repeat bitwise; the cpu target is
deterministic by construction: repeated backwards are bitwise equal."""
import numpy as np
import pytest

import numba_droi
from numba_droi import _backend
from operators import CUDA_KERNELS, NAMES, OPERATORS, gradient_arrays, make_case


def test_off_by_default_and_the_context_restores_the_setting():
    assert not numba_droi.are_deterministic_algorithms_enabled()
    with numba_droi.deterministic():
        assert numba_droi.are_deterministic_algorithms_enabled()
        with numba_droi.deterministic(False):
            assert not numba_droi.are_deterministic_algorithms_enabled()
        assert numba_droi.are_deterministic_algorithms_enabled()
    assert not numba_droi.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError), numba_droi.deterministic():
        raise RuntimeError
    assert not numba_droi.are_deterministic_algorithms_enabled()
    try:
        numba_droi.use_deterministic_algorithms(True)
        assert numba_droi.are_deterministic_algorithms_enabled()
    finally:
        numba_droi.use_deterministic_algorithms(False)


def crowded_case(name, seed, boxes=6, dtype=np.float64):
    """Overlapping boxes in one image (many adds into the same gradient elements), as ``dtype``."""
    case = make_case(name, np.random.default_rng(seed), batch=2, height=5, width=6,
                     kinds=(0, 1) * (boxes // 2), channels=1, pooled=(2, 2), sample_per_part=2)
    if "rois" in case:
        case["rois"][:, 0] = 0  # all in image 0 but the last
        case["rois"][-1, 0] = 1
    return {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in case.items()}


def backward(name, case, on, grad_output=None):
    operator = OPERATORS[name]
    with on:
        if grad_output is None:
            output = operator.forward(case, on.array)
            grad_output = np.random.default_rng(5).standard_normal(output.shape).astype(output.dtype)
        return gradient_arrays(operator.backward(case, grad_output, on.array)), grad_output


@pytest.mark.parametrize("name", NAMES)
def test_the_deterministic_kernels_run_on_cuda_when_asked(cuda, name, monkeypatch):
    launched = []
    launch = _backend.launch
    monkeypatch.setattr(_backend, "launch", lambda kernel, *args: (launched.append(kernel.__name__),
                                                                  launch(kernel, *args)))
    case = crowded_case(name, 0, boxes=2)
    backward(name, case, cuda)
    atomic = set(launched)
    launched.clear()
    with numba_droi.deterministic():
        backward(name, case, cuda)
    deterministic = set(launched)
    assert atomic | deterministic == CUDA_KERNELS[name]
    assert not any("deterministic" in kernel for kernel in atomic)
    assert sum("deterministic" in kernel for kernel in deterministic) == 1
    assert not any("backward" in kernel and "deterministic" not in kernel for kernel in deterministic)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NAMES)
def test_on_cuda_the_deterministic_backward_equals_the_atomic_one_and_repeats_bitwise(cuda, cpu, name,
                                                                                      dtype):
    case = crowded_case(name, 1, dtype=dtype)
    atomic, grad_output = backward(name, case, cuda)
    with numba_droi.deterministic():
        first, _ = backward(name, case, cuda, grad_output)
        second, _ = backward(name, case, cuda, grad_output)
    on_cpu, _ = backward(name, case, cpu, grad_output)
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    assert len(first) == len(atomic) == len(on_cpu) > 0
    for a, b, c, d in zip(first, second, atomic, on_cpu):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(a, d, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NAMES)
def test_on_cpu_repeated_backwards_are_bitwise_equal(cpu, name, dtype):
    rng = np.random.default_rng(2)
    case = make_case(name, rng, batch=2, height=23, width=19, kinds=rng.integers(0, 2, 40), channels=8,
                     pooled=(3, 3), sampling_ratio=-1)
    case = {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in case.items()}
    first, grad_output = backward(name, case, cpu)
    for mode in (False, True, False):
        with numba_droi.deterministic(mode):
            again, _ = backward(name, case, cpu, grad_output)
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)
