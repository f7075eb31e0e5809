"""roi_align_rotated and roi_align_max, what is specific to them: how they relate to roi_align (angle
0 and pi, one sample per bin), the sample that wins a maximum, against reference/ at a larger map, and
the torch adapter's mmcv and Detectron2 names. What every operator is tested for:
tests/test_operators.py."""
import math

import numpy as np
import pytest

import numba_droi
from numba_droi.registry import example_rois, example_rotated_rois
from reference.roi_align_max import roi_align_max_with_argmax as reference_max
from reference.roi_align_rotated import roi_align_rotated as reference_rotated
from reference.roi_align_rotated import roi_align_rotated_backward as reference_rotated_backward


def rotated_of(rois, angle):
    """``(K, 6)`` rotated boxes of the same centres and sizes as ``(K, 5)`` ``rois``, at ``angle``."""
    centre, size = (rois[:, 1:3] + rois[:, 3:5]) / 2, rois[:, 3:5] - rois[:, 1:3]
    return np.concatenate([rois[:, :1], centre, size, np.full((len(rois), 1), angle)], 1)


def boxes_inside(rng, count, height, width, scale):
    """Boxes of positive size, some across the border (the rotated ones' bins then sample the border
    bands)."""
    low = rng.uniform(-0.2, 0.7, (count, 2)) * (width, height)
    size = rng.uniform(0.2, 0.6, (count, 2)) * (width, height)
    return np.concatenate([rng.integers(0, 2, (count, 1)), low / scale, (low + size) / scale], 1)


# -- roi_align_rotated -------------------------------------------------------------------------------

@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_at_angle_zero_it_is_roi_align_and_at_pi_roi_align_flipped(on, sampling_ratio):
    rng = np.random.default_rng(3)
    features = rng.standard_normal((2, 3, 12, 15))
    rois = boxes_inside(rng, 6, 12, 15, 0.5)
    options = dict(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=sampling_ratio)
    with on:
        upright = on.numpy(numba_droi.roi_align(on.array(features), on.array(rois), aligned=True, **options))
        at_zero = on.numpy(numba_droi.roi_align_rotated(on.array(features), on.array(rotated_of(rois, 0.0)),
                                                        **options))
        at_pi = on.numpy(numba_droi.roi_align_rotated(on.array(features),
                                                      on.array(rotated_of(rois, math.pi)), **options))
    assert np.abs(upright).max() > 0.1
    np.testing.assert_allclose(at_zero, upright, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(at_pi, upright[:, :, ::-1, ::-1], rtol=1e-12, atol=1e-12)


def test_a_quarter_turn_of_a_square_box_transposes_its_grid(cpu):
    """Counter-clockwise in the image (y down) by pi/2: the box's row ``ph`` of samples lies along
    the image's columns, from right to left."""
    rng = np.random.default_rng(4)
    features = rng.standard_normal((1, 2, 16, 16))
    rois = np.array([[0, 7.5, 8.5, 6.0, 6.0, 0.0]])
    turned = rois.copy()
    turned[0, 5] = math.pi / 2
    upright = numba_droi.roi_align_rotated(features, rois, 3, sampling_ratio=2)
    quarter = numba_droi.roi_align_rotated(features, turned, 3, sampling_ratio=2)
    # a sample at (yy, xx) from the centre goes to (-xx, yy): bin (ph, pw) reads upright's (2 - pw, ph)
    np.testing.assert_allclose(quarter, np.transpose(upright, (0, 1, 3, 2))[:, :, :, ::-1], rtol=1e-12,
                               atol=1e-12)


def test_clockwise_is_the_negated_angle(cpu):
    rng = np.random.default_rng(5)
    features = rng.standard_normal((2, 2, 9, 11))
    rois = example_rotated_rois(rng, 8, 2, 9, 11, 1.0)
    negated = rois.copy()
    negated[:, 5] *= -1
    np.testing.assert_array_equal(numba_droi.roi_align_rotated(features, rois, 2, clockwise=True),
                                  numba_droi.roi_align_rotated(features, negated, 2))


def test_rotated_matches_the_reference_at_a_larger_size_with_the_adaptive_grid(cpu):
    rng = np.random.default_rng(6)
    features = rng.standard_normal((2, 3, 40, 52))
    rois = example_rotated_rois(rng, rng.integers(0, 5, 20), 2, 40, 52, 0.25)
    options = dict(spatial_scale=0.25, sampling_ratio=0, aligned=True)
    output = numba_droi.roi_align_rotated(features, rois, (5, 4), **options)
    np.testing.assert_allclose(output, reference_rotated(features, rois, (5, 4), **options),
                               rtol=1e-12, atol=1e-12)
    grad_output = rng.standard_normal(output.shape)
    np.testing.assert_allclose(numba_droi.roi_align_rotated_backward(grad_output, rois, features.shape,
                                                                     **options),
                               reference_rotated_backward(grad_output, rois, features.shape, **options),
                               rtol=1e-12, atol=1e-12)


def test_negative_sizes_in_aligned_mode_and_non_finite_angles_give_zero(on):
    features = np.random.default_rng(10).standard_normal((1, 2, 6, 7))
    rois = np.array([[0, 3.0, 3.0, -2.0, 2.0, 0.3], [0, 3.0, 3.0, 2.0, 2.0, np.nan],
                     [0, 3.0, 3.0, 2.0, 2.0, np.inf], [0, 3.0, 3.0, 2.0, 2.0, 0.3]])
    with on:
        output = on.numpy(numba_droi.roi_align_rotated(on.array(features), on.array(rois), 2))
        grad = on.numpy(numba_droi.roi_align_rotated_backward(on.array(np.ones(output.shape)), on.array(rois),
                                                              features.shape))
    assert not output[:3].any() and np.abs(output[3]).min() > 0
    expected = reference_rotated_backward(np.ones(output.shape), rois[3:], features.shape)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rois, message", [
    (np.zeros((2, 5)), r"rois must have shape \(K, 6\) \[batch_index, cx, cy, w, h, angle\], got \(2, 5\)"),
    (np.array([[3.0, 1, 1, 2, 2, 0]]), r"rois\[0, 0\] = 3.0 is not a batch index in \[0, 2\)"),
])
def test_rotated_rois_are_checked_naming_them(no_launch, rois, message):
    with pytest.raises(ValueError, match=message):
        numba_droi.roi_align_rotated(np.zeros((2, 1, 4, 4)), rois, 2)


