"""Where numba_droi computes something other than its peer on purpose (docs/operators.md, section
"Deliberate differences from torchvision, mmcv, MXNet and Deformable DETR"), for the differences that
no other test pins exactly.

Each test builds a tiny input on which our operator and the peer give different numbers, and checks
our number against a value derived by hand in the test (never against the code under test). The peers
are not installed; their numbers are given in the comments.
"""
import numpy as np
import pytest

import numba_droi

FLT_MAX = float(np.finfo(np.float32).max)  # torchvision's starting maximum, in every dtype
MAX_SAMPLING_RATIO = 256


# -- roi_pool: the maximum starts at the bin's first element, not at -FLT_MAX -----------------------

@pytest.mark.parametrize("dtype, values, maximum, argmax", [
    # every value below -FLT_MAX: torchvision gives -FLT_MAX and argmax -1 (no gradient)
    (np.float64, [[-2e300, -1e300], [-3e300, -np.inf]], -1e300, 1),
    (np.float32, [[-np.inf, -np.inf], [-np.inf, -np.inf]], -np.inf, 0),
    (np.float32, [[-FLT_MAX, -FLT_MAX], [-FLT_MAX, -FLT_MAX]], -FLT_MAX, 0),
])
def test_roi_pool_maximum_of_a_bin_below_minus_flt_max(on, dtype, values, maximum, argmax):
    features = np.array(values, dtype).reshape(1, 1, 2, 2)
    rois = np.array([[0, 0, 0, 1, 1]], dtype)  # one 2x2 bin: the whole map
    with on:
        output, index = numba_droi.roi_pool_with_argmax(on.array(features), on.array(rois), 1)
        grad = numba_droi.roi_pool_backward(on.array(np.ones((1, 1, 1, 1), dtype)), on.array(rois),
                                            index, features.shape)
        output, index, grad = on.numpy(output), on.numpy(index), on.numpy(grad)
    assert output[0, 0, 0, 0] == maximum and index[0, 0, 0, 0] == argmax
    expected = np.zeros(4, dtype)
    expected[argmax] = 1  # the gradient reaches the maximum (torchvision's reaches nothing)
    np.testing.assert_array_equal(grad.ravel(), expected)


def test_roi_pool_nan_as_the_first_element_of_a_bin_is_the_maximum(on):
    """Every comparison with NaN is false: a NaN first element is never replaced; a later NaN never
    replaces anything. torchvision, starting at -FLT_MAX, skips every NaN: it gives 3 (argmax 3) for
    the first box and -FLT_MAX (argmax -1) for the all-NaN one."""
    features = np.array([[np.nan, 1.0], [2.0, 3.0], [np.nan, np.nan]]).reshape(1, 1, 3, 2)
    rois = np.array([[0, 0, 0, 1, 1], [0, 0, 2, 1, 2], [0, 0, 1, 1, 2.0]])  # rows 0-1, row 2, rows 1-2
    with on:
        output, index = numba_droi.roi_pool_with_argmax(on.array(features), on.array(rois), 1)
        output, index = on.numpy(output).ravel(), on.numpy(index).ravel()
    assert np.isnan(output[0]) and index[0] == 0
    assert np.isnan(output[1]) and index[1] == 4
    assert output[2] == 3.0 and index[2] == 3  # rows 1-2 start at 2.0: the later NaNs are skipped


# -- roi_pool: an int32 argmax ----------------------------------------------------------------------

def test_roi_pool_argmax_is_int32_and_the_backward_takes_torchvisions_int64(on):
    features = np.arange(12.0).reshape(1, 1, 3, 4)
    rois = np.array([[0, 0, 0, 3, 2.0]])  # the whole map; 2x2 bins of 1.5 rows and 2 columns
    with on:
        _, index = numba_droi.roi_pool_with_argmax(on.array(features), on.array(rois), 2)
        grad = numba_droi.roi_pool_backward(on.array(np.ones((1, 1, 2, 2))), on.array(rois),
                                            on.array(on.numpy(index).astype(np.int64)), features.shape)
        index, grad = on.numpy(index), on.numpy(grad)
    assert index.dtype == np.int32
    # bin rows floor(0)..ceil(1.5) = 0..1 and floor(1.5)..ceil(3) = 1..2; columns 0..1 and 2..3:
    # the maxima are the bottom-right elements, flat h*W + w
    np.testing.assert_array_equal(index[0, 0], [[1 * 4 + 1, 1 * 4 + 3], [2 * 4 + 1, 2 * 4 + 3]])
    expected = np.zeros((3, 4))
    expected[1, 1] = expected[1, 3] = expected[2, 1] = expected[2, 3] = 1
    np.testing.assert_array_equal(grad[0, 0], expected)


