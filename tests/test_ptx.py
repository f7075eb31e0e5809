"""Every cuda kernel compiles to PTX for sm_70, sm_80 and sm_90 without a GPU, and the float32 kernels do
no float64 arithmetic (a Python float literal or ``float()`` in a kernel would bring some in). Where a
ptxas of the NVVM's CUDA release is installed, the kernels assemble for sm_80 and sm_90 without spilling
registers, and the float32 forward kernels fit in 64 registers (experiments/ptx_report.py shows all)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from numba_droi import _backend, kernels, ptx, registry

CAPABILITIES = ("70", "80", "90")
ASSEMBLED_CAPABILITIES = ("80", "90")


@pytest.fixture(scope="module")
def ptx_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptx")
    worker = os.path.join(os.path.dirname(__file__), "ptx_worker.py")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    subprocess.run([sys.executable, worker, str(out), *CAPABILITIES], check=True, env=env, timeout=1200)
    return out


@pytest.fixture(scope="module")
def ptx_files(ptx_dir):
    return {name: (ptx_dir / name).read_text() for name in os.listdir(ptx_dir)}


@pytest.fixture(scope="module")
def resources(ptx_dir, ptx_files):
    """``ptxas -v`` resources of every PTX file of ``ASSEMBLED_CAPABILITIES``, by file name."""
    ptxas = ptx.find_ptxas(next(iter(ptx_files.values())))
    if ptxas is None:
        pytest.skip("no ptxas of the CUDA release of Numba's NVVM (the nvidia-cuda-nvcc wheel has one)")
    return {name: ptx.ptxas_resources(ptxas, str(ptx_dir / name), cc)
            for name in ptx_files for cc in ASSEMBLED_CAPABILITIES if name.endswith(f".sm_{cc}.ptx")}


def test_every_kernel_compiles_for_every_capability_and_dtype(ptx_files):
    kernels.import_all()
    assert set(ptx.operator_kernels()) == set(_backend.CUDA_KERNELS)
    expected = {ptx.ptx_file_name(name, dtype, cc) for name in _backend.CUDA_KERNELS
                for dtype in ptx.DTYPES for cc in CAPABILITIES}
    assert set(ptx_files) == expected
    for name, text in ptx_files.items():
        cc = name.rsplit("sm_", 1)[1][:-4]
        assert f".target sm_{cc}" in text and ".visible .entry" in text, name


def test_float32_kernels_have_no_float64_instructions(ptx_files):
    for name, text in ptx_files.items():
        if ".float32." in name:
            f64 = ptx.f64_instructions(text)
            assert not f64, f"{name}: {f64[:5]}"


def test_float64_kernels_do_use_float64(ptx_files):
    """The check above can fail: the same search finds the float64 arithmetic of float64 kernels."""
    for name, text in ptx_files.items():
        if ".float64." in name:
            assert re.search(r"\b(add|mul|fma\.rn|sub)\.f64\b", text), name


FLOAT_ATOMIC = re.compile(r"\b(atom|red)\.[\w.]*add\.f(32|64)\b")


def test_backward_kernels_scatter_with_atomics(ptx_files):
    for name, text in ptx_files.items():
        if "backward" in name and "deterministic" not in name:
            assert FLOAT_ATOMIC.search(text), name


def test_deterministic_kernels_use_no_float_atomics(ptx_files):
    """The backwards for use_deterministic_algorithms(True): each thread owns what it adds to."""
    names = [name for name in ptx_files if "deterministic" in name]
    expected = {kernel.__name__ for operator in registry.OPERATORS for stage in operator.kernels.values()
                for target, kernel in stage.items() if target == "cuda_deterministic"}
    assert {name.split(".")[0] for name in names} == expected
    assert len(names) == len(expected) * len(ptx.DTYPES) * len(CAPABILITIES)
    for name in names:
        assert not FLOAT_ATOMIC.search(ptx_files[name]), name


def test_every_file_of_the_assembled_capabilities_is_assembled(resources):
    assert len(resources) == len(_backend.CUDA_KERNELS) * len(ptx.DTYPES) * len(ASSEMBLED_CAPABILITIES)


def test_no_kernel_spills_registers_or_uses_local_memory(resources):
    for name, used in resources.items():
        assert used["spill_stores"] == used["spill_loads"] == used["stack_frame"] == 0, (name, used)


def test_float32_forward_kernels_fit_in_64_registers(resources):
    """At 256 threads per block, 64 registers keep four blocks (half the threads an SM holds) resident.
    Float64 forward kernels take up to 80 (two registers per value): see experiments/ptx_report.py."""
    for name, used in resources.items():
        kernel, dtype = name.split(".")[:2]
        if ptx.is_forward(kernel) and dtype == "float32":
            assert used["registers"] <= ptx.FORWARD_REGISTER_TARGET, (name, used)


@pytest.mark.skipif(not _backend.SIMULATED, reason="counts on the CUDA simulator")
def test_memory_traffic_counts_what_each_thread_reads_and_writes():
    """roi_align on one box inside the map, one channel, one bin of one sample (float32): a forward
    thread reads the box's 5 numbers and the sample's 4 corners and writes its output, (5 + 4) * 4
    bytes read and 4 written; the atomic backward's reads the output's gradient and the box, and adds
    into the 4 corners (a read and a write each): (1 + 5 + 4) * 4 read, 4 * 4 written."""
    example = registry.Example(
        dict(input=np.ones((1, 1, 4, 5), np.float32), rois=np.array([[0, 1.2, 1.3, 2.6, 2.9]], np.float32)),
        dict(output_size=1, spatial_scale=1.0, sampling_ratio=1, aligned=True))
    traffic = ptx.memory_traffic(["roi_align"], lambda operator: example)
    assert traffic["roi_align_forward_cuda"] == ("roi_align", 36.0, 4.0)
    assert traffic["roi_align_backward_cuda"] == ("roi_align", 40.0, 16.0)
    assert set(traffic) == registry.BY_NAME["roi_align"].cuda_kernels
