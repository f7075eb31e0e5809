"""Which target an array runs on, the kernel argument specs, and how the cpu functions run on
threads."""
import os
import subprocess
import sys

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


THREADED_SCRIPT = """
import os, threading, numpy as np, numba, numba_droi
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
child = os.fork()  # the parent's worker threads do not exist in the child
if child == 0:
    os._exit(0 if np.array_equal(numba_droi.roi_align(x, rois, 3, 1.0, 2, True), expected) else 1)
_, status = os.waitpid(child, 0)
try:
    numba.threading_layer()
    layer = "started"
except ValueError:  # no Numba parallel region ran
    layer = "none"
print(len(failures), os.waitstatus_to_exitcode(status), layer)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_operators_run_from_several_threads_at_once_and_after_a_fork():
    """Four threads call operators at once under Numba's workqueue threading layer (which aborts on
    concurrent parallel regions: the operators use none), then a forked child runs one (the worker
    threads do not survive a fork); the results are the same everywhere."""
    environment = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_ENABLE_CUDASIM="0",
                       NUMBA_NUM_THREADS="3")
    result = subprocess.run([sys.executable, "-c", THREADED_SCRIPT], env=environment, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["0", "0", "none"]


def test_the_thread_count_is_a_setting_and_checked():
    previous = numba_droi.get_num_threads()
    try:
        numba_droi.set_num_threads(3)
        assert numba_droi.get_num_threads() == 3
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(ValueError, match="threads must be a positive int"):
                numba_droi.set_num_threads(bad)
    finally:
        numba_droi.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 3])
def test_parallel_for_runs_every_iteration_once(threads, monkeypatch):
    monkeypatch.setattr(_backend, "_threads", threads)
    counts = np.zeros(1000, np.int64)

    def loop(start, stop, counts):
        counts[start:stop] += 1
    _backend.parallel_for(loop, counts.size, counts)
    assert np.all(counts == 1)


def test_a_failed_allocation_names_the_function():
    def _roi_align_forward_boxes(start, stop):
        raise MemoryError()
    with pytest.raises(MemoryError, match="_roi_align_forward_boxes could not allocate its working arrays"):
        _backend.parallel_for(_roi_align_forward_boxes, 1)


MATMUL_SHAPES = [  # (a, b): slices by rows, by columns, broadcast over leading axes, too few to slice
    ((300, 70), (70, 40)), ((40, 70), (70, 300)), ((3, 260, 20), (2, 1, 20, 50)), ((5, 7), (7, 6))]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES)
@pytest.mark.parametrize("add", [False, True])
def test_the_sliced_matmul_equals_numpys(shapes, add):
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal(shape) for shape in shapes)
    start = rng.standard_normal(np.broadcast_shapes(shapes[0][:-2], shapes[1][:-2])
                                + (shapes[0][-2], shapes[1][-1]))
    out = start.copy()
    _backend.matmul(a, b, out, add=add)
    np.testing.assert_allclose(out, np.matmul(a, b) + (start if add else 0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shapes", MATMUL_SHAPES[:3])
def test_the_sliced_matmul_does_not_depend_on_the_number_of_threads(shapes, monkeypatch):
    rng = np.random.default_rng(5)
    a, b = (rng.standard_normal(shape).astype(np.float32) for shape in shapes)
    results = []
    for threads in (1, 3):
        monkeypatch.setattr(_backend, "_threads", threads)
        out = np.empty(np.broadcast_shapes(shapes[0][:-2], shapes[1][:-2]) + (shapes[0][-2], shapes[1][-1]),
                       np.float32)
        _backend.matmul(a, b, out)
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])


def test_the_blas_runs_on_one_thread_only_while_a_sliced_matmul_runs():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    controller = threadpoolctl.ThreadpoolController().select(user_api="blas")
    if not controller.lib_controllers:
        pytest.skip("no BLAS library that threadpoolctl controls")
    seen, original = [], np.matmul

    def counts():
        return [info["num_threads"] for info in threadpoolctl.ThreadpoolController().select(
            user_api="blas").info()]

    def product(a, b, out):
        seen.append(counts())
        original(a, b, out=out)
    with controller.limit(limits=2), pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "matmul", product)  # seen from inside the slices
        _backend.matmul(np.ones((256, 8)), np.ones((8, 4)), np.empty((256, 4)))
        after = counts()
    assert seen and all(during == [1] * len(after) for during in seen)
    assert after == [2] * len(after)
