"""The differentiable basics: Tensor arithmetic with broadcasting, reshape/flatten, sum/mean, relu,
sigmoid, linear and the losses; each against NumPy formulas and gradchecked in float64."""
import warnings

import numpy as np
import pytest
from scipy.special import expit, logsumexp
from scipy.special import softmax as scipy_softmax

from numba_droi import functional as F
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck

RNG = np.random.default_rng(0)


def leaf(shape, low=-1.0, high=1.0, dtype=np.float64, seed=0):
    return Tensor(np.random.default_rng(seed).uniform(low, high, shape).astype(dtype), requires_grad=True)


# -- arithmetic ----------------------------------------------------------------------------------

OPERATORS = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
}
SHAPE_PAIRS = [((3, 1), (1, 4)), ((2, 3), (3,)), ((4,), (2, 3, 4)), ((), (2, 3)), ((2, 3), ()),
               ((2, 1, 3), (4, 1)), ((3,), (3,))]


@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=str)
@pytest.mark.parametrize("name", OPERATORS)
def test_binary_operators_broadcast_and_reduce_gradients(name, shapes):
    tensor_op, numpy_op = OPERATORS[name]
    a, b = leaf(shapes[0], 1, 2, seed=1), leaf(shapes[1], 1, 2, seed=2)  # b away from 0 for div
    out = tensor_op(a, b)
    np.testing.assert_array_equal(out.data, numpy_op(a.data, b.data))
    out.backward(np.ones(out.shape))
    assert a.grad.shape == a.shape and b.grad.shape == b.shape
    assert gradcheck(tensor_op, [a, b])


def test_broadcast_gradient_is_the_sum_over_stretched_axes():
    a, b = leaf((3, 1)), leaf((1, 4))
    F.sum(a + b).backward()
    np.testing.assert_array_equal(a.grad, np.full((3, 1), 4.0))  # each a[i] is used 4 times
    np.testing.assert_array_equal(b.grad, np.full((1, 4), 3.0))
    c, d = leaf(()), leaf((2, 3))
    F.sum(c * d).backward()
    assert c.grad.shape == () and np.isclose(c.grad, d.data.sum())


@pytest.mark.parametrize("other", [2.5, np.float64(2.5), np.array(2.5), np.arange(1.0, 4.0)],
                         ids=["float", "numpy-scalar", "0-d", "array"])
def test_numbers_and_arrays_on_either_side(other):
    a = leaf((2, 3), 1, 2)
    for fn, expected in [(lambda t: t + other, 1), (lambda t: other + t, 1), (lambda t: t - other, 1),
                         (lambda t: other - t, -1), (lambda t: t * other, other),
                         (lambda t: other * t, other)]:
        a.grad = None
        out = fn(a)
        assert isinstance(out, Tensor)
        out.backward(np.ones(out.shape))
        np.testing.assert_allclose(a.grad, np.broadcast_to(expected, (2, 3)))
    assert gradcheck(lambda t: other / t - t / other, [a])


def test_negation():
    a = leaf((2, 3))
    np.testing.assert_array_equal((-a).data, -a.data)
    assert gradcheck(lambda t: -t, [a])


def test_float32_stays_float32_and_gradients_take_the_input_dtype():
    a = leaf((2, 3), dtype=np.float32)
    assert (a * 0.5 + 1 - a / 3).dtype == np.float32
    b = leaf((3,), dtype=np.float64)
    F.sum(a * b).backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64


MATMUL_SHAPES = [((2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)), ((3,), (3,)), ((2, 2, 3), (3, 4)),
                 ((3,), (2, 3, 4)), ((1, 2, 3), (5, 3, 2)), ((2, 3), (4, 3, 2))]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_follows_numpy_and_its_gradients_check(shapes):
    a, b = leaf(shapes[0], seed=1), leaf(shapes[1], seed=2)
    out = a @ b
    np.testing.assert_allclose(out.data, np.matmul(a.data, b.data), rtol=1e-15)
    assert gradcheck(lambda x, y: x @ y, [a, b])
    assert gradcheck(lambda x: a.data @ x, [b])  # an array on the left


def test_arithmetic_does_not_modify_inputs():
    a, b = leaf((3, 1)), leaf((1, 4))
    before = a.data.copy(), b.data.copy()
    F.sum((a + b) * a / b - a @ b).backward()
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(b.data, before[1])


# -- shapes and reductions -----------------------------------------------------------------------

def test_reshape_and_flatten():
    a = leaf((2, 3, 4))
    assert F.reshape(a, (4, -1)).shape == (4, 6) and F.reshape(a, 24).shape == (24,)
    assert F.flatten(a).shape == (24,) and F.flatten(a, 1).shape == (2, 12)
    assert F.flatten(a, 0, 1).shape == (6, 4) and F.flatten(a, -2, -1).shape == (2, 12)
    assert F.flatten(Tensor(np.array(3.0))).shape == (1,)
    np.testing.assert_array_equal(F.flatten(a, 1).data, a.data.reshape(2, 12))
    assert gradcheck(lambda t: F.reshape(t, (4, 6)) * np.arange(24.0).reshape(4, 6), [a])
    assert gradcheck(lambda t: F.flatten(t, 1) * np.arange(24.0).reshape(2, 12), [a])
    with pytest.raises(ValueError, match="start_dim"):
        F.flatten(a, 2, 1)
    with pytest.raises(ValueError, match="end_dim must lie in"):
        F.flatten(a, 0, 3)


