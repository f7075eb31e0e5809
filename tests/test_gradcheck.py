"""gradcheck accepts correct gradients and rejects a planted 1% error, in both of its modes."""
import numpy as np
import pytest

from numba_droi import functional
from numba_droi.autograd import Function, Tensor
from numba_droi.gradcheck import GradcheckError, gradcheck

ROIS = np.array([[0, 0.6, 1.3, 4.2, 5.1], [0, 2.2, 0.4, 6.3, 3.7]])


def make_roi_align(gradient_factor):
    """roi_align whose backward is scaled by ``gradient_factor`` (1 is the true gradient)."""
    class ScaledRoIAlign(functional.FUNCTIONS["roi_align"]):
        @classmethod
        def backward(cls, ctx, grad_output):
            (grad_input, *others) = super().backward(ctx, grad_output)
            return (gradient_factor * grad_input, *others)
    return lambda x: ScaledRoIAlign.apply(x, ROIS, (2, 2), 1.0, 2, True)


def features(shape=(1, 2, 7, 8), dtype=np.float64):
    return Tensor(np.random.default_rng(0).standard_normal(shape).astype(dtype), requires_grad=True)


@pytest.mark.parametrize("max_full_size", [10_000, 10], ids=["full-jacobian", "directions"])
def test_accepts_the_true_gradient(max_full_size):
    assert gradcheck(make_roi_align(1.0), [features()], max_full_size=max_full_size)


@pytest.mark.parametrize("max_full_size", [10_000, 10], ids=["full-jacobian", "directions"])
def test_rejects_a_one_percent_error(max_full_size):
    with pytest.raises(GradcheckError, match="worst at"):
        gradcheck(make_roi_align(1.01), [features()], max_full_size=max_full_size)
    assert gradcheck(make_roi_align(1.01), [features()], max_full_size=max_full_size,
                     raise_exception=False) is False


def test_rejects_an_error_in_a_single_element():
    class OneWrongElement(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 2

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            result = 2 * x * grad
            result[1, 2] *= 1.01
            return result

    x = Tensor(np.random.default_rng(1).uniform(1, 2, (3, 4)), requires_grad=True)
    with pytest.raises(GradcheckError, match=r"element \(1, 2\)"):
        gradcheck(OneWrongElement.apply, [x])


def test_checks_float32_inputs_in_float64():
    assert gradcheck(make_roi_align(1.0), [features(dtype=np.float32)])


def test_needs_an_input_that_requires_grad():
    with pytest.raises(ValueError, match="requires_grad"):
        gradcheck(make_roi_align(1.0), [Tensor(np.zeros((1, 2, 7, 8)))])


def test_an_empty_output_has_nothing_to_check():
    """No boxes: roi_align's output has no elements, and its Jacobian none either."""
    check = lambda x: functional.roi_align(x, np.zeros((0, 5)), 2, sampling_ratio=2)  # noqa: E731
    assert gradcheck(check, [features()])
    assert gradcheck(check, [features()], max_full_size=10)
