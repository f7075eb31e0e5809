"""deform_roi_pool, what is specific to it: against reference/ at a larger map, equal to roi_align without
offsets, mmcv's published values, the offset gradient in B1's border bands, the gradient check by
directions of a large input, bad offsets, and its argument checks. What every operator is tested for:
tests/test_operators.py."""
import numpy as np
import pytest

import numba_droi
from numba_droi.registry import example_rois
from numba_droi import functional
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck
from reference.deform_roi_pool import _bins as reference_bins
from reference.deform_roi_pool import deform_roi_pool as reference_forward
from reference.deform_roi_pool import deform_roi_pool_backward as reference_backward



def random_case(rng, max_size=9, max_boxes=4, max_channels=3, plain=False):
    """``(features, rois, offset, mask, options)``; offset and mask are sometimes None."""
    batch, channels = int(rng.integers(1, 3)), int(rng.integers(1, max_channels + 1))
    height, width = (int(v) for v in rng.integers(1, max_size + 1, 2))
    scale = float(rng.choice([1.0, 0.5, 1.3]))
    features = rng.standard_normal((batch, channels, height, width))
    rois = example_rois(rng, rng.integers(0, 5, int(rng.integers(1, max_boxes + 1))), batch, height, width,
                        scale)
    pooled = tuple(int(v) for v in rng.integers(1, 4, 2))
    offset = rng.standard_normal((len(rois), 2) + pooled) if plain or rng.random() < 0.8 else None
    mask = rng.uniform(-0.5, 1.5, (len(rois), 1) + pooled) if plain or rng.random() < 0.6 else None
    options = dict(output_size=pooled, spatial_scale=scale, sampling_ratio=int(rng.choice([0, 1, 2, 3])),
                   gamma=float(rng.choice([0.1, 0.4])))
    return features, rois, offset, mask, options


def backward_options(options):
    return {k: v for k, v in options.items() if k != "output_size"}


def run_both(on, features, rois, offset, mask, options, grad_output=None):
    """Forward, and backward for ``grad_output`` (random by default), on target ``on``."""
    def array(a):
        return None if a is None else on.array(a)
    with on:
        output = on.numpy(numba_droi.deform_roi_pool(array(features), array(rois), array(offset),
                                                     mask=array(mask), **options))
        if grad_output is None:
            grad_output = np.random.default_rng(1).standard_normal(output.shape)
        grads = numba_droi.deform_roi_pool_backward(array(grad_output), array(features), array(rois),
                                                    array(offset), mask=array(mask),
                                                    **backward_options(options))
    return output, grad_output, [None if g is None else on.numpy(g) for g in grads]


def check_against_reference(on, features, rois, offset, mask, options):
    output, grad_output, grads = run_both(on, features, rois, offset, mask, options)
    np.testing.assert_allclose(output, reference_forward(features, rois, offset, mask=mask, **options),
                               rtol=1e-12, atol=1e-12)
    expected = reference_backward(grad_output, features, rois, offset, mask=mask,
                                  **backward_options(options))
    for name, grad, reference, given in zip(("input", "offset", "mask"), grads, expected,
                                            (features, offset, mask)):
        if given is None:
            assert grad is None, name
        else:
            np.testing.assert_allclose(grad, reference, rtol=1e-12, atol=1e-12, err_msg=name)


def test_matches_reference_on_cpu_at_a_larger_size(cpu):
    rng = np.random.default_rng(7)
    features = rng.standard_normal((2, 3, 30, 34))
    rois = example_rois(rng, rng.integers(0, 5, 12), 2, 30, 34, 0.25)
    offset, mask = rng.standard_normal((12, 2, 7, 7)), rng.uniform(0, 1, (12, 1, 7, 7))
    check_against_reference(cpu, features, rois, offset, mask,
                            dict(output_size=(7, 7), spatial_scale=0.25, sampling_ratio=0, gamma=0.1))


@pytest.mark.parametrize("seed", range(3))
def test_without_offset_equals_roi_align_aligned(on, seed):
    features, rois, _, _, options = random_case(np.random.default_rng(50 + seed), max_size=6,
                                                max_boxes=3, max_channels=2)
    gamma = options.pop("gamma")
    with on:
        x, boxes = on.array(features), on.array(rois)
        output = numba_droi.deform_roi_pool(x, boxes, None, gamma=gamma, **options)
        expected = numba_droi.roi_align(x, boxes, aligned=True, **options)
        zero_offset = numba_droi.deform_roi_pool(
            x, boxes, on.array(np.zeros((len(rois), 2) + options["output_size"])), **options)
        grad = on.array(np.ones(output.shape))
        grad_input, grad_offset, grad_mask = numba_droi.deform_roi_pool_backward(
            grad, x, boxes, None, **backward_options(options))
        expected_grad = numba_droi.roi_align_backward(grad, boxes, features.shape, aligned=True,
                                                      **backward_options(options))
    np.testing.assert_array_equal(on.numpy(output), on.numpy(expected))
    np.testing.assert_array_equal(on.numpy(zero_offset), on.numpy(expected))
    np.testing.assert_array_equal(on.numpy(grad_input), on.numpy(expected_grad))
    assert grad_offset is None and grad_mask is None


