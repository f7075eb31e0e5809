"""roi_align: against reference/ (float64) on both targets, gradients by finite differences, the cuda
kernels' bodies compiled for the cpu at a detection size, published values, and bad inputs."""
import numba
import numpy as np
import pytest

import numba_droi
from numba_droi import _backend, functional
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck
from numba_droi.kernels import roi_align as kernels
from reference.roi_align import roi_align as reference_forward
from reference.roi_align import roi_align_backward as reference_backward


def random_boxes(rng, count, batch, height, width, scale):
    """Boxes inside, across and outside the map, degenerate (zero size) and reversed."""
    kinds = rng.integers(0, 5, count)
    low = rng.uniform(-0.3, 0.9, (count, 2)) * (width, height)
    size = rng.uniform(0.05, 0.8, (count, 2)) * (width, height)
    size[kinds == 1] *= 3  # across the border
    low[kinds == 2] += (width, height)  # outside
    size[kinds == 3] = 0  # degenerate
    size[kinds == 4] *= -1  # reversed
    return np.concatenate([rng.integers(0, batch, (count, 1)), low / scale, (low + size) / scale], 1)


def random_case(rng, max_size=11, max_boxes=5, max_channels=3):
    batch, channels = rng.integers(1, 3), rng.integers(1, max_channels + 1)
    height, width = rng.integers(1, max_size + 1, 2)
    scale = float(rng.choice([1.0, 0.5, 0.25, 1.3]))
    features = rng.standard_normal((batch, channels, height, width))
    rois = random_boxes(rng, rng.integers(1, max_boxes + 1), batch, height, width, scale)
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


@pytest.mark.parametrize("seed", range(60))
def test_matches_reference_on_cpu(cpu, seed):
    check_against_reference(cpu, *random_case(np.random.default_rng(seed)))


@pytest.mark.parametrize("seed", range(8))
def test_matches_reference_on_cuda(cuda, seed):
    check_against_reference(cuda, *random_case(np.random.default_rng(seed), max_size=7, max_boxes=3,
                                               max_channels=2))


def test_matches_reference_on_cpu_at_a_larger_size(cpu):
    rng = np.random.default_rng(7)
    features = rng.standard_normal((2, 4, 50, 68))
    rois = random_boxes(rng, 24, 2, 50, 68, 0.25)
    check_against_reference(cpu, features, rois, dict(output_size=(7, 7), spatial_scale=0.25,
                                                      sampling_ratio=-1, aligned=True))


@pytest.mark.parametrize("aligned", [False, True])
def test_float32_matches_float64_reference(on, aligned):
    rng = np.random.default_rng(3)
    features = rng.standard_normal((2, 2, 9, 8))
    rois = random_boxes(rng, 4, 2, 9, 8, 0.5)
    options = dict(output_size=(2, 3), spatial_scale=0.5, sampling_ratio=2, aligned=aligned)
    with on:
        output = numba_droi.roi_align(on.array(features.astype(np.float32)),
                                      on.array(rois.astype(np.float32)), **options)
    assert output.dtype == np.float32
    np.testing.assert_allclose(on.numpy(output), reference_forward(features, rois, **options),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned, first_row", [(False, [7.5, 8, 8.5, 9]), (True, [4.5, 5, 5.5, 6])])
def test_published_detectron2_values(on, aligned, first_row):
    """Detectron2's test: a 5x5 arange map, box [1, 1, 3, 3], 4x4 output, adaptive sampling."""
    features = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    with on:
        output = numba_droi.roi_align(on.array(features), on.array([[0, 1.0, 1, 3, 3]]), 4,
                                      sampling_ratio=0, aligned=aligned)
    np.testing.assert_allclose(on.numpy(output)[0, 0, 0], first_row, rtol=1e-12)


# -- gradients by finite differences --------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_gradcheck_on_cpu(cpu, seed):
    features, rois, options = random_case(np.random.default_rng(100 + seed), max_size=8)
    x = Tensor(features, requires_grad=True)
    assert gradcheck(lambda t: functional.roi_align(t, rois, **options), [x])


def test_gradcheck_on_cuda(cuda):
    features, rois, options = random_case(np.random.default_rng(200), max_size=6, max_boxes=2,
                                          max_channels=1)
    with cuda:
        x = Tensor(cuda.array(features), requires_grad=True)
        assert gradcheck(lambda t: functional.roi_align(t, cuda.array(rois), **options), [x])


def test_gradcheck_of_a_large_input_by_directions(cpu):
    rng = np.random.default_rng(5)
    features = rng.standard_normal((2, 8, 20, 24))
    rois = random_boxes(rng, 16, 2, 20, 24, 1.0)
    x = Tensor(features, requires_grad=True)
    assert gradcheck(lambda t: functional.roi_align(t, rois, 3, sampling_ratio=2, aligned=True), [x],
                     max_full_size=100)


def test_functional_gradient_equals_array_backward(on):
    rng = np.random.default_rng(9)
    features, rois, options = random_case(rng, max_size=6, max_boxes=2, max_channels=2)
    with on:
        x = Tensor(on.array(features), requires_grad=True)
        out = functional.roi_align(x, on.array(rois), **options)
        grad = rng.standard_normal(out.shape)
        out.backward(on.array(grad))
        expected = numba_droi.roi_align_backward(
            on.array(grad), on.array(rois), features.shape,
            **{k: v for k, v in options.items() if k != "output_size"})
    np.testing.assert_array_equal(on.numpy(x.grad), on.numpy(expected))


# -- the cuda kernels' bodies compiled for the cpu, at a detection size ----------------------------

@numba.njit(parallel=True)
def _cuda_forward_body_on_cpu(features, rois, spatial_scale, sampling_ratio, aligned, output):
    for index in numba.prange(output.size):  # what each thread of roi_align_forward_cuda does
        k, c, ph, pw = kernels.unravel_output_index(index, output.shape)
        box = kernels.roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned,
                                    output.shape[2], output.shape[3])
        output[k, c, ph, pw] = kernels.roi_align_bin(features, c, ph, pw, box)


