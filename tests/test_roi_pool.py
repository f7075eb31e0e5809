"""roi_pool, what is specific to it: against reference/ (output and argmax) at a larger map, ties, rounding
half away from zero, non-finite and huge boxes, its argument checks (the argmax), planes beyond 32-bit
offsets, and torchvision when it is installed. What every operator is tested for:
tests/test_operators.py."""
import numba
import numpy as np
import pytest

import numba_droi
from numba_droi.registry import example_rois
from numba_droi import functional
from numba_droi.autograd import Tensor
from numba_droi.kernels import roi_pool as kernels
from reference.roi_pool import roi_pool_with_argmax as reference_forward
from reference.roi_pool import roi_pool_backward as reference_backward


def distinct_features(rng, shape):
    """Features whose values differ pairwise by at least 0.1: no ties for the maximum, also under a
    finite-difference step."""
    return (rng.permutation(int(np.prod(shape))) * 0.1 - 5.0).reshape(shape)


def random_case(rng, max_size=11, max_boxes=5, max_channels=3):
    batch, channels = rng.integers(1, 3), rng.integers(1, max_channels + 1)
    height, width = rng.integers(1, max_size + 1, 2)
    scale = float(rng.choice([1.0, 0.5, 0.25, 1.3]))
    features = distinct_features(rng, (batch, channels, height, width))
    rois = example_rois(rng, rng.integers(0, 5, rng.integers(1, max_boxes + 1)), batch, height, width, scale)
    options = dict(output_size=tuple(int(v) for v in rng.integers(1, 4, 2)), spatial_scale=scale)
    return features, rois, options


def check_against_reference(on, features, rois, options):
    with on:
        output, argmax = numba_droi.roi_pool_with_argmax(on.array(features), on.array(rois), **options)
        output, argmax = on.numpy(output), on.numpy(argmax)
        grad_output = np.random.default_rng(1).standard_normal(output.shape)
        grad_input = on.numpy(numba_droi.roi_pool_backward(on.array(grad_output), on.array(rois),
                                                           on.array(argmax), features.shape))
    with on:  # the forward alone skips the argmax
        output_alone = on.numpy(numba_droi.roi_pool(on.array(features), on.array(rois), **options))
        with numba_droi.no_grad():
            output_no_grad = functional.roi_pool(Tensor(on.array(features), requires_grad=True),
                                                 on.array(rois), **options)
    expected, expected_argmax = reference_forward(features, rois, **options)
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_allclose(output, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(output_alone, output)
    np.testing.assert_array_equal(on.numpy(output_no_grad.data), output)
    np.testing.assert_allclose(grad_input, reference_backward(grad_output, rois, expected_argmax,
                                                              features.shape), rtol=1e-12, atol=1e-12)


def test_matches_reference_on_cpu_at_a_larger_size(cpu):
    rng = np.random.default_rng(7)
    features = distinct_features(rng, (2, 4, 30, 41))
    check_against_reference(cpu, features, example_rois(rng, rng.integers(0, 5, 24), 2, 30, 41, 0.25),
                            dict(output_size=(7, 7), spatial_scale=0.25))


def test_ties_take_the_first_maximum_in_row_major_order(on):
    features = np.zeros((1, 1, 4, 5))
    features[0, 0, 1, 3] = features[0, 0, 2, 1] = 1.0
    with on:
        output, argmax = numba_droi.roi_pool_with_argmax(on.array(features),
                                                         on.array([[0, 0, 0, 4.0, 3]]), 1)
    assert on.numpy(output)[0, 0, 0, 0] == 1.0 and on.numpy(argmax)[0, 0, 0, 0] == 1 * 5 + 3


# -- rounding: C's round, halves away from zero ----------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_half_away_from_zero(dtype):
    values = [2.5, -2.5, 0.5, -0.5, 1.5, 0.49999997 if dtype == np.float32 else 0.49999999999999994,
              -1.2, 3.7, 0.0]
    expected = [3, -3, 1, -1, 2, 0, -1, 4, 0]
    rounded = numba.njit(lambda v: kernels.round_half_away(v))
    assert [kernels.round_half_away(dtype(v)) for v in values] == expected  # as the simulator runs it
    assert [rounded(dtype(v)) for v in values] == expected


def test_box_corners_are_rounded_half_away_from_zero(on):
    """x1 = -0.5 rounds to -1 (banker's rounding would give 0): a box two pixels wide whose first
    bin lies left of the map."""
    features = np.arange(8.0).reshape(1, 1, 1, 8) + 10
    with on:
        output = on.numpy(numba_droi.roi_pool(on.array(features), on.array([[0, -0.5, 0, 0.4, 0]]),
                                              (1, 2)))
    np.testing.assert_array_equal(output[0, 0, 0], [0, 10])


# -- gradients by finite differences --------------------------------------------------------------

# -- the cuda kernels' bodies compiled for the cpu, at a detection size ----------------------------

# -- edge cases ------------------------------------------------------------------------------------

def test_nan_inf_and_huge_boxes_are_safe(on):
    """Non-finite boxes give 0 (argmax -1); absurdly large finite ones pool the whole map. The
    simulator raises on any out-of-range index, so this also checks the bounds on cuda."""
    features = distinct_features(np.random.default_rng(0), (1, 2, 5, 6))
    rois = np.array([[0, np.nan, 1, 3, 3], [0, 1, np.inf, 3, 3], [0, 1, 1, np.inf, 3],
                     [0, -np.inf, -np.inf, np.inf, np.inf], [0, -1e30, -1e30, 1e30, 1e30],
                     [0, 1, 1, 3, 3]])
    with on:
        output, argmax = numba_droi.roi_pool_with_argmax(on.array(features), on.array(rois), 2)
        output, argmax = on.numpy(output), on.numpy(argmax)
        grad = on.numpy(numba_droi.roi_pool_backward(on.array(np.ones(output.shape)), on.array(rois),
                                                     on.array(argmax), features.shape))
    assert np.all(output[:4] == 0) and np.all(argmax[:4] == -1)
    assert np.all(np.isfinite(output[4])) and np.all(argmax[4] >= 0)
    np.testing.assert_array_equal(output[5], reference_forward(features, rois[5:], (2, 2))[0][0])
    assert np.all(np.isfinite(grad)) and grad.sum() == (argmax >= 0).sum()


GOOD_FEATURES = np.zeros((2, 3, 4, 5))
GOOD_ROIS = np.array([[0, 0, 0, 2, 2], [1, 1, 1, 3, 3.0]])


# -- bad inputs: clear errors before any launch ----------------------------------------------------

@pytest.mark.parametrize("features, rois, output_size, error, words", [
    (GOOD_FEATURES, GOOD_ROIS[:, :4], 2, ValueError, "rois must have shape (K, 5)"),
    (GOOD_FEATURES, np.array([[0, 0, 0, 2, 2], [2, 1, 1, 3, 3.0]]), 2, ValueError, "rois[1, 0] = 2.0"),
    (GOOD_FEATURES, np.array([[-1, 0, 0, 2, 2.0]]), 2, ValueError, "rois[0, 0] = -1.0"),
    (GOOD_FEATURES, np.array([[np.inf, 0, 0, 2, 2.0]]), 2, ValueError, "rois[0, 0] = inf"),
    (GOOD_FEATURES, GOOD_ROIS.astype(np.int64), 2, TypeError, "rois must be a floating array"),
    (GOOD_FEATURES.astype(np.int32), GOOD_ROIS, 2, TypeError, "input must be float32 or float64"),
    (GOOD_FEATURES[0], GOOD_ROIS, 2, ValueError, "input must have 4 dimensions"),
    (GOOD_FEATURES, GOOD_ROIS, (2, 0), ValueError, "output_size must be a positive int"),
])
def test_bad_arguments_are_named(no_launch, features, rois, output_size, error, words):
    with pytest.raises(error) as raised:
        numba_droi.roi_pool(features, rois, output_size)
    assert words in str(raised.value)


def test_bad_spatial_scale_is_named(no_launch):
    with pytest.raises(ValueError, match="spatial_scale must be a finite number, got inf"):
        numba_droi.roi_pool(GOOD_FEATURES, GOOD_ROIS, 2, spatial_scale=float("inf"))


def test_backward_checks_its_arguments(no_launch):
    grad, argmax = np.zeros((2, 3, 2, 2)), np.zeros((2, 3, 2, 2), np.int64)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 3, 2, 2\)"):
        numba_droi.roi_pool_backward(np.zeros((2, 4, 2, 2)), GOOD_ROIS, argmax, GOOD_FEATURES.shape)
    with pytest.raises(ValueError, match="input_shape"):
        numba_droi.roi_pool_backward(grad, GOOD_ROIS, argmax, (2, 3, 4))
    with pytest.raises(ValueError, match=r"rois\[1, 0\]"):
        numba_droi.roi_pool_backward(grad, GOOD_ROIS, argmax, (1, 3, 4, 5))
    with pytest.raises(ValueError, match=r"argmax must have shape \(2, 3, 2, 2\)"):
        numba_droi.roi_pool_backward(grad, GOOD_ROIS, argmax[:1], GOOD_FEATURES.shape)
    with pytest.raises(TypeError, match="argmax must be an integer array .* got float64"):
        numba_droi.roi_pool_backward(grad, GOOD_ROIS, argmax.astype(np.float64), GOOD_FEATURES.shape)
    for bad in (20, -2):
        with pytest.raises(ValueError, match=r"argmax values must lie in \[-1, H\*W\) = \[-1, 20\)"):
            numba_droi.roi_pool_backward(grad, GOOD_ROIS, np.full_like(argmax, bad), GOOD_FEATURES.shape)