def test_published_mmcv_values(on):
    """mmcv's test_deform_roi_pool: a 2x2 map, box [0, 0, 0, 1, 1], 2x2 bins, sampling_ratio 2, zero
    offsets (DeformRoIPoolPack's offset layer starts at zero)."""
    features = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    rois = np.array([[0.0, 0.0, 0.0, 1.0, 1.0]])
    output, _, (grad_input, grad_offset, _) = run_both(
        on, features, rois, np.zeros((1, 2, 2, 2)), None,
        dict(output_size=2, spatial_scale=1.0, sampling_ratio=2), grad_output=np.ones((1, 1, 2, 2)))
    np.testing.assert_allclose(output, [[[[1, 1.25], [1.5, 1.75]]]], rtol=1e-12)
    np.testing.assert_allclose(grad_input, [[[[3.0625, 0.4375], [0.4375, 0.0625]]]], rtol=1e-12)


# -- gradients by finite differences --------------------------------------------------------------

def distance_to_kinks(features, rois, offset, options):
    """Smallest distance of a sample coordinate to an integer, where B1 has its kinks."""
    pooled_h, pooled_w = options["output_size"]
    distances = [1.0]
    for k, roi in enumerate(rois):
        _, bins, _ = reference_bins(roi, offset[k], options["spatial_scale"], pooled_h, pooled_w,
                                    options["sampling_ratio"], options["gamma"])
        distances += [abs(v - round(v)) for points, _, _ in bins.values() for point in points
                      for v in point]
    return min(distances)


def smooth_case(seed, **sizes):
    """The first random case from ``seed`` on whose samples all keep 1e-3 off the kinks."""
    rng = np.random.default_rng(seed)
    while True:
        case = random_case(rng, plain=True, **sizes)
        if distance_to_kinks(case[0], case[1], case[2], case[4]) > 1e-3:
            return case


def check_gradients(features, rois, offset, mask, options, on):
    inputs = [Tensor(on.array(a), requires_grad=True) for a in (features, offset, mask)]
    boxes = on.array(rois)
    with on:
        assert gradcheck(lambda x, o, m: functional.deform_roi_pool(x, boxes, o, mask=m, **options),
                         inputs)


@pytest.mark.parametrize("band_y", [-0.6, 5.4])  # H = 6: B1 clamps y in [-1, 0) and [H-1, H]
def test_offset_gradient_is_the_derivative_in_the_border_bands(cpu, band_y):
    """Every sample's y lies in a border band, x inside the map. The x offset then still moves the
    value (by the clamped row), and the finite differences agree with our gradient; mmcv evaluates
    its x derivative at the unclamped y (wrong in [-1, 0)) and gets 0 in [H-1, H]."""
    rng = np.random.default_rng(12)
    features = rng.standard_normal((1, 2, 6, 7))
    # aligned boxes: y1' = y1 - 0.5; a 0.2 high box, 1x1 bin, 2x2 grid: samples at y1' + 0.05, + 0.15
    rois = np.array([[0, 1.8, band_y + 0.5 - 0.1, 4.6, band_y + 0.5 + 0.1]])
    offset = np.array([[[[0.11]], [[0.0]]]])
    options = dict(output_size=(1, 1), spatial_scale=1.0, sampling_ratio=2, gamma=0.1)
    assert distance_to_kinks(features, rois, offset, options) > 1e-2
    x = Tensor(features, requires_grad=True)
    o = Tensor(offset, requires_grad=True)
    assert gradcheck(lambda x, o: functional.deform_roi_pool(x, rois, o, **options), [x, o])
    grad_offset = numba_droi.deform_roi_pool_backward(np.ones((1, 2, 1, 1)), features, rois, offset,
                                                      **backward_options(options))[1]
    assert grad_offset[0, 0, 0, 0] != 0  # the x derivative that mmcv gets wrong here
    assert grad_offset[0, 1, 0, 0] == 0  # y is clamped: the value does not depend on it


@pytest.mark.filterwarnings("ignore:gradcheck. .* random directions")
def test_gradcheck_of_a_large_input_by_directions(cpu):
    features, rois, offset, mask, options = smooth_case(7, max_size=9, max_boxes=4)
    inputs = [Tensor(np.tile(features, (1, 3, 2, 2)), requires_grad=True),
              Tensor(offset, requires_grad=True), Tensor(mask, requires_grad=True)]
    if distance_to_kinks(inputs[0].data, rois, offset, options) > 1e-3:  # the same samples
        assert gradcheck(lambda x, o, m: functional.deform_roi_pool(x, rois, o, mask=m, **options),
                         inputs, max_full_size=10)


