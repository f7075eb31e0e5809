"""The package imports and runs where Python or Numba run unusually: with docstrings stripped
(``python -OO``), from a read-only install without a writable home (no directory for Numba's kernel
cache), with a damaged kernel cache (files cut short by a full disk or a killed process), and with
Numba's compiler off (``NUMBA_DISABLE_JIT=1``, the usual way to debug kernels), where every operator
still matches reference/."""
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

ROI_ALIGN = """
import numpy as np, numba_droi
output = numba_droi.roi_align(np.arange(16.0).reshape(1, 1, 4, 4), np.array([[0, 0, 0, 2, 2.0]]), 1,
                              sampling_ratio=2, aligned=True)
print(float(output[0, 0, 0, 0]))
"""

EVERY_OPERATOR_AGAINST_THE_REFERENCE = """
import importlib, numpy as np
from numba_droi import ops, registry
for operator in registry.OPERATORS:
    example = operator.example(np.random.default_rng(0), batch=1, height=4, width=5)
    output = operator.call(ops, example.arrays, example.options)
    reference = importlib.import_module(operator.reference)
    np.testing.assert_allclose(output, operator.call(reference, example.arrays, example.options),
                               rtol=1e-12, atol=1e-12)
    grad = np.ones(output.shape)
    grads = operator.vjp(ops, grad, example.arrays, example.options)
    expected = operator.vjp(reference, grad, example.arrays, example.options)
    assert set(grads) == set(expected) != set()
    for name in grads:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-11, atol=1e-11)
print("every operator matches")
"""


def run(code, *python_options, environment=(), path=ROOT):
    env = dict(os.environ, **dict(environment), PYTHONPATH=str(path))
    return subprocess.run([sys.executable, *python_options, "-c", code], env=env, capture_output=True,
                          text=True, timeout=900, cwd=path)


def test_it_imports_and_runs_without_docstrings():
    result = run(ROI_ALIGN, "-OO")
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) == 2.5  # the mean of pixels (0, 0), (0, 1), (1, 0), (1, 1)


def test_a_read_only_install_without_a_writable_home_imports_and_runs(tmp_path):
    """A file named __pycache__ in every package folder stands for a read-only install (even for
    root), HOME=/dev/null for a home that cannot hold a cache: Numba has nowhere to cache."""
    shutil.copytree(ROOT / "numba_droi", tmp_path / "numba_droi",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in [tmp_path / "numba_droi", *(p for p in (tmp_path / "numba_droi").rglob("*") if p.is_dir())]:
        (folder / "__pycache__").touch()
    environment = {"HOME": "/dev/null", "PYTHONDONTWRITEBYTECODE": "1", "XDG_CACHE_HOME": "/dev/null"}
    result = run(ROI_ALIGN, environment=environment, path=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) == 2.5
    assert "no writable directory for Numba's kernel cache" in result.stderr


def test_every_operator_runs_with_numbas_compiler_off():
    result = run(EVERY_OPERATOR_AGAINST_THE_REFERENCE, environment={"NUMBA_DISABLE_JIT": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "every operator matches" in result.stdout


def test_a_damaged_kernel_cache_is_compiled_again(tmp_path):
    """Every cached kernel file cut to half its length: the second process warns, compiles again and
    gives the right result."""
    environment = {"NUMBA_CACHE_DIR": str(tmp_path)}
    assert run(ROI_ALIGN, environment=environment).returncode == 0
    cached = list(tmp_path.rglob("*.nbc"))
    assert cached
    for path in cached:
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    result = run(ROI_ALIGN, environment=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) == 2.5
    assert "was unreadable" in result.stderr and "compiling it again" in result.stderr
