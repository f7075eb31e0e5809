"""roi_pool: against reference/ (float64, output and argmax) on both targets, gradients by finite
differences, the cuda kernels' bodies compiled for the cpu at a detection size, rounding, bad inputs,
and torchvision when it is installed."""
import numba
import numpy as np
import pytest
from test_roi_align import GOOD_FEATURES, GOOD_ROIS, no_launch, random_boxes  # noqa: F401 (fixture)

import numba_droi
from numba_droi import functional
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck
from numba_droi.kernels import roi_pool as kernels
from numba_droi.kernels.roi_align import unravel_output_index
from reference.roi_pool import roi_pool as reference_forward
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
    rois = random_boxes(rng, rng.integers(1, max_boxes + 1), batch, height, width, scale)
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


@pytest.mark.parametrize("seed", range(40))
def test_matches_reference_on_cpu(cpu, seed):
    check_against_reference(cpu, *random_case(np.random.default_rng(seed)))


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_cuda(cuda, seed):
    check_against_reference(cuda, *random_case(np.random.default_rng(seed), max_size=7, max_boxes=3,
                                               max_channels=2))


def test_matches_reference_on_cpu_at_a_larger_size(cpu):
    rng = np.random.default_rng(7)
    features = distinct_features(rng, (2, 4, 30, 41))
    check_against_reference(cpu, features, random_boxes(rng, 24, 2, 30, 41, 0.25),
                            dict(output_size=(7, 7), spatial_scale=0.25))


def test_ties_take_the_first_maximum_in_row_major_order(on):
    features = np.zeros((1, 1, 4, 5))
    features[0, 0, 1, 3] = features[0, 0, 2, 1] = 1.0
    with on:
        output, argmax = numba_droi.roi_pool_with_argmax(on.array(features),
                                                         on.array([[0, 0, 0, 4.0, 3]]), 1)
    assert on.numpy(output)[0, 0, 0, 0] == 1.0 and on.numpy(argmax)[0, 0, 0, 0] == 1 * 5 + 3


def test_float32_matches_float64_reference(on):
    rng = np.random.default_rng(3)
    features = distinct_features(rng, (2, 2, 9, 8))
    rois = random_boxes(rng, 4, 2, 9, 8, 0.5)
    options = dict(output_size=(2, 4), spatial_scale=0.5)  # bins exact in both dtypes
    with on:
        output = numba_droi.roi_pool(on.array(features.astype(np.float32)),
                                     on.array(rois.astype(np.float32)), **options)
    assert output.dtype == np.float32
    np.testing.assert_allclose(on.numpy(output), reference_forward(features, rois, **options)[0],
                               rtol=1e-6, atol=1e-6)


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

@pytest.mark.parametrize("seed", range(4))
def test_gradcheck_on_cpu(cpu, seed):
    features, rois, options = random_case(np.random.default_rng(100 + seed), max_size=8)
    x = Tensor(features, requires_grad=True)
    assert gradcheck(lambda t: functional.roi_pool(t, rois, **options), [x])


def test_gradcheck_on_cuda(cuda):
    features, rois, options = random_case(np.random.default_rng(200), max_size=6, max_boxes=2,
                                          max_channels=1)
    with cuda:
        x = Tensor(cuda.array(features), requires_grad=True)
        assert gradcheck(lambda t: functional.roi_pool(t, cuda.array(rois), **options), [x])


def test_functional_gradient_equals_array_backward(on):
    rng = np.random.default_rng(9)
    features, rois, options = random_case(rng, max_size=6, max_boxes=2, max_channels=2)
    with on:
        x = Tensor(on.array(features), requires_grad=True)
        out = functional.roi_pool(x, on.array(rois), **options)
        grad = rng.standard_normal(out.shape)
        out.backward(on.array(grad))
        _, argmax = numba_droi.roi_pool_with_argmax(on.array(features), on.array(rois), **options)
        expected = numba_droi.roi_pool_backward(on.array(grad), on.array(rois), argmax, features.shape)
    np.testing.assert_array_equal(on.numpy(x.grad), on.numpy(expected))


# -- the cuda kernels' bodies compiled for the cpu, at a detection size ----------------------------

