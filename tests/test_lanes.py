"""The vector blocks of channels (numba_droi.kernels.lanes) against the scalar loops they replace:
the same bits (the corner sums, added in another order, to rounding), compiled and, with Numba's
compiler off, in NumPy."""
import os
import pathlib
import subprocess
import sys

import numba
import numpy as np
import pytest

from numba_droi.kernels.bilinear import b2_combine
from numba_droi.kernels.lanes import LANES, lanes_b2_add, lanes_b2_scatter, lanes_corner_sums

ROOT = pathlib.Path(__file__).resolve().parent.parent


@numba.njit
def scalar_loops(total, start, slab, grads, grad_row, rows, column, ly, lx, weight):
    """The loops the intrinsics replace, on corner rows ``rows = (ll, lh, hl, hh)``."""
    f = slab.dtype.type
    ll, lh, hl, hh = rows
    hy = f(1) - ly
    hx = f(1) - lx
    sums = np.zeros(4, slab.dtype)
    for i in range(LANES):
        d = column + i
        total[start + i] += weight * b2_combine(slab[ll, d], slab[lh, d], slab[hl, d], slab[hh, d], ly, lx)
        g = weight * grad_row[start + i]
        grads[ll, d] += hy * hx * g
        grads[lh, d] += hy * lx * g
        grads[hl, d] += ly * hx * g
        grads[hh, d] += ly * lx * g
        for corner in range(4):
            sums[corner] += grad_row[start + i] * slab[rows[corner], d]
    return sums[0], sums[1], sums[2], sums[3]


@numba.njit
def blocks(total, start, slab, grads, grad_row, rows, column, ly, lx, weight):
    ll, lh, hl, hh = rows
    lanes_b2_add(total, start, slab, ll, lh, hl, hh, column, ly, lx, weight)
    lanes_b2_scatter(grads, ll, lh, hl, hh, column, grad_row, start, ly, lx, weight)
    return lanes_corner_sums(grad_row, start, slab, ll, lh, hl, hh, column)


def check_blocks(dtype):
    """Blocks at several columns (on a cache line and off one) and corner rows, the elements outside
    a block untouched."""
    rng = np.random.default_rng(0)
    f = np.dtype(dtype).type
    slab = rng.standard_normal((12, 2 * LANES + 5)).astype(dtype)
    for column, start, rows in [(0, 0, (0, 1, 5, 6)), (3, 2, (4, 5, 9, 10)), (LANES + 5, 7, (11, 10, 2, 0))]:
        total = rng.standard_normal(LANES + 9).astype(dtype)
        grads = rng.standard_normal(slab.shape).astype(dtype)
        grad_row = rng.standard_normal(LANES + 9).astype(dtype)
        ly, lx, weight = f(rng.uniform()), f(rng.uniform()), f(rng.standard_normal())
        expected = [total.copy(), grads.copy()]
        got = [total.copy(), grads.copy()]
        expected_sums = scalar_loops(*expected[:1], start, slab, expected[1], grad_row, rows, column, ly, lx,
                                     weight)
        got_sums = blocks(*got[:1], start, slab, got[1], grad_row, rows, column, ly, lx, weight)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        assert not np.array_equal(got[1], grads)
        np.testing.assert_allclose(got_sums, expected_sums, rtol=1e-5 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_equal_the_scalar_loops(dtype):
    check_blocks(dtype)


def test_blocks_equal_the_scalar_loops_with_numbas_compiler_off():
    code = ("import sys, runpy, numpy as np; checks = runpy.run_path(sys.argv[1]); "
            "[checks['check_blocks'](dtype) for dtype in (np.float32, np.float64)]; print('equal')")
    result = subprocess.run([sys.executable, "-c", code, __file__], capture_output=True, text=True,
                            timeout=600, cwd=ROOT, env=dict(os.environ, NUMBA_DISABLE_JIT="1",
                                                            PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "equal"
