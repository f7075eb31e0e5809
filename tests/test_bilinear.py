"""The three bilinear rules: values against reference/, coordinate derivatives against finite
differences, compiled (cpu) equal to plain Python (how the simulator runs them)."""
import math

import numba
import numpy as np
import pytest

from numba_droi.kernels import bilinear
from reference import bilinear as ref

HEIGHT, WIDTH = 5, 6
RULES = {  # rule -> (value helper, gradient helper, reference returning None when not counted)
    "b1": (bilinear.b1_value, bilinear.b1_coordinate_gradient, ref.b1),
    "b2": (bilinear.b2_value, bilinear.b2_coordinate_gradient, ref.b2),
    "b3": (bilinear.b3_value, bilinear.b3_coordinate_gradient, ref.b3),
}
KINKS = {"b1": (-1, 0, HEIGHT - 1, HEIGHT), "b2": (-1, HEIGHT), "b3": (-0.5, 0, HEIGHT - 1, HEIGHT - 0.5)}


def features(dtype=np.float64):
    return np.random.default_rng(0).standard_normal((2, 3, HEIGHT, WIDTH)).astype(dtype)


def points(count=400, seed=1):
    """Random points over [-2, H+1] x [-2, W+1], plus every border and integer coordinate."""
    rng = np.random.default_rng(seed)
    special = np.array([-2, -1, -0.5, 0, 0.5, 1, HEIGHT - 1.5, HEIGHT - 1, HEIGHT - 0.5, HEIGHT, HEIGHT + 1])
    ys = np.concatenate([rng.uniform(-2, HEIGHT + 1, count), np.repeat(special, len(special))])
    xs = np.concatenate([rng.uniform(-2, WIDTH + 1, count), np.tile(special, len(special))])
    return ys, xs


def value(rule, data, y, x):
    """The helper's value, None where B3 doesn't count the sample."""
    if rule == "b3" and not bilinear.b3_inside(data, y, x):
        return None
    return RULES[rule][0](data, 1, 2, y, x)


@pytest.mark.parametrize("rule", RULES)
def test_values_match_reference(rule):
    data = features()
    for y, x in zip(*points()):
        expected = RULES[rule][2](data[1, 2], float(y), float(x))
        got = value(rule, data, y, x)
        assert (got is None) == (expected is None), (y, x)
        if expected is not None:
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), (y, x)


@pytest.mark.parametrize("rule", ["b1", "b2"])
def test_outside_and_nan_give_zero_without_reading(rule):
    data = np.full((1, 1, HEIGHT, WIDTH), np.nan)
    for y, x in [(np.nan, 1.0), (1.0, np.nan), (-1.5, 1.0), (1.0, WIDTH + 0.5), (np.inf, 1.0)]:
        assert RULES[rule][0](data, 0, 0, y, x) == 0


def test_b3_rejects_nan_samples():
    assert not bilinear.b3_inside(features(), np.nan, 1.0)
    assert not bilinear.b3_inside(features(), 1.0, np.nan)


def test_b1_weights_sum_to_one_inside_and_know_where_they_clamp():
    data = features()
    for y, x in zip(*points()):
        *_, w_ll, w_lh, w_hl, w_hh, y_free, x_free = bilinear.b1_weights(data, y, x)
        inside = -1 <= y <= HEIGHT and -1 <= x <= WIDTH
        assert w_ll + w_lh + w_hl + w_hh == pytest.approx(1.0 if inside else 0.0)
        assert y_free == (inside and 0 <= y < HEIGHT - 1)
        assert x_free == (inside and 0 <= x < WIDTH - 1)


@pytest.mark.parametrize("rule", RULES)
def test_coordinate_gradients_match_finite_differences(rule):
    """Away from kinks (integers and the rule's borders), d value / d(y, x) equals central differences
    of the reference: including the border bands, where the rule clamps and the derivative is 0."""
    data = features()
    eps, margin = 1e-6, 1e-3
    checked = 0
    for y, x in zip(*points(2000, seed=2)):
        near_kink = any(min(abs(c - round(c)), abs(c - round(c * 2) / 2)) < margin for c in (y, x))
        if near_kink or value(rule, data, y, x) is None:
            continue
        reference = RULES[rule][2]
        numeric_y = (reference(data[1, 2], y + eps, x) - reference(data[1, 2], y - eps, x)) / (2 * eps)
        numeric_x = (reference(data[1, 2], y, x + eps) - reference(data[1, 2], y, x - eps)) / (2 * eps)
        dy, dx = RULES[rule][1](data, 1, 2, y, x)
        assert dy == pytest.approx(numeric_y, abs=1e-6), (y, x)
        assert dx == pytest.approx(numeric_x, abs=1e-6), (y, x)
        checked += 1
    assert checked > 500


def test_gradient_is_zero_in_b1_border_bands_and_not_inside():
    data = features()
    assert bilinear.b1_coordinate_gradient(data, 0, 0, -0.5, 2.5)[0] == 0  # clamped to row 0
    assert bilinear.b1_coordinate_gradient(data, 0, 0, HEIGHT - 0.5, 2.5)[0] == 0  # clamped to H-1
    assert bilinear.b1_coordinate_gradient(data, 0, 0, 1.5, 2.5)[0] != 0


@numba.njit
def _compiled(rule, data, ys, xs, out):
    for i in range(ys.size):
        if rule == 1:
            out[i, 0] = bilinear.b1_value(data, 1, 2, ys[i], xs[i])
            out[i, 1], out[i, 2] = bilinear.b1_coordinate_gradient(data, 1, 2, ys[i], xs[i])
        elif rule == 2:
            out[i, 0] = bilinear.b2_value(data, 1, 2, ys[i], xs[i])
            out[i, 1], out[i, 2] = bilinear.b2_coordinate_gradient(data, 1, 2, ys[i], xs[i])
        elif bilinear.b3_inside(data, ys[i], xs[i]):
            out[i, 0] = bilinear.b3_value(data, 1, 2, ys[i], xs[i])
            out[i, 1], out[i, 2] = bilinear.b3_coordinate_gradient(data, 1, 2, ys[i], xs[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", [1, 2, 3])
def test_compiled_helpers_equal_python(rule, dtype):
    data = features(dtype)
    ys, xs = (p.astype(dtype) for p in points())
    compiled = np.zeros((ys.size, 3), dtype)
    _compiled(rule, data, ys, xs, compiled)
    python = np.zeros_like(compiled)
    name = f"b{rule}"
    for i, (y, x) in enumerate(zip(ys, xs)):
        if rule == 3 and not bilinear.b3_inside(data, y, x):
            continue
        python[i, 0] = RULES[name][0](data, 1, 2, y, x)
        python[i, 1:] = RULES[name][1](data, 1, 2, y, x)
    tolerance = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(compiled, python, rtol=tolerance, atol=tolerance)
    assert math.isfinite(compiled.sum())