# -- roi_align_max -----------------------------------------------------------------------------------

def test_with_one_sample_per_bin_the_maximum_is_roi_align(on):
    rng = np.random.default_rng(7)
    features = rng.standard_normal((2, 3, 10, 12))
    rois = example_rois(rng, rng.integers(0, 5, 12), 2, 10, 12, 0.5)
    options = dict(output_size=(3, 2), spatial_scale=0.5, sampling_ratio=1, aligned=True)
    with on:
        maximum = on.numpy(numba_droi.roi_align_max(on.array(features), on.array(rois), **options))
        mean = on.numpy(numba_droi.roi_align(on.array(features), on.array(rois), **options))
    np.testing.assert_array_equal(maximum, mean)


def test_the_maximum_is_the_largest_sample_and_its_gradient_goes_to_its_corners(cpu):
    """One bin, a 2x2 grid of samples on a map that grows to the right and downwards: the last
    sample wins."""
    features = (np.arange(6.0)[None, :] + 0.1 * np.arange(5.0)[:, None])[None, None]  # (1, 1, 5, 6)
    rois = np.array([[0, 1.0, 1.0, 3.0, 3.0]])  # samples at y, x in {1.5, 2.5}, aligned=False
    output, argmax = numba_droi.roi_align_max_with_argmax(features, rois, 1, sampling_ratio=2, aligned=False)
    np.testing.assert_allclose(output[0, 0, 0, 0], 2.5 + 0.1 * 2.5, rtol=1e-14)
    assert argmax[0, 0, 0, 0] == 3  # (iy, ix) = (1, 1)
    grad = numba_droi.roi_align_max_backward(np.ones((1, 1, 1, 1)), rois, argmax, features.shape,
                                             sampling_ratio=2, aligned=False)
    expected = np.zeros((5, 6))
    expected[2:4, 2:4] = 0.25  # the four corners of (2.5, 2.5)
    np.testing.assert_allclose(grad[0, 0], expected, rtol=1e-14)


