"""gradcheck accepts correct gradients and rejects a planted 1% error, in both of its modes; in the
full mode (the default up to 10 000 elements) an error in a single element."""
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
@pytest.mark.filterwarnings("ignore:gradcheck. .* random directions")
def test_accepts_the_true_gradient(max_full_size):
    assert gradcheck(make_roi_align(1.0), [features()], max_full_size=max_full_size)


@pytest.mark.parametrize("max_full_size", [10_000, 10], ids=["full-jacobian", "directions"])
@pytest.mark.filterwarnings("ignore:gradcheck. .* random directions")
def test_rejects_a_one_percent_error(max_full_size):
    with pytest.raises(GradcheckError, match="worst at"):
        gradcheck(make_roi_align(1.01), [features()], max_full_size=max_full_size)
    assert gradcheck(make_roi_align(1.01), [features()], max_full_size=max_full_size,
                     raise_exception=False) is False


def one_wrong_element(wrong):
    """x ** 2 whose backward is 1% off at the element ``wrong``."""
    class OneWrongElement(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 2

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            result = 2 * x * grad
            result[wrong] *= 1.01
            return result
    return OneWrongElement.apply


@pytest.mark.parametrize("shape, wrong", [((3, 4), (1, 2)), ((40, 40), (17, 23)), ((100, 100), (99, 0))],
                         ids=str)
def test_rejects_an_error_in_a_single_element_up_to_ten_thousand_elements(shape, wrong):
    x = Tensor(np.random.default_rng(1).uniform(1, 2, shape), requires_grad=True)
    with pytest.raises(GradcheckError, match=rf"element \({wrong[0]}, {wrong[1]}\)"):
        gradcheck(one_wrong_element(wrong), [x])


def test_above_max_full_size_it_warns_that_random_directions_are_weaker():
    x = Tensor(np.random.default_rng(1).uniform(1, 2, (40, 40)), requires_grad=True)
    with pytest.warns(RuntimeWarning, match="1600 checked elements, above max_full_size = 1000"):
        gradcheck(one_wrong_element((0, 0)), [x], max_full_size=1000, raise_exception=False)


@pytest.mark.parametrize("dtype, words", [(np.float32, "off by about 12% of the function's size"),
                                          (np.int64, "only float arrays have gradients")])
def test_refuses_inputs_that_are_not_float64_saying_why(dtype, words):
    x = Tensor(np.ones((1, 2, 7, 8), dtype), requires_grad=True)
    with pytest.raises(TypeError, match=f"input 0 is {np.dtype(dtype)}, not float64: .*{words}"):
        gradcheck(make_roi_align(1.0), [x])


def test_refuses_a_float32_output():
    """A float64 input but a float32 result (a correct function that computes in float32): refused,
    not blamed on the backward."""
    class InFloat32(Function):
        @staticmethod
        def forward(ctx, x):
            return np.sin(x.astype(np.float32))

        @staticmethod
        def backward(ctx, grad):
            return grad.astype(np.float64)  # wrong, but never reached
    with pytest.raises(TypeError, match="fn's output is float32, not float64"):
        gradcheck(InFloat32.apply, [features()])


def test_needs_an_input_that_requires_grad():
    with pytest.raises(ValueError, match="requires_grad"):
        gradcheck(make_roi_align(1.0), [Tensor(np.zeros((1, 2, 7, 8)))])


@pytest.mark.filterwarnings("ignore:gradcheck. .* random directions")
def test_an_empty_output_has_nothing_to_check():
    """No boxes: roi_align's output has no elements, and its Jacobian none either."""
    check = lambda x: functional.roi_align(x, np.zeros((0, 5)), 2, sampling_ratio=2)  # noqa: E731
    assert gradcheck(check, [features()])
    assert gradcheck(check, [features()], max_full_size=10)