@numba.njit(parallel=True)
def _cuda_forward_body_on_cpu(features, rois, spatial_scale, output, argmax):
    for index in numba.prange(output.size):  # what each thread of roi_pool_forward_cuda does
        k, c, ph, pw = unravel_output_index(index, output.shape)
        box = kernels.pool_box(rois, k, spatial_scale, 1, output.shape[2], output.shape[3])
        h_low, h_high, w_low, w_high = kernels.pool_window(box, ph, pw, features.shape[2],
                                                           features.shape[3])
        output[k, c, ph, pw], argmax[k, c, ph, pw] = kernels.roi_pool_window(
            features, box[0], c, h_low, h_high, w_low, w_high)


@numba.njit
def _cuda_backward_body_on_cpu(grad_output, rois, argmax, grad_input):
    for index in range(grad_output.size):  # serial: the cpu add is not atomic
        k, c, ph, pw = unravel_output_index(index, grad_output.shape)
        kernels.roi_pool_scatter(grad_output[k, c, ph, pw], grad_input, int(rois[k, 0]), c,
                                 argmax[k, c, ph, pw])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_bodies_compiled_for_cpu_match_the_cpu_drivers_at_detection_size(dtype):
    rng = np.random.default_rng(11)
    features = rng.standard_normal((2, 256, 50, 68)).astype(dtype)
    rois = random_boxes(rng, 512, 2, 50, 68, 1 / 16).astype(dtype)
    output, argmax = numba_droi.roi_pool_with_argmax(features, rois, 7, 1 / 16)
    assert argmax.dtype == np.int32
    body_output, body_argmax = np.zeros_like(output), np.full_like(argmax, -1)
    _cuda_forward_body_on_cpu(features, rois, dtype(1 / 16), body_output, body_argmax)
    np.testing.assert_array_equal(body_output, output)
    np.testing.assert_array_equal(body_argmax, argmax)

    grad_output = rng.standard_normal(output.shape).astype(dtype)
    grad_input = numba_droi.roi_pool_backward(grad_output, rois, argmax, features.shape)
    body_grad = np.zeros_like(features)
    _cuda_backward_body_on_cpu(grad_output, rois, argmax, body_grad)
    np.testing.assert_allclose(body_grad, grad_input, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


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


def test_no_boxes_give_an_empty_output_and_zero_gradient(on):
    features = np.ones((2, 3, 4, 5))
    with on:
        output, argmax = numba_droi.roi_pool_with_argmax(on.array(features), on.array(np.zeros((0, 5))),
                                                         (2, 3))
        grad = numba_droi.roi_pool_backward(on.array(np.zeros((0, 3, 2, 3))), on.array(np.zeros((0, 5))),
                                            argmax, features.shape)
    assert output.shape == argmax.shape == (0, 3, 2, 3)
    assert grad.shape == features.shape and not on.numpy(grad).any()


@pytest.mark.parametrize("shape", [(1, 0, 4, 5), (1, 3, 0, 5), (1, 3, 4, 0)])
def test_empty_feature_maps_give_zeros(cpu, shape):
    output, argmax = numba_droi.roi_pool_with_argmax(np.ones(shape), np.array([[0, 0.5, 0.5, 2, 2]]), 2)
    assert output.shape == (1, shape[1], 2, 2) and not output.any() and np.all(argmax == -1)


def test_non_contiguous_inputs_give_the_same_result(on):
    rng = np.random.default_rng(4)
    features = distinct_features(rng, (1, 5, 7, 2))
    rois = random_boxes(rng, 3, 1, 5, 7, 1.0)
    with on:
        strided = numba_droi.roi_pool(on.array(features).transpose(0, 3, 1, 2),
                                      on.array(np.asfortranarray(rois)), 3)
        contiguous = numba_droi.roi_pool(on.array(np.ascontiguousarray(features.transpose(0, 3, 1, 2))),
                                         on.array(rois), 3)
    np.testing.assert_array_equal(on.numpy(strided), on.numpy(contiguous))


def test_inputs_are_not_modified(on):
    rng = np.random.default_rng(8)
    features, rois = distinct_features(rng, (1, 2, 6, 6)), np.array([[0, 0.5, 0.75, 4.25, 5.5]])
    grad = rng.standard_normal((1, 2, 2, 2))
    copies = [a.copy() for a in (features, rois, grad)]
    with on:
        arrays = [on.array(a) for a in (features, rois, grad)]
        _, argmax = numba_droi.roi_pool_with_argmax(arrays[0], arrays[1], 2)
        argmax_copy = on.numpy(argmax).copy()
        numba_droi.roi_pool_backward(arrays[2], arrays[1], argmax, features.shape)
    for array, copy in zip(arrays + [argmax], copies + [argmax_copy]):
        np.testing.assert_array_equal(on.numpy(array), copy)


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
