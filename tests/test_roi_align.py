"""roi_align, what is specific to it: against reference/ at a larger map with the adaptive grid,
Detectron2's published values, the gradient check by directions of a large input, non-finite boxes, its
argument checks, and torchvision when installed. What every operator is tested for:
tests/test_operators.py."""
import numpy as np
import pytest

import numba_droi
from numba_droi.registry import example_rois
from numba_droi import functional
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck
from reference.roi_align import roi_align as reference_forward
from reference.roi_align import roi_align_backward as reference_backward



def random_case(rng, max_size=11, max_boxes=5, max_channels=3):
    batch, channels = rng.integers(1, 3), rng.integers(1, max_channels + 1)
    height, width = rng.integers(1, max_size + 1, 2)
    scale = float(rng.choice([1.0, 0.5, 0.25, 1.3]))
    features = rng.standard_normal((batch, channels, height, width))
    rois = example_rois(rng, rng.integers(0, 5, rng.integers(1, max_boxes + 1)), batch, height, width, scale)
    options = dict(output_size=tuple(int(v) for v in rng.integers(1, 4, 2)), spatial_scale=scale,
                   sampling_ratio=int(rng.choice([-1, 0, 1, 2, 3])), aligned=bool(rng.integers(2)))
    return features, rois, options


def check_against_reference(on, features, rois, options):
    with on:
        output = on.numpy(numba_droi.roi_align(on.array(features), on.array(rois), **options))
        grad_output = np.random.default_rng(1).standard_normal(output.shape)
        grad_input = on.numpy(numba_droi.roi_align_backward(
            on.array(grad_output), on.array(rois), features.shape,
            **{k: v for k, v in options.items() if k != "output_size"}))
    expected = reference_forward(features, rois, **options)
    np.testing.assert_allclose(output, expected, rtol=1e-12, atol=1e-12)
    expected_grad = reference_backward(grad_output, rois, features.shape,
                                       **{k: v for k, v in options.items() if k != "output_size"})
    np.testing.assert_allclose(grad_input, expected_grad, rtol=1e-12, atol=1e-12)


def test_matches_reference_on_cpu_at_a_larger_size(cpu):
    rng = np.random.default_rng(7)
    features = rng.standard_normal((2, 4, 50, 68))
    rois = example_rois(rng, rng.integers(0, 5, 24), 2, 50, 68, 0.25)
    check_against_reference(cpu, features, rois, dict(output_size=(7, 7), spatial_scale=0.25,
                                                      sampling_ratio=-1, aligned=True))


@pytest.mark.parametrize("aligned, first_row", [(False, [7.5, 8, 8.5, 9]), (True, [4.5, 5, 5.5, 6])])
def test_published_detectron2_values(on, aligned, first_row):
    """Detectron2's test: a 5x5 arange map, box [1, 1, 3, 3], 4x4 output, adaptive sampling."""
    features = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    with on:
        output = numba_droi.roi_align(on.array(features), on.array([[0, 1.0, 1, 3, 3]]), 4,
                                      sampling_ratio=0, aligned=aligned)
    np.testing.assert_allclose(on.numpy(output)[0, 0, 0], first_row, rtol=1e-12)


# -- gradients by finite differences --------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:gradcheck. .* random directions")
def test_gradcheck_of_a_large_input_by_directions(cpu):
    rng = np.random.default_rng(5)
    features = rng.standard_normal((2, 8, 20, 24))
    rois = example_rois(rng, rng.integers(0, 5, 16), 2, 20, 24, 1.0)
    x = Tensor(features, requires_grad=True)
    assert gradcheck(lambda t: functional.roi_align(t, rois, 3, sampling_ratio=2, aligned=True), [x],
                     max_full_size=100)


# -- the cuda kernels' bodies compiled for the cpu, at a detection size ----------------------------

# -- edge cases ------------------------------------------------------------------------------------

def test_nan_and_inf_boxes_give_zero_and_read_nothing_outside(on):
    """The simulator raises on any out-of-range index, so this also checks the bounds on cuda."""
    features = np.random.default_rng(0).standard_normal((1, 2, 5, 6))
    rois = np.array([[0, np.nan, 1, 3, 3], [0, 1, np.inf, 3, 3], [0, 1, 1, np.inf, 3],
                     [0, -np.inf, -np.inf, np.inf, np.inf], [0, 1, 1, 3, 3]])
    for sampling_ratio in (-1, 2):
        with on:
            output = on.numpy(numba_droi.roi_align(on.array(features), on.array(rois), 2,
                                                   sampling_ratio=sampling_ratio))
            grad = on.numpy(numba_droi.roi_align_backward(on.array(np.ones(output.shape)),
                                                          on.array(rois), features.shape,
                                                          sampling_ratio=sampling_ratio))
        assert np.all(output[:4] == 0) and np.all(output[4] != 0)
        assert np.all(np.isfinite(grad))
        np.testing.assert_allclose(grad, reference_backward(np.ones(output.shape)[4:], rois[4:],
                                                            features.shape, 1.0, sampling_ratio))