# -- the cuda kernels' bodies compiled for the cpu, at a detection size ----------------------------

# -- edge cases ------------------------------------------------------------------------------------

def test_huge_and_nan_offsets_give_zero_bins_and_read_nothing_outside(on):
    """The simulator raises on any out-of-range index, so this also checks the bounds on cuda."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((1, 2, 5, 6))
    rois = np.array([[0, 1, 1, 4, 3.0]] * 5 + [[0, np.nan, 1, 4, 3]])
    offset = np.zeros((6, 2, 1, 2))
    offset[0, 0], offset[1, 1], offset[2, 0], offset[3, 1] = 1e30, -1e30, np.nan, np.inf
    offset[4, 0, 0, 0] = np.nan  # only the first bin of box 4
    mask = np.ones((6, 1, 1, 2))
    for dtype in (np.float64, np.float32):
        output, _, grads = run_both(on, *(a.astype(dtype) for a in (features, rois, offset)),
                                    mask.astype(dtype), dict(output_size=(1, 2), sampling_ratio=2),
                                    grad_output=np.ones((6, 2, 1, 2), dtype))
        assert np.all(output[:4] == 0) and np.all(output[4, :, 0, 0] == 0) and np.all(output[5] == 0)
        assert np.all(output[4, :, 0, 1] != 0)
        assert all(np.all(np.isfinite(g)) for g in grads)
        assert not grads[1][[0, 1, 2, 3, 5]].any() and not grads[2][[0, 1, 2, 3, 5]].any()


# -- bad inputs: clear errors before any launch ----------------------------------------------------

GOOD_FEATURES = np.zeros((2, 3, 4, 5))
GOOD_ROIS = np.array([[0, 0, 0, 2, 2], [1, 1, 1, 3, 3.0]])
GOOD_OFFSET = np.zeros((2, 2, 2, 2))


@pytest.mark.parametrize("arguments, error, words", [
    (dict(rois=np.array([[0, 0, 0, 2, 2], [2, 1, 1, 3, 3.0]])), ValueError, "rois[1, 0] = 2.0"),
    (dict(rois=GOOD_ROIS[:, :4]), ValueError, "rois must have shape (K, 5)"),
    (dict(offset=np.zeros((2, 2, 2, 3))), ValueError,
     "offset must have shape (2, 2, 2, 2), got (2, 2, 2, 3)"),
    (dict(offset=np.zeros((1, 2, 2, 2))), ValueError, "offset must have shape (2, 2, 2, 2)"),
    (dict(offset=np.zeros((2, 2, 2, 2), np.int64)), TypeError, "offset must be a floating array"),
    (dict(mask=np.zeros((2, 2, 2, 2))), ValueError, "mask must have shape (2, 1, 2, 2), got (2, 2, 2, 2)"),
    (dict(mask=np.zeros((2, 1, 2))), ValueError, "mask must have shape (2, 1, 2, 2)"),
    (dict(gamma=float("nan")), ValueError, "gamma must be a finite number, got nan"),
    (dict(sampling_ratio=1.5), TypeError, "sampling_ratio must be an int"),
    (dict(output_size=0), ValueError, "output_size must be a positive int"),
    (dict(input=GOOD_FEATURES.astype(np.int32)), TypeError, "input must be float32 or float64"),
])
def test_bad_arguments_are_named(no_launch, arguments, error, words):
    call = dict(input=GOOD_FEATURES, rois=GOOD_ROIS, offset=GOOD_OFFSET, output_size=2) | arguments
    with pytest.raises(error) as raised:
        numba_droi.deform_roi_pool(**call)
    assert words in str(raised.value)


def test_backward_checks_its_arguments(no_launch):
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 3, 2, 2\)"):
        numba_droi.deform_roi_pool_backward(np.zeros((2, 4, 2, 2)), GOOD_FEATURES, GOOD_ROIS, GOOD_OFFSET)
    with pytest.raises(ValueError, match=r"offset must have shape \(2, 2, 3, 3\)"):
        numba_droi.deform_roi_pool_backward(np.zeros((2, 3, 3, 3)), GOOD_FEATURES, GOOD_ROIS, GOOD_OFFSET)
    with pytest.raises(ValueError, match=r"rois\[1, 0\]"):
        numba_droi.deform_roi_pool_backward(np.zeros((2, 3, 2, 2)), GOOD_FEATURES[:1], GOOD_ROIS,
                                            GOOD_OFFSET)
