"""Deterministic gradients: ``use_deterministic_algorithms(True)`` runs, on the cuda target, backwards
that add without atomics in a fixed order (tests/test_ptx.py checks their PTX has no float atomics).
The setting, and which kernels it chooses; that they equal the atomic backwards and repeat bitwise
(and that the cpu target's do): tests/test_operators.py."""
import numpy as np
import pytest

import numba_droi
from numba_droi import _backend
from numba_droi import ops, registry


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


@pytest.mark.parametrize("operator", registry.OPERATORS, ids=lambda operator: operator.name)
def test_the_deterministic_kernels_run_on_cuda_when_asked(cuda, operator, monkeypatch):
    launched = []
    launch = _backend.launch
    monkeypatch.setattr(_backend, "launch", lambda kernel, *args: (launched.append(kernel.__name__),
                                                                  launch(kernel, *args)))
    example = operator.example(np.random.default_rng(0), batch=1, channels=1, boxes=(0, 1))
    with cuda:
        arrays = cuda.arrays(example.arrays)
        output = operator.call(ops, arrays, example.options)
        atomic_start = len(launched)
        operator.vjp(ops, np.ones(output.shape), arrays, example.options)
        atomic = set(launched[atomic_start:])
        launched.clear()
        with numba_droi.deterministic():
            operator.vjp(ops, np.ones(output.shape), arrays, example.options)
    deterministic = set(launched)
    assert not any("deterministic" in kernel for kernel in atomic)
    assert sum("deterministic" in kernel for kernel in deterministic) == sum(
        "cuda_deterministic" in stage for stage in operator.kernels.values())
    assert not any("backward" in kernel and "deterministic" not in kernel for kernel in deterministic)
