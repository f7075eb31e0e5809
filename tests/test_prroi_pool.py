"""prroi_pool, what is specific to it: the forward against a fine numerical integral, the box gradient
(by finite differences across the map's border, zero where the map is flat), and the box gradient
through the torch and JAX adapters. What every operator is tested for (the box gradient by finite
differences included): tests/test_operators.py."""
import numpy as np
import pytest

import numba_droi
from numba_droi import functional
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck
from numba_droi.registry import example_rois
from reference.prroi_pool import prroi_pool_backward as reference_backward


def interpolant(plane, y, x):
    """The zero-padded bilinear interpolant of ``plane`` at arrays ``y``, ``x``."""
    padded = np.pad(plane, 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    ly, lx = y - y0, x - x0

    def at(yy, xx):
        inside = (yy >= -1) & (yy <= plane.shape[0]) & (xx >= -1) & (xx <= plane.shape[1])
        return np.where(inside, padded[np.clip(yy + 1, 0, plane.shape[0] + 1),
                                       np.clip(xx + 1, 0, plane.shape[1] + 1)], 0.0)
    return ((1 - ly) * (1 - lx) * at(y0, x0) + (1 - ly) * lx * at(y0, x0 + 1)
            + ly * (1 - lx) * at(y0 + 1, x0) + ly * lx * at(y0 + 1, x0 + 1))


def test_each_bin_is_the_mean_of_the_interpolant_over_it(on):
    """Against the midpoint rule on 400 x 400 points per bin (its error, from the kinks at the pixels,
    about 2e-6 here)."""
    rng = np.random.default_rng(1)
    features = rng.standard_normal((1, 2, 6, 7))
    rois = np.array([[0, -1.7, 0.4, 5.2, 4.9], [0, 2.3, -0.8, 7.9, 6.6]])  # across the border
    with on:
        output = on.numpy(numba_droi.prroi_pool(on.array(features), on.array(rois), (2, 3)))
    points = (np.arange(400) + 0.5) / 400
    for k, (_, x1, y1, x2, y2) in enumerate(rois):
        bin_h, bin_w = (y2 - y1) / 2, (x2 - x1) / 3
        for ph in range(2):
            for pw in range(3):
                y, x = np.meshgrid(y1 + (ph + points) * bin_h, x1 + (pw + points) * bin_w, indexing="ij")
                for c in range(2):
                    np.testing.assert_allclose(output[k, c, ph, pw], interpolant(features[0, c], y, x).mean(),
                                               rtol=0, atol=1e-5)


def test_box_gradients_match_finite_differences_across_the_border(cpu):
    """Boxes inside, across each side of the map and beyond it; the batch index held."""
    rng = np.random.default_rng(2)
    features = rng.standard_normal((2, 2, 6, 7))
    rois = np.array([[0, 1.3, 0.6, 4.1, 4.7], [1, -2.2, 1.5, 2.6, 3.9], [1, 3.4, -1.6, 9.8, 5.2],
                     [0, 5.1, 4.3, 8.7, 7.9], [0, 7.2, 1.0, 9.0, 2.0]])
    x = Tensor(features, requires_grad=True)
    boxes = Tensor(rois, requires_grad=True)
    constant = {1: np.zeros(rois.shape, bool)}
    constant[1][:, 0] = True
    assert gradcheck(lambda x, b: functional.prroi_pool(x, b, (2, 2), 0.8), [x, boxes], constant=constant)


def test_on_a_flat_map_the_output_is_the_constant_and_the_box_gradient_zero(on):
    features = np.full((1, 1, 8, 9), 2.5)
    rois = np.array([[0, 1.2, 0.7, 6.3, 5.9]])  # inside the map, away from the border
    with on:
        output = on.numpy(numba_droi.prroi_pool(on.array(features), on.array(rois), 3))
        _, grad_rois = numba_droi.prroi_pool_backward(on.array(np.ones(output.shape)), on.array(features),
                                                      on.array(rois))
    np.testing.assert_allclose(output, 2.5, rtol=1e-14)
    np.testing.assert_allclose(on.numpy(grad_rois), 0, atol=1e-13)


def test_a_box_of_zero_width_gives_zero_and_no_gradient(on):
    features = np.random.default_rng(3).standard_normal((1, 1, 5, 5))
    rois = np.array([[0, 2.0, 1.0, 2.0, 4.0], [0, 3.0, 1.0, 1.0, 4.0]])  # zero width, reversed
    with on:
        output = on.numpy(numba_droi.prroi_pool(on.array(features), on.array(rois), 2))
        grads = numba_droi.prroi_pool_backward(on.array(np.ones(output.shape)), on.array(features),
                                               on.array(rois))
    assert not output.any() and not any(on.numpy(g).any() for g in grads)


def test_only_the_wanted_gradient_is_computed(cpu):
    features = np.random.default_rng(4).standard_normal((1, 1, 5, 5))
    rois = np.array([[0, 0.5, 1.0, 3.0, 4.0]])
    grad_input, grad_rois = numba_droi.prroi_pool_backward(np.ones((1, 1, 2, 2)), features, rois,
                                                           wanted=["rois"])
    assert grad_input is None and grad_rois[0, 1:].any()


def test_the_torch_adapter_gives_the_box_gradient_of_mmcvs_names():
    torch = pytest.importorskip("torch")
    from numba_droi import torch as adapter
    rng = np.random.default_rng(5)
    features = rng.standard_normal((2, 3, 8, 9))
    rois = example_rois(rng, 6, 2, 8, 9, 0.5)
    x = torch.tensor(features, requires_grad=True)
    boxes = torch.tensor(rois, requires_grad=True)
    output = adapter.PrRoIPool((2, 3), 0.5)(x, boxes)
    grad_output = rng.standard_normal(output.shape)
    grad_x, grad_boxes = torch.autograd.grad(output, (x, boxes), torch.tensor(grad_output))
    expected = reference_backward(grad_output, features, rois, 0.5)
    np.testing.assert_allclose(grad_x.numpy(), expected[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_boxes.numpy(), expected[1], rtol=1e-12, atol=1e-12)
    batch = boxes.detach()[:, :1]
    coordinates = boxes.detach()[:, 1:].clone().requires_grad_(True)
    def pooled(c):
        return adapter.prroi_pool(x.detach(), torch.cat([batch, c], 1), 2, 0.5)
    assert torch.autograd.gradcheck(pooled, (coordinates,), eps=1e-6, atol=1e-6)


def test_the_jax_adapter_gives_the_box_gradient():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from numba_droi import jax as adapter
    rng = np.random.default_rng(6)
    features = rng.standard_normal((2, 2, 8, 9))
    rois = example_rois(rng, 5, 2, 8, 9, 0.5)
    grad_output = rng.standard_normal((5, 2, 2, 2))
    grads = jax.grad(lambda x, r: (adapter.prroi_pool(x, r, 2, 0.5) * grad_output).sum(), argnums=(0, 1))(
        jax.numpy.asarray(features), jax.numpy.asarray(rois))
    for grad, expected in zip(grads, reference_backward(grad_output, features, rois, 0.5)):
        np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-12, atol=1e-12)
