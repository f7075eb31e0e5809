"""Which target an array runs on, the kernel argument specs, and how the cpu drivers are called."""
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


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_operators_run_from_several_threads_at_once_under_every_threading_layer(layer):
    """Numba's workqueue layer aborts the process on concurrent parallel calls: the cpu drivers take
    turns under it; the results are the same in every thread."""
    import os
    import subprocess
    import sys
    script = """
import threading, numpy as np, numba, numba_droi
x = np.random.default_rng(0).random((2, 8, 20, 20))
rois = np.array([[0, 1, 1, 15, 15], [1, 5, 5, 18, 10]] * 20, float)
expected = numba_droi.roi_align(x, rois, 3, 1.0, 2, True)
failures = []
def work():
    for _ in range(20):
        out = numba_droi.roi_align(x, rois, 3, 1.0, 2, True)
        numba_droi.roi_align_backward(out, rois, x.shape, 1.0, 2, True)
        failures.extend([] if np.array_equal(out, expected) else ["mismatch"])
threads = [threading.Thread(target=work) for _ in range(4)]
[thread.start() for thread in threads]
[thread.join() for thread in threads]
print(numba.threading_layer(), len(failures))
"""
    environment = dict(os.environ, NUMBA_THREADING_LAYER=layer, NUMBA_ENABLE_CUDASIM="0")
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    used, failures = result.stdout.split()
    assert failures == "0" and (used == "workqueue") == (layer == "workqueue")


def test_a_failed_allocation_names_the_kernel():
    def roi_align_forward_cpu(*args):
        raise MemoryError()
    with pytest.raises(MemoryError, match="roi_align_forward_cpu could not allocate its working arrays"):
        _backend.run_cpu_driver(roi_align_forward_cpu, 1)