def test_max_matches_the_reference_with_its_argmax_at_a_larger_size(cpu):
    rng = np.random.default_rng(8)
    features = rng.standard_normal((2, 3, 30, 41))
    rois = example_rois(rng, rng.integers(0, 5, 20), 2, 30, 41, 0.25)
    output, argmax = numba_droi.roi_align_max_with_argmax(features, rois, (4, 3), spatial_scale=0.25)
    expected, expected_argmax = reference_max(features, rois, (4, 3), spatial_scale=0.25)
    np.testing.assert_allclose(output, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(argmax, expected_argmax)


def test_a_bin_without_samples_gives_zero_and_a_bin_of_nan_samples_minus_inf(cpu):
    features = np.full((1, 1, 4, 4), np.nan)
    rois = np.array([[0, 3.0, 3.0, 1.0, 1.0], [0, 0.5, 0.5, 2.5, 2.5]])  # reversed (aligned): no samples
    output, argmax = numba_droi.roi_align_max_with_argmax(features, rois, 1)
    assert output[0, 0, 0, 0] == 0 and argmax[0, 0, 0, 0] == -1
    assert output[1, 0, 0, 0] == -np.inf and argmax[1, 0, 0, 0] == -1


@pytest.mark.parametrize("argmax, error, message", [
    (np.zeros((1, 1, 1, 1)), TypeError, "argmax must be an integer array"),
    (np.full((1, 1, 1, 1), -2), ValueError, r"argmax values must lie in \[-1, 65536\)"),
    (np.zeros((1, 1, 2, 1), np.int32), ValueError, r"argmax must have shape \(1, 1, 1, 1\)"),
])
def test_a_bad_argmax_is_refused_naming_it(no_launch, argmax, error, message):
    with pytest.raises(error, match=message):
        numba_droi.roi_align_max_backward(np.ones((1, 1, 1, 1)), np.array([[0, 1.0, 1, 3, 3]]), argmax,
                                          (1, 1, 5, 6))


# -- torch adapter: mmcv's and Detectron2's names ----------------------------------------------------

def test_detectron2s_layer_takes_degrees_and_mmcvs_radians():
    torch = pytest.importorskip("torch")
    from numba_droi import torch as adapter
    rng = np.random.default_rng(9)
    features = torch.tensor(rng.standard_normal((2, 3, 12, 14)), requires_grad=True)
    rois = example_rotated_rois(rng, 6, 2, 12, 14, 0.5)
    degrees = rois.copy()
    degrees[:, 5] *= 180 / math.pi
    detectron2 = adapter.ROIAlignRotated((3, 2), 0.5, 2)(features, torch.tensor(degrees))
    mmcv = adapter.RoIAlignRotated((3, 2), 0.5, 2)(features, torch.tensor(rois))
    np.testing.assert_allclose(detectron2.detach().numpy(), mmcv.detach().numpy(), rtol=1e-12, atol=1e-12)
    expected = reference_rotated(features.detach().numpy(), rois, (3, 2), 0.5, 2)
    np.testing.assert_allclose(mmcv.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(detectron2.sum(), features)
    expected = reference_rotated_backward(np.ones(mmcv.shape), rois, features.shape, 0.5, 2)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-12, atol=1e-12)


# -- multi-scale RoI Align -------------------------------------------------------------------------------

def pyramid_case(rng, dtype=np.float64):
    """Four FPN levels (strides 4 to 32) of two images of different sizes, padded to 64x80, and boxes of
    4 to 90 pixels (every level is used with canonical_scale 28), one reversed, one of zero area."""
    image_shapes = [(64, 80), (57, 70)]
    features = [rng.standard_normal((2, 3, 64 // s, 80 // s)).astype(dtype) for s in (4, 8, 16, 32)]
    count = 40
    size = np.exp(rng.uniform(np.log(4), np.log(90), (count, 2)))
    centre = rng.uniform(0, 1, (count, 2)) * (80, 64)
    rois = np.concatenate([rng.integers(0, 2, (count, 1)), centre - size / 2, centre + size / 2], 1)
    rois[0, 3] = rois[0, 1] - 2  # reversed
    rois[1, 3:] = rois[1, 1:3]  # zero area
    return features, rois.astype(dtype), image_shapes


def test_multi_scale_matches_the_reference_and_uses_every_level(on):
    from reference.multi_scale_roi_align import multi_scale_roi_align as reference_forward
    from reference.multi_scale_roi_align import multi_scale_roi_align_backward as reference_backward
    rng = np.random.default_rng(11)
    features, rois, image_shapes = pyramid_case(rng)
    options = dict(canonical_scale=28, canonical_level=4)
    _, k_min, k_max = numba_droi.infer_scales([f.shape for f in features], image_shapes)
    levels = numba_droi.map_levels(rois, k_min, k_max, **options)
    assert set(levels) == {-1, 0, 1, 2, 3}
    with on:
        output = on.numpy(numba_droi.multi_scale_roi_align([on.array(f) for f in features], on.array(rois),
                                                           image_shapes, (3, 2), 2, **options))
        grad_output = rng.standard_normal(output.shape)
        grads = [on.numpy(g) for g in numba_droi.multi_scale_roi_align_backward(
            on.array(grad_output), [f.shape for f in features], on.array(rois), image_shapes, 2, **options)]
    np.testing.assert_allclose(output, reference_forward(features, rois, image_shapes, (3, 2), 2, **options),
                               rtol=1e-12, atol=1e-12)
    assert not output[0].any()  # the reversed box: no level
    for grad, expected in zip(grads, reference_backward(grad_output, [f.shape for f in features], rois,
                                                        image_shapes, 2, **options)):
        np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-12)


def test_multi_scale_gradients_match_finite_differences(cpu):
    from numba_droi import functional, nn
    from numba_droi.autograd import Tensor
    from numba_droi.gradcheck import gradcheck
    rng = np.random.default_rng(12)
    features, rois, image_shapes = pyramid_case(rng)
    features = [f[:1, :1] for f in features]
    rois = rois[rois[:, 0] == 0][:12]
    tensors = [Tensor(f, requires_grad=True) for f in features]
    assert gradcheck(lambda *levels: functional.multi_scale_roi_align(list(levels), rois, image_shapes, 2, 2,
                                                                      canonical_scale=28), tensors)
    layer = nn.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 2, 2, canonical_scale=28)
    by_list = layer(dict(zip(["p2", "p3", "p4", "p5"], features)), [rois[:, 1:]], image_shapes[:1])
    np.testing.assert_array_equal(by_list.data, functional.multi_scale_roi_align(
        features, rois, image_shapes[:1], 2, 2, canonical_scale=28).data)



@pytest.mark.parametrize("boxes, shapes", [([], r"\[\]"), ([np.zeros((3, 5))], r"\[\(3, 5\)\]")])
def test_the_multi_scale_layer_names_a_bad_list_of_boxes(no_launch, boxes, shapes):
    from numba_droi import nn
    features, _, image_shapes = pyramid_case(np.random.default_rng(13))
    layer = nn.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 2, 2, canonical_scale=28)
    with pytest.raises(ValueError, match=r"boxes must be a \(K, 5\) array or a non-empty list of \(L, 4\) "
                                         rf"arrays, one per image, got a list of shapes {shapes}"):
        layer(dict(zip(["p2", "p3", "p4", "p5"], features)), boxes, image_shapes)

@pytest.mark.parametrize("call, error, message", [
    (lambda f, r, s: numba_droi.multi_scale_roi_align(f[0], r, s, 2, 2), ValueError,
     "features must be a non-empty list"),
    (lambda f, r, s: numba_droi.multi_scale_roi_align([f[0], f[1][:, :2]], r, s, 2, 2), ValueError,
     r"features\[1\] must have the batch and channels of features\[0\]"),
    (lambda f, r, s: numba_droi.multi_scale_roi_align(f, r, [], 2, 2), ValueError,
     "image_shapes must be a non-empty list of"),
    (lambda f, r, s: numba_droi.multi_scale_roi_align([f[0], f[0]], r, s, 2, 2), ValueError,
     "must halve from each level to the next"),
    (lambda f, r, s: numba_droi.multi_scale_roi_align(f, r, s, 2, 2, canonical_scale=0), ValueError,
     "canonical_scale must be positive"),
])
def test_multi_scale_arguments_are_checked_naming_them(no_launch, call, error, message):
    features, rois, image_shapes = pyramid_case(np.random.default_rng(13))
    with pytest.raises(error, match=message):
        call(features, rois, image_shapes)


@pytest.mark.filterwarnings("ignore:`torch.jit.script.*` is deprecated:DeprecationWarning")
def test_the_torch_layer_equals_ours_and_torchvisions_scripted_too():
    torch = pytest.importorskip("torch")
    from numba_droi import torch as adapter
    from reference.multi_scale_roi_align import multi_scale_roi_align as reference_forward
    from reference.multi_scale_roi_align import multi_scale_roi_align_backward as reference_backward
    rng = np.random.default_rng(14)
    features, rois, image_shapes = pyramid_case(rng)
    names = ["0", "1", "2", "3"]
    x = {name: torch.tensor(f, requires_grad=True) for name, f in zip(names, features)}
    boxes = [torch.tensor(rois[rois[:, 0] == i, 1:]) for i in range(2)]
    ordered = np.concatenate([rois[rois[:, 0] == i] for i in range(2)])
    layer = adapter.MultiScaleRoIAlign(names, (3, 2), 2, canonical_scale=28)
    output = layer(x, boxes, image_shapes)
    expected = reference_forward(features, ordered, image_shapes, (3, 2), 2, canonical_scale=28)
    np.testing.assert_allclose(output.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    grad_output = rng.standard_normal(output.shape)
    grads = torch.autograd.grad(output, list(x.values()), torch.tensor(grad_output), allow_unused=True)
    for grad, expected in zip(grads, reference_backward(grad_output, [f.shape for f in features], ordered,
                                                        image_shapes, 2, canonical_scale=28)):
        np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-12, atol=1e-12)
    scripted = torch.jit.script(layer)  # (torch 2.13 deprecates TorchScript; it still works)
    for box_format in (boxes, adapter._rois(boxes)):
        torch.testing.assert_close(scripted(x, box_format, image_shapes), output, rtol=0, atol=0)
    torchvision = pytest.importorskip("torchvision")
    theirs = torchvision.ops.MultiScaleRoIAlign(names, (3, 2), 2, canonical_scale=28)(x, boxes, image_shapes)
    np.testing.assert_allclose(output.detach().numpy(), theirs.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_the_jax_function_equals_ours_with_the_gradients_of_every_level():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from numba_droi import functional
    from numba_droi import jax as adapter
    from numba_droi.autograd import Tensor
    rng = np.random.default_rng(15)
    features, rois, image_shapes = pyramid_case(rng)
    grad_output = rng.standard_normal((len(rois), 3, 2, 2))

    def loss(*levels):
        return (adapter.multi_scale_roi_align(list(levels), rois, image_shapes, 2, 2, canonical_scale=28)
                * grad_output).sum()
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*map(jax.numpy.asarray, features))
    tensors = [Tensor(f, requires_grad=True) for f in features]
    ours = functional.multi_scale_roi_align(tensors, rois, image_shapes, 2, 2, canonical_scale=28)
    np.testing.assert_allclose(float(loss(*features)), float((ours.data * grad_output).sum()), rtol=1e-12)
    ours.backward(grad_output)
    for grad, tensor in zip(grads, tensors):
        np.testing.assert_allclose(np.asarray(grad), tensor.grad, rtol=1e-12, atol=1e-12)