@pytest.mark.parametrize("axis", [None, 0, -1, (0, 2), (2, 0), ()], ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_sum_and_mean_match_numpy_and_check(axis, keepdims):
    a = leaf((2, 3, 4))
    np.testing.assert_allclose(F.sum(a, axis, keepdims).data, np.sum(a.data, axis, keepdims=keepdims))
    np.testing.assert_allclose(F.mean(a, axis, keepdims).data, np.mean(a.data, axis, keepdims=keepdims))
    assert gradcheck(lambda t: F.sum(t, axis, keepdims), [a])
    assert gradcheck(lambda t: F.mean(t, axis, keepdims), [a])


def test_sum_of_a_0d_tensor_and_bad_axes():
    a = leaf(())
    assert F.sum(a).shape == () and gradcheck(F.mean, [a])
    with pytest.raises(ValueError, match="axis must lie in"):
        F.sum(leaf((2, 3)), axis=2)
    with pytest.raises(ValueError, match="repeat"):
        F.mean(leaf((2, 3)), axis=(1, -1))


# -- activations and linear ----------------------------------------------------------------------

def test_relu():
    values = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    a = Tensor(values, requires_grad=True)
    F.relu(a).backward(np.ones(5))
    np.testing.assert_array_equal(F.relu(a).data, [0, 0, 0, 0.5, 2])
    np.testing.assert_array_equal(a.grad, [0, 0, 0, 1, 1])  # 0 at 0, as in PyTorch
    away_from_zero = leaf((3, 4), seed=3)
    away_from_zero.data[np.abs(away_from_zero.data) < 0.05] = 0.3
    assert gradcheck(F.relu, [away_from_zero])


def test_sigmoid_matches_scipy_is_stable_and_checks():
    a = leaf((3, 4), -4, 4)
    np.testing.assert_allclose(F.sigmoid(a).data, expit(a.data), rtol=1e-14)
    assert gradcheck(F.sigmoid, [a])
    extreme = np.array([-1000.0, -90.0, 0.0, 90.0, 1000.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow
        out = F.sigmoid(extreme).data
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expit(extreme.astype(np.float64)), rtol=1e-6)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_matches_scipy_is_stable_and_checks(axis):
    a = leaf((3, 4, 2), -4, 4)
    np.testing.assert_allclose(F.softmax(a, axis).data, scipy_softmax(a.data, axis=axis), rtol=1e-14)
    assert gradcheck(lambda t: F.softmax(t, axis) * np.arange(24.0).reshape(3, 4, 2), [a])
    extreme = np.array([[-1000.0, 0.0, 1000.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow
        out = F.softmax(extreme).data
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 1]])
    with pytest.raises(ValueError, match="axis"):
        F.softmax(a, 3)


@pytest.mark.parametrize("input_shape", [(5, 3), (2, 4, 3), (3,)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_numpy_and_checks(input_shape, with_bias):
    x, weight = leaf(input_shape, seed=1), leaf((2, 3), seed=2)
    bias = leaf((2,), seed=3) if with_bias else None
    expected = x.data @ weight.data.T + (bias.data if with_bias else 0)
    np.testing.assert_allclose(F.linear(x, weight, bias).data, expected, rtol=1e-14)
    inputs = [x, weight] + ([bias] if with_bias else [])
    assert gradcheck(lambda *t: F.linear(*t) if with_bias else F.linear(*t, None), inputs)


def test_linear_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"input's last axis .* got input of shape \(5, 4\)"):
        F.linear(leaf((5, 4)), leaf((2, 3)))
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\), got \(3,\)"):
        F.linear(leaf((5, 3)), leaf((2, 3)), leaf((3,)))
    with pytest.raises(ValueError, match="weight must be 2-d"):
        F.linear(leaf((5, 3)), leaf((3,)))


# -- losses --------------------------------------------------------------------------------------

def reduce(loss, reduction):
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_cross_entropy_matches_the_formula_and_checks(reduction):
    logits = leaf((5, 4), -3, 3)
    labels = np.array([0, 3, 1, 1, 2])
    expected = logsumexp(logits.data, axis=1) - logits.data[np.arange(5), labels]
    out = F.softmax_cross_entropy(logits, labels, reduction)
    np.testing.assert_allclose(out.data, reduce(expected, reduction), rtol=1e-14)
    assert gradcheck(lambda t: F.softmax_cross_entropy(t, labels, reduction), [logits])


def test_softmax_cross_entropy_is_stable_for_large_logits():
    logits = Tensor(np.array([[1e4, 0.0, -1e4], [3e4, 3e4, 0.0]], np.float32), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = F.softmax_cross_entropy(logits, np.array([1, 0]), "none")
        loss.backward(np.ones(2))
    np.testing.assert_allclose(loss.data, [1e4, np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(logits.grad, [[1, -1, 0], [-0.5, 0.5, 0]], atol=1e-6)


def test_softmax_cross_entropy_rejects_bad_labels():
    logits = leaf((3, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got 4 at row 1"):
        F.softmax_cross_entropy(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"got -1 at row 2"):
        F.softmax_cross_entropy(logits, np.array([0, 1, -1]))
    with pytest.raises(ValueError, match="labels must be integers"):
        F.softmax_cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"of shape \(3,\), got int64 of shape \(2,\)"):
        F.softmax_cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="logits must be 2-d"):
        F.softmax_cross_entropy(leaf((3,)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.softmax_cross_entropy(logits, np.array([0, 1, 2]), "max")


def smooth_l1_by_cases(d, beta):
    return np.array([abs(v) - beta / 2 if abs(v) >= beta else v * v / (2 * beta) for v in d.ravel()]
                    ).reshape(d.shape)


def away_from_kinks(shape, beta, seed):
    """Input and target whose differences keep 0.05 away from the kinks at +-beta (and 0 for beta=0)."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(-1, 1, shape)
    difference = rng.uniform(-2.5, 2.5, shape)
    near = np.abs(np.abs(difference) - beta) < 0.05
    difference[near] += 0.2
    return Tensor(target + difference, requires_grad=True), Tensor(target, requires_grad=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("beta", [1.0, 0.3, 0.0])
def test_smooth_l1_loss_matches_the_cases_and_checks(beta, reduction):
    input, target = away_from_kinks((3, 4), beta, seed=4)
    difference = input.data - target.data
    expected = smooth_l1_by_cases(difference, beta) if beta else np.abs(difference)
    out = F.smooth_l1_loss(input, target, beta, reduction)
    np.testing.assert_allclose(out.data, reduce(expected, reduction), rtol=1e-14)
    assert gradcheck(lambda x, t: F.smooth_l1_loss(x, t, beta, reduction), [input, target])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_matches_the_formula_and_checks(reduction):
    input, target = leaf((3, 4), seed=5), leaf((3, 4), seed=6)
    out = F.mse_loss(input, target, reduction)
    np.testing.assert_allclose(out.data, reduce((input.data - target.data) ** 2, reduction), rtol=1e-14)
    assert gradcheck(lambda x, t: F.mse_loss(x, t, reduction), [input, target])


def test_losses_take_a_plain_array_target_and_reject_bad_arguments():
    input = leaf((2, 3))
    F.mse_loss(input, np.zeros((2, 3))).backward()
    np.testing.assert_allclose(input.grad, 2 * input.data / 6)
    with pytest.raises(ValueError, match=r"target must have the shape of input \(2, 3\), got \(3,\)"):
        F.smooth_l1_loss(input, np.zeros(3))
    with pytest.raises(ValueError, match="beta must be >= 0, got -1"):
        F.smooth_l1_loss(input, np.zeros((2, 3)), beta=-1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.mse_loss(input, np.zeros((2, 3)), reduction="avg")


def test_losses_agree_with_torch():
    torch = pytest.importorskip("torch")
    logits, labels = RNG.standard_normal((6, 5)), RNG.integers(0, 5, 6)
    input, target = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))
    for reduction in ("mean", "sum"):
        ours = F.softmax_cross_entropy(logits, labels, reduction).item()
        theirs = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels),
                                                   reduction=reduction).item()
        assert np.isclose(ours, theirs, rtol=1e-12)
        for beta in (1.0, 0.5):
            ours = F.smooth_l1_loss(input, target, beta, reduction).item()
            theirs = torch.nn.functional.smooth_l1_loss(torch.tensor(input), torch.tensor(target),
                                                        reduction=reduction, beta=beta).item()
            assert np.isclose(ours, theirs, rtol=1e-12)
        ours = F.mse_loss(input, target, reduction).item()
        theirs = torch.nn.functional.mse_loss(torch.tensor(input), torch.tensor(target),
                                              reduction=reduction).item()
        assert np.isclose(ours, theirs, rtol=1e-12)


def test_non_contiguous_inputs_give_what_contiguous_ones_give():
    base = np.random.default_rng(7).standard_normal((3, 8))
    strided = base[:, ::2]  # (3, 4), not contiguous
    weight, labels = np.random.default_rng(8).standard_normal((2, 4)), np.array([1, 0, 1])

    def loss_and_gradient(x):
        x = Tensor(x, requires_grad=True)
        loss = F.softmax_cross_entropy(F.linear(F.sigmoid(x) * x, weight), labels) + F.mean(F.relu(x))
        loss.backward()
        return loss.item(), x.grad

    for ours, expected in zip(loss_and_gradient(strided), loss_and_gradient(strided.copy())):
        np.testing.assert_array_equal(ours, expected)