@numba.njit
def _cuda_backward_body_on_cpu(grad_output, rois, spatial_scale, sampling_ratio, aligned, grad_input):
    for index in range(grad_output.size):  # serial: the cpu add is not atomic
        k, c, ph, pw = kernels.unravel_output_index(index, grad_output.shape)
        box = kernels.roi_align_box(rois, k, spatial_scale, sampling_ratio, aligned,
                                    grad_output.shape[2], grad_output.shape[3])
        kernels.roi_align_bin_backward(grad_output[k, c, ph, pw], grad_input, c, ph, pw, box)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_bodies_compiled_for_cpu_match_the_cpu_drivers_at_detection_size(dtype):
    rng = np.random.default_rng(11)
    features = rng.standard_normal((2, 256, 50, 68)).astype(dtype)
    rois = random_boxes(rng, 512, 2, 50, 68, 1 / 16).astype(dtype)
    arguments = (rois, dtype(1 / 16), 2, True)
    output = numba_droi.roi_align(features, rois, 7, 1 / 16, 2, True)
    body_output = np.zeros_like(output)
    _cuda_forward_body_on_cpu(features, *arguments, body_output)
    np.testing.assert_array_equal(body_output, output)

    grad_output = rng.standard_normal(output.shape).astype(dtype)
    grad_input = numba_droi.roi_align_backward(grad_output, rois, features.shape, 1 / 16, 2, True)
    body_grad = np.zeros_like(features)
    _cuda_backward_body_on_cpu(grad_output, *arguments, body_grad)
    np.testing.assert_allclose(body_grad, grad_input, rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-4 if dtype == np.float32 else 1e-12)


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


def test_no_boxes_give_an_empty_output_and_zero_gradient(on):
    features = np.ones((2, 3, 4, 5))
    with on:
        output = numba_droi.roi_align(on.array(features), on.array(np.zeros((0, 5))), (2, 3))
        grad = numba_droi.roi_align_backward(on.array(np.zeros((0, 3, 2, 3))), on.array(np.zeros((0, 5))),
                                             features.shape)
    assert output.shape == (0, 3, 2, 3)
    assert grad.shape == features.shape and not on.numpy(grad).any()


@pytest.mark.parametrize("shape", [(1, 0, 4, 5), (1, 3, 0, 5), (1, 3, 4, 0)])
def test_empty_feature_maps_give_zeros(cpu, shape):
    output = numba_droi.roi_align(np.ones(shape), np.array([[0, 0.5, 0.5, 2, 2]]), 2)
    assert output.shape == (1, shape[1], 2, 2) and not output.any()


def test_non_contiguous_inputs_give_the_same_result(on):
    rng = np.random.default_rng(4)
    features = rng.standard_normal((1, 5, 7, 2))
    rois = random_boxes(rng, 3, 1, 5, 7, 1.0)
    with on:
        strided = numba_droi.roi_align(on.array(features).transpose(0, 3, 1, 2),
                                       on.array(np.asfortranarray(rois)), 3, aligned=True)
        contiguous = numba_droi.roi_align(on.array(np.ascontiguousarray(features.transpose(0, 3, 1, 2))),
                                          on.array(rois), 3, aligned=True)
    np.testing.assert_array_equal(on.numpy(strided), on.numpy(contiguous))


def test_rois_of_another_float_dtype_are_cast(cpu):
    rng = np.random.default_rng(6)
    features = rng.standard_normal((1, 2, 6, 6))
    rois = np.array([[0, 0.5, 0.75, 4.25, 5.5]])
    np.testing.assert_array_equal(numba_droi.roi_align(features, rois.astype(np.float32), 2),
                                  numba_droi.roi_align(features, rois, 2))


def test_inputs_are_not_modified(on):
    rng = np.random.default_rng(8)
    features, rois = rng.standard_normal((1, 2, 6, 6)), np.array([[0, 0.5, 0.75, 4.25, 5.5]])
    grad = rng.standard_normal((1, 2, 2, 2))
    copies = [a.copy() for a in (features, rois, grad)]
    with on:
        arrays = [on.array(a) for a in (features, rois, grad)]
        numba_droi.roi_align(arrays[0], arrays[1], 2)
        numba_droi.roi_align_backward(arrays[2], arrays[1], features.shape)
    for array, copy in zip(arrays, copies):
        np.testing.assert_array_equal(on.numpy(array), copy)


# -- bad inputs: clear errors before any launch ----------------------------------------------------

@pytest.fixture
def no_launch(monkeypatch):
    def fail(*args):
        raise AssertionError("a kernel ran before the arguments were checked")
    monkeypatch.setattr(_backend, "run", fail)


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
