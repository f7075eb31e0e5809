"""Every cuda kernel compiles to PTX for sm_70 and sm_90 without a GPU, and the float32 kernels do no
float64 arithmetic (a Python float literal or ``float()`` in a kernel would bring some in)."""
import os
import re
import subprocess
import sys

import pytest

from numba_droi import _backend, kernels

CAPABILITIES = ("70", "90")


@pytest.fixture(scope="module")
def ptx_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptx")
    worker = os.path.join(os.path.dirname(__file__), "ptx_worker.py")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    subprocess.run([sys.executable, worker, str(out), *CAPABILITIES], check=True, env=env, timeout=1200)
    return {name: (out / name).read_text() for name in os.listdir(out)}


def test_every_kernel_compiles_for_every_capability_and_dtype(ptx_files):
    kernels.import_all()
    expected = {f"{name}.{dtype}.sm_{cc}.ptx" for name in _backend.CUDA_KERNELS
                for dtype in ("float32", "float64") for cc in CAPABILITIES}
    assert set(ptx_files) == expected
    for name, ptx in ptx_files.items():
        cc = name.rsplit("sm_", 1)[1][:-4]
        assert f".target sm_{cc}" in ptx and ".visible .entry" in ptx, name


def test_float32_kernels_have_no_float64_instructions(ptx_files):
    for name, ptx in ptx_files.items():
        if ".float32." in name:
            f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
            assert not f64, f"{name}: {f64[:5]}"


def test_float64_kernels_do_use_float64(ptx_files):
    """The check above can fail: the same search finds the float64 arithmetic of float64 kernels."""
    for name, ptx in ptx_files.items():
        if ".float64." in name:
            assert re.search(r"\b(add|mul|fma\.rn|sub)\.f64\b", ptx), name


FLOAT_ATOMIC = re.compile(r"\b(atom|red)\.[\w.]*add\.f(32|64)\b")


def test_backward_kernels_scatter_with_atomics(ptx_files):
    for name, ptx in ptx_files.items():
        if "backward" in name and "deterministic" not in name:
            assert FLOAT_ATOMIC.search(ptx), name


def test_deterministic_kernels_use_no_float_atomics(ptx_files):
    """The backwards for use_deterministic_algorithms(True): each thread owns what it adds to."""
    names = [name for name in ptx_files if "deterministic" in name]
    assert len(names) == 7 * 2 * len(CAPABILITIES), names
    for name in names:
        assert not FLOAT_ATOMIC.search(ptx_files[name]), name