# -- bad inputs: clear errors before any launch ----------------------------------------------------

GOOD_FEATURES = np.zeros((2, 3, 4, 5))
GOOD_ROIS = np.array([[0, 0, 0, 2, 2], [1, 1, 1, 3, 3.0]])


@pytest.mark.parametrize("features, rois, output_size, error, words", [
    (GOOD_FEATURES, GOOD_ROIS[:, :4], 2, ValueError, "rois must have shape (K, 5)"),
    (GOOD_FEATURES, GOOD_ROIS[0], 2, ValueError, "rois must have shape (K, 5)"),
    (GOOD_FEATURES, np.array([[0, 0, 0, 2, 2], [2, 1, 1, 3, 3.0]]), 2, ValueError, "rois[1, 0] = 2.0"),
    (GOOD_FEATURES, np.array([[-1, 0, 0, 2, 2.0]]), 2, ValueError, "rois[0, 0] = -1.0"),
    (GOOD_FEATURES, np.array([[0, 0, 0, 2, 2], [np.nan, 0, 0, 2, 2]]), 2, ValueError, "rois[1, 0] = nan"),
    (GOOD_FEATURES, GOOD_ROIS.astype(np.int64), 2, TypeError, "rois must be a floating array"),
    (GOOD_FEATURES.astype(np.int32), GOOD_ROIS, 2, TypeError, "input must be float32 or float64"),
    (GOOD_FEATURES.astype(np.float16), GOOD_ROIS, 2, TypeError, "input must be float32 or float64"),
    (GOOD_FEATURES[0], GOOD_ROIS, 2, ValueError, "input must have 4 dimensions"),
    (GOOD_FEATURES, GOOD_ROIS, 0, ValueError, "output_size must be a positive int"),
    (GOOD_FEATURES, GOOD_ROIS, (2, -1), ValueError, "output_size must be a positive int"),
    (GOOD_FEATURES, GOOD_ROIS, (2, 2, 2), ValueError, "output_size"),
    (GOOD_FEATURES, GOOD_ROIS, 2.5, ValueError, "output_size"),
])
def test_bad_arguments_are_named(no_launch, features, rois, output_size, error, words):
    with pytest.raises(error) as raised:
        numba_droi.roi_align(features, rois, output_size)
    assert words in str(raised.value)


@pytest.mark.parametrize("options, error, words", [
    (dict(spatial_scale=float("nan")), ValueError, "spatial_scale must be a finite number, got nan"),
    (dict(spatial_scale="1"), ValueError, "spatial_scale"),
    (dict(sampling_ratio=1.5), TypeError, "sampling_ratio must be an int, got 1.5"),
])
def test_bad_options_are_named(no_launch, options, error, words):
    with pytest.raises(error) as raised:
        numba_droi.roi_align(GOOD_FEATURES, GOOD_ROIS, 2, **options)
    assert words in str(raised.value)


def test_backward_checks_the_gradient_shape(no_launch):
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 3, 2, 2\)"):
        numba_droi.roi_align_backward(np.zeros((2, 4, 2, 2)), GOOD_ROIS, GOOD_FEATURES.shape)
    with pytest.raises(ValueError, match="input_shape"):
        numba_droi.roi_align_backward(np.zeros((2, 3, 2, 2)), GOOD_ROIS, (2, 3, 4))
    with pytest.raises(ValueError, match=r"rois\[1, 0\]"):
        numba_droi.roi_align_backward(np.zeros((2, 3, 2, 2)), GOOD_ROIS, (1, 3, 4, 5))
    with pytest.raises(TypeError, match=r"input_shape must be four ints .*, got \(2, 3, 4.7, 5\)"):
        numba_droi.roi_align_backward(np.zeros((2, 3, 2, 2)), GOOD_ROIS, (2, 3, 4.7, 5))


@pytest.mark.parametrize("seed", range(10))
def test_matches_torchvision_when_installed(cpu, seed):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    features, rois, options = random_case(np.random.default_rng(300 + seed))
    rois[:, 3:] = np.maximum(rois[:, 3:], rois[:, 1:3])  # torchvision fails on reversed aligned boxes
    x = torch.tensor(features, requires_grad=True)
    expected = torchvision.ops.roi_align(x, torch.tensor(rois), **options)
    grad_output = np.random.default_rng(seed).standard_normal(tuple(expected.shape))
    expected.backward(torch.tensor(grad_output))
    np.testing.assert_allclose(numba_droi.roi_align(features, rois, **options), expected.detach().numpy(),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(numba_droi.roi_align_backward(
        grad_output, rois, features.shape, **{k: v for k, v in options.items() if k != "output_size"}),
        x.grad.numpy(), rtol=1e-12, atol=1e-12)