# -- roi_pool, ps_roi_pool: coordinates clamped to +-2**30 before rounding -------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_huge_finite_box_pools_the_whole_map(on, dtype):
    """torchvision converts round(1e30) to int, which overflows (undefined; on x86 both corners become
    INT_MIN and the bin is empty, 0). We clamp to +-2**30 first: one bin covers the whole map."""
    features = np.arange(6.0, dtype=dtype).reshape(1, 1, 2, 3)
    rois = np.array([[0, -1e30, -1e30, 1e30, 1e30]], dtype)
    with on:
        pooled, index = numba_droi.roi_pool_with_argmax(on.array(features), on.array(rois), 1)
        mean = numba_droi.ps_roi_pool(on.array(features), on.array(rois), 1)
        grad = numba_droi.ps_roi_pool_backward(on.array(np.ones((1, 1, 1, 1), dtype)), on.array(rois),
                                               features.shape)
        pooled, index, mean, grad = (on.numpy(a) for a in (pooled, index, mean, grad))
    assert pooled[0, 0, 0, 0] == 5 and index[0, 0, 0, 0] == 5
    assert mean[0, 0, 0, 0] == pytest.approx(15 / 6, rel=1e-6)
    np.testing.assert_allclose(grad, np.full(features.shape, 1 / 6), rtol=1e-6)


# -- RoI Align family: the adaptive grid capped at 256 samples per side ----------------------------

FEATURES = np.array([1.0, 2.0, 4.0, 8.0]).reshape(1, 1, 1, 4)  # H = 1: every sample reads row 0
WIDE_BOX = np.array([[0, 0, 0, 512, 1.0]])  # x from 0 to 512: one bin 512 pixels wide


def test_roi_align_adaptive_grid_is_capped_at_256_samples(on):
    """Not aligned: x = (ix + 0.5) * 512 / 256 = 1, 3, 5, ...; rule B1 reads F[1] at x = 1 and clamps
    x = 3 to F[3]; the rest lie beyond x = W = 4. torchvision's 512 samples x = 0.5, 1.5, ... give
    (1.5 + 3 + 6 + 8) / 512 = 18.5 / 512 instead."""
    with on:
        output = on.numpy(numba_droi.roi_align(on.array(FEATURES), on.array(WIDE_BOX), 1))
        grad = on.numpy(numba_droi.roi_align_backward(on.array(np.ones((1, 1, 1, 1))),
                                                      on.array(WIDE_BOX), FEATURES.shape))
    np.testing.assert_allclose(output.ravel(), [(2 + 8) / MAX_SAMPLING_RATIO], rtol=1e-14)
    np.testing.assert_allclose(grad.ravel(), np.array([0, 1, 0, 1]) / MAX_SAMPLING_RATIO, rtol=1e-14)


@pytest.mark.parametrize("name", ["roi_align", "ps_roi_align", "deform_roi_pool"])
def test_aligned_adaptive_grids_are_capped_at_256_samples(on, name):
    """Aligned (-0.5): x = -0.5 + (2*ix + 1) = 0.5, 2.5, 4.5, ...: (F0 + F1)/2 + (F2 + F3)/2 = 7.5 over
    256 samples. Uncapped (torchvision, mmcv), the 512 samples at x = 0, 1, 2, ... give
    (1 + 2 + 4 + 8 + 8) / 512 = 23 / 512."""
    with on:
        features, rois = on.array(FEATURES), on.array(WIDE_BOX)
        if name == "roi_align":
            output = numba_droi.roi_align(features, rois, 1, aligned=True)
        elif name == "ps_roi_align":
            output = numba_droi.ps_roi_align(features, rois, 1)
        else:
            output = numba_droi.deform_roi_pool(features, rois, None, 1)
        output = on.numpy(output)
    np.testing.assert_allclose(output.ravel(), [7.5 / MAX_SAMPLING_RATIO], rtol=1e-14)


