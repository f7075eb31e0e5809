"""Which target an array runs on, and the kernel argument specs."""
import numba
import numpy as np
import pytest

import numba_droi
from numba_droi import _backend


class FakeDeviceArray:
    __cuda_array_interface__ = {"shape": (1,), "typestr": "<f4", "data": (0, False), "version": 3}


def test_numpy_arrays_run_on_the_cpu_target_by_default():
    assert _backend.target_of(np.zeros(3), None, np.ones(2)) == "cpu"


def test_device_arrays_run_on_the_cuda_target():
    assert _backend.target_of(FakeDeviceArray()) == "cuda"


def test_mixed_array_kinds_are_refused_naming_them():
    with pytest.raises(TypeError, match="input on host, rois on GPU"):
        _backend.target_of(np.zeros(3), FakeDeviceArray(), names=("input", "rois"))


@pytest.mark.skipif(not _backend.SIMULATED, reason="routes NumPy arrays to the simulator")
def test_target_context_routes_numpy_arrays_to_the_cuda_kernels(monkeypatch):
    launched = []
    monkeypatch.setattr(_backend, "launch", lambda kernel, size, *args: launched.append(kernel))
    with numba_droi.target("cuda"):
        assert _backend.target_of(np.zeros(3)) == "cuda"
        numba_droi.roi_align(np.ones((1, 1, 4, 4)), np.array([[0, 0, 0, 2, 2.0]]), 2)
    assert _backend.target_of(np.zeros(3)) == "cpu"
    assert [k.__name__ for k in launched] == ["roi_align_forward_cuda"]


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="target must be one of"):
        with numba_droi.target("tpu"):
            pass


def test_kernel_argument_types_follow_the_spec():
    types = _backend.kernel_argument_types("F4 F2 f i b I1", np.float32)
    assert types == (numba.float32[:, :, :, ::1], numba.float32[:, ::1], numba.float32, numba.int64,
                     numba.boolean, numba.int64[::1])


def test_every_cuda_kernel_is_registered_with_a_spec():
    import numba_droi.kernels.roi_align  # noqa: F401
    assert {"roi_align_forward_cuda", "roi_align_backward_cuda"} <= set(_backend.CUDA_KERNELS)