@pytest.mark.parametrize("seed", range(10))
def test_matches_torchvision_when_installed(cpu, seed):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    features, rois, options = random_case(np.random.default_rng(300 + seed))
    x = torch.tensor(features, requires_grad=True)
    expected = torchvision.ops.roi_pool(x, torch.tensor(rois), **options)
    _, expected_argmax = torch.ops.torchvision.roi_pool(torch.tensor(features), torch.tensor(rois),
                                                        options["spatial_scale"], *options["output_size"])
    grad_output = np.random.default_rng(seed).standard_normal(tuple(expected.shape))
    expected.backward(torch.tensor(grad_output))
    output, argmax = numba_droi.roi_pool_with_argmax(features, rois, **options)
    np.testing.assert_allclose(output, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(argmax, expected_argmax.numpy())
    np.testing.assert_allclose(numba_droi.roi_pool_backward(grad_output, rois, argmax, features.shape),
                               x.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_feature_planes_beyond_32_bit_offsets_are_refused(no_launch):
    huge = np.broadcast_to(np.zeros(1, np.float32), (1, 1, 46341, 46341))  # no memory behind it
    rois = np.zeros((1, 5), np.float32)
    for operator in (numba_droi.roi_pool, numba_droi.roi_align):
        with pytest.raises(ValueError, match=r"input's feature planes must have at most 2\*\*31 - 1 "
                                             r"elements, got H\*W = 46341 \* 46341"):
            operator(huge, rois, 2)
    with pytest.raises(ValueError, match="input_shape's feature planes"):
        numba_droi.roi_pool_backward(np.zeros((1, 1, 2, 2), np.float32), rois,
                                     np.zeros((1, 1, 2, 2), np.int32), (1, 1, 46341, 46341))