# -- roi_align: a reversed box in aligned, adaptive mode -------------------------------------------

def test_roi_align_reversed_box_in_aligned_adaptive_mode_gives_zero(on):
    """x2 < x1: bin_w = -3 and ceil(bin_w) = -3 samples, times 2 along y: torchvision's cpu kernel
    sizes its table of samples by that negative product and fails to allocate it. Our grid clamps the
    negative bin to an empty one: 0, and no gradient."""
    features = np.arange(9.0).reshape(1, 1, 3, 3) + 1
    rois = np.array([[0, 4, 1, 1, 3.0]])  # aligned: x from 3.5 to 0.5, y from 0.5 to 2.5
    with on:
        output = on.numpy(numba_droi.roi_align(on.array(features), on.array(rois), 1, aligned=True))
        grad = on.numpy(numba_droi.roi_align_backward(on.array(np.ones((1, 1, 1, 1))), on.array(rois),
                                                      features.shape, aligned=True))
    assert output.shape == (1, 1, 1, 1) and output[0, 0, 0, 0] == 0
    assert not grad.any()


# -- deform_roi_pool: the modulation mask fused into the kernel -------------------------------------

def test_deform_roi_pool_fused_mask_and_its_gradient(on):
    """mmcv's deform_roi_pool has no mask (its modulated pack multiplies outside): on these inputs it
    gives the unmodulated values 2.35 and 3.58 and no mask gradient.

    Box [0.5, 0.5, 1.5, 1.5], aligned: start (0, 0), size 1, one sample at the bin centre (0.5, 0.5),
    moved by gamma * size * offset = (0.1 * 0.5, 0.1 * -1) in (x, y): (y, x) = (0.4, 0.55)."""
    plane_0 = np.array([[1.0, 2.0], [3.0, 4.0]])  # 1 + x + 2y
    plane_1 = np.array([[5.0, 1.0], [2.0, 7.0]])
    features = np.stack([plane_0, plane_1])[None]
    rois = np.array([[0, 0.5, 0.5, 1.5, 1.5]])
    offset = np.array([0.5, -1.0]).reshape(1, 2, 1, 1)  # x, then y
    mask = np.full((1, 1, 1, 1), 0.7)
    grad_output = np.array([2.0, -1.0]).reshape(1, 2, 1, 1)
    options = dict(spatial_scale=1.0, sampling_ratio=1, gamma=0.1)
    with on:
        output = numba_droi.deform_roi_pool(on.array(features), on.array(rois), on.array(offset), 1,
                                            mask=on.array(mask), **options)
        grads = numba_droi.deform_roi_pool_backward(on.array(grad_output), on.array(features),
                                                    on.array(rois), on.array(offset),
                                                    mask=on.array(mask), **options)
        output = on.numpy(output)
        grad_input, grad_offset, grad_mask = (on.numpy(g) for g in grads)

    ly, lx = 0.4, 0.55
    weights = np.array([[(1 - ly) * (1 - lx), (1 - ly) * lx], [ly * (1 - lx), ly * lx]])
    pooled = np.array([(weights * plane_0).sum(), (weights * plane_1).sum()])
    np.testing.assert_allclose(pooled, [1 + 0.55 + 2 * 0.4, 3.58], rtol=1e-14)
    d_dx = np.array([1.0, (1 - ly) * (1 - 5) + ly * (7 - 2)])  # -0.4 for plane 1
    d_dy = np.array([2.0, (1 - lx) * (2 - 5) + lx * (7 - 1)])  # 1.95 for plane 1
    g = grad_output.ravel()

    np.testing.assert_allclose(output.ravel(), 0.7 * pooled, rtol=1e-12)
    np.testing.assert_allclose(grad_mask.ravel(), [g @ pooled], rtol=1e-12)  # 4.7 - 3.58 = 1.12
    # offsets: mask * gamma * roi size * sum_c g_c * d pooled_c / d coordinate
    np.testing.assert_allclose(grad_offset.ravel(), [0.7 * 0.1 * (g @ d_dx), 0.7 * 0.1 * (g @ d_dy)],
                               rtol=1e-12)  # 0.168, 0.1435
    np.testing.assert_allclose(grad_input[0], 0.7 * g[:, None, None] * weights, rtol=1e-12)
