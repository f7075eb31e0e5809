"""The box gradients of roi_align and deform_roi_pool, what is specific to them: finite differences with
boxes across every side of the map (samples in B1's border bands) and boxes that roi_align clamps to a
size of 1, the adaptive grid between its jumps, closed forms on linear and flat maps, deform_roi_pool's
offsets moving with the box, and the gradient through the torch and JAX adapters, computed only when the
boxes are differentiated. What every operator is tested for (against reference/, finite differences of
the registry's examples, the cuda kernels' own source): tests/test_operators.py."""
import numpy as np
import pytest

from numba_droi import benchmark, functional, ops, registry
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck

# [n, x1, y1, x2, y2] at scale 0.5 on a 7 x 8 map: inside, across the left, top, right and bottom
# sides (samples in [-1, 0) and [H-1, H]), and beyond the map; every sample of every grid below at
# least 0.01 feature pixels from a pixel row or column and from the bands' ends (B1's kinks)
ROIS = np.array([[0, 2.578, 1.595, 9.125, 8.505], [1, -3.239, 3.044, 4.618, 7.155],
                 [1, 3.615, -2.615, 11.615, 5.048], [0, 9.248, 4.38, 15.999, 10.01],
                 [0, 0.955, 8.341, 6.126, 13.856], [1, 16.84, 1.085, 19.24, 4.623]])


def features(seed=0, batch=2, channels=2, height=7, width=8):
    return np.random.default_rng(seed).standard_normal((batch, channels, height, width))


def batch_held(rois):
    """gradcheck's ``constant`` for the boxes: their batch column."""
    held = np.zeros(rois.shape, bool)
    held[:, 0] = True
    return held


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3, 0])
def test_roi_align_box_gradient_matches_finite_differences_across_the_border(cpu, aligned, sampling_ratio):
    """The adaptive grid (0) too: no box here has a bin size within the step of an integer, where
    the grid's size jumps."""
    x = Tensor(features(), requires_grad=True)
    boxes = Tensor(ROIS, requires_grad=True)
    assert gradcheck(lambda x, b: functional.roi_align(x, b, (2, 3), 0.5, sampling_ratio, aligned),
                     [x, boxes], constant={1: batch_held(ROIS)})


def test_a_box_clamped_to_size_one_moves_with_its_first_corner_only(cpu):
    """Not aligned, roi_align takes a box smaller than a feature pixel as one of size 1 from (x1, y1):
    the output does not depend on (x2, y2)."""
    rois = np.array([[0, 4.1, 3.3, 5.2, 4.0], [1, 7.7, 2.2, 8.9, 9.5]])  # 0.55 x 0.35; 0.6 wide only
    x, boxes = Tensor(features(1), requires_grad=True), Tensor(rois, requires_grad=True)
    assert gradcheck(lambda x, b: functional.roi_align(x, b, 2, 0.5, 2, False), [x, boxes],
                     constant={1: batch_held(rois)})
    grad = ops.roi_align_box_backward(np.ones((2, 2, 2, 2)), features(1), rois, 0.5, 2, False)
    assert not grad[0, 3:].any() and not grad[1, 3] and grad[1, 4] and grad[:, 1:3].all()


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_on_a_linear_map_the_box_gradient_is_the_bins_place_in_the_box(on, sampling_ratio, aligned):
    """On ``F[h, w] = a*w + b*h``, a bin whose samples stay in the map outputs ``a`` times the mean of
    its samples' x, ``x1 + (pw + 0.5) / PW * (x2 - x1)`` (scaled), plus the same in y: its
    derivatives in ``(x1, y1, x2, y2)`` are ``s * (a*(1 - u_x), b*(1 - u_y), a*u_x, b*u_y)`` with
    ``u = (p + 0.5) / P``."""
    a, b, scale = 0.7, -1.9, 0.5
    height, width = np.arange(9.0)[:, None], np.arange(11.0)[None]
    plane = a * width + b * height
    rois = np.array([[0, 2.6, 3.4, 15.8, 12.2]])  # samples in [0.8, 7.4] x [1.2, 5.6]
    for ph in range(2):
        for pw in range(3):
            grad_output = np.zeros((1, 1, 2, 3))
            grad_output[0, 0, ph, pw] = 1
            with on:
                grad = on.numpy(ops.roi_align_box_backward(
                    on.array(grad_output), on.array(plane[None, None]), on.array(rois), scale, sampling_ratio,
                    aligned))
            u_y, u_x = (ph + 0.5) / 2, (pw + 0.5) / 3
            expected = scale * np.array([0, a * (1 - u_x), b * (1 - u_y), a * u_x, b * u_y])
            np.testing.assert_allclose(grad, [expected], rtol=1e-12, atol=1e-12)


def test_on_a_flat_map_the_box_gradients_are_zero(on):
    """B1 is constant in the map and in its border bands, and 0 outside them: no box's output moves."""
    flat = np.full((2, 3, 7, 8), 1.7)
    offset = np.random.default_rng(2).uniform(-1, 1, (len(ROIS), 2, 2, 2))
    with on:
        ones, flat, rois = on.array(np.ones((6, 3, 2, 2))), on.array(flat), on.array(ROIS)
        grads = [on.numpy(ops.roi_align_box_backward(ones, flat, rois, 0.5, 2, aligned))
                 for aligned in (False, True)]
        grads.append(on.numpy(ops.deform_roi_pool_box_backward(ones, flat, rois, on.array(offset), 0.5, 2)))
    assert not any(g.any() for g in grads)


def test_deform_roi_pool_box_gradient_matches_finite_differences_across_the_border(cpu):
    """With offsets (which scale with the box) and a mask, every array differentiated at once."""
    rng = np.random.default_rng(3)
    offset, mask = rng.uniform(-1, 1, (6, 2, 2, 3)), rng.uniform(0.2, 1.5, (6, 1, 2, 3))
    tensors = [Tensor(a, requires_grad=True) for a in (features(3), ROIS, offset, mask)]
    assert gradcheck(lambda x, b, o, m: functional.deform_roi_pool(x, b, o, (2, 3), 0.5, 2, 0.3, m),
                     tensors, constant={1: batch_held(ROIS)})


def test_deform_roi_pool_box_gradient_on_a_linear_map_moves_the_offsets_with_the_box(on):
    """``F[h, w] = w``: the bin outputs ``m * (x1 + roi_w * (gamma * offset_x + u_x))`` (scaled), with
    derivatives ``m*s*(1 - gamma*offset_x - u_x)`` in x1 and ``m*s*(gamma*offset_x + u_x)`` in x2."""
    plane = np.broadcast_to(np.arange(11.0), (9, 11))
    rois, scale, gamma = np.array([[0, 3.6, 3.4, 14.8, 12.2]]), 0.5, 0.2
    offset, mask = np.array([0.4, -0.3]).reshape(1, 2, 1, 1), np.full((1, 1, 1, 1), 1.3)
    with on:
        grad = on.numpy(ops.deform_roi_pool_box_backward(
            on.array(np.ones((1, 1, 1, 1))), on.array(plane[None, None].copy()), on.array(rois),
            on.array(offset), scale, 2, gamma, on.array(mask)))
    lever = gamma * 0.4 + 0.5
    np.testing.assert_allclose(grad, [[0, 1.3 * scale * (1 - lever), 0, 1.3 * scale * lever, 0]], rtol=1e-12,
                               atol=1e-12)


def test_without_offsets_deform_roi_pool_gives_roi_aligns_box_gradient(on):
    grad_output = np.random.default_rng(4).standard_normal((6, 2, 2, 2))
    with on:
        grad_output, x, rois = on.array(grad_output), on.array(features()), on.array(ROIS)
        ours = [on.numpy(ops.roi_align_box_backward(grad_output, x, rois, 0.5, 2, True)),
                on.numpy(ops.deform_roi_pool_box_backward(grad_output, x, rois, None, 0.5, 2))]
    np.testing.assert_array_equal(*ours)
    assert ours[0][:, 1:].any() and not ours[0][:, 0].any()


def test_benchmarks_and_the_demo_time_the_gradients_the_peers_give():
    """The peers give no box gradient: the timings differentiate the features (and offsets) alone."""
    for name, timed in [("roi_align", 1), ("deform_roi_pool", 2)]:
        operator = registry.BY_NAME[name]
        assert len(benchmark.case(name, benchmark.Setting(), boxes=4).inputs) == timed
        example = operator.example(np.random.default_rng(0))
        assert "rois" in operator.wanted(example.arrays) and "rois" not in operator.timed(example.arrays)


def counted(monkeypatch, name):
    """Calls of ``ops.<name>``, counted in the list returned."""
    calls, function = [], getattr(ops, name)
    monkeypatch.setattr(ops, name, lambda *args, **kwargs: calls.append(1) or function(*args, **kwargs))
    return calls


def test_the_torch_adapter_gives_the_box_gradient_only_when_the_boxes_require_it(monkeypatch):
    torch = pytest.importorskip("torch")
    from numba_droi import torch as adapter
    calls = counted(monkeypatch, "roi_align_box_backward")
    rng = np.random.default_rng(5)
    grad_output = torch.tensor(rng.standard_normal((6, 2, 2, 3)))
    x = torch.tensor(features(5), requires_grad=True)
    per_image = [torch.tensor(ROIS[ROIS[:, 0] == n, 1:], requires_grad=True) for n in range(2)]
    torch.autograd.grad(adapter.roi_align(x, [b.detach() for b in per_image], (2, 3), 0.5, 2, True), x,
                        grad_output)
    assert not calls
    output = adapter.roi_align(x, per_image, (2, 3), 0.5, 2, True)
    grads = torch.autograd.grad(output, per_image, grad_output)
    assert len(calls) == 1
    order = np.argsort(ROIS[:, 0], kind="stable")  # the list's boxes, image by image
    expected = ops.roi_align_box_backward(grad_output.numpy(), features(5), ROIS[order], 0.5, 2, True)
    np.testing.assert_allclose(torch.cat(grads).numpy(), expected[:, 1:], rtol=1e-12, atol=1e-12)
    coordinates = torch.tensor(ROIS[:, 1:], requires_grad=True)
    batch = torch.tensor(ROIS[:, :1])
    assert torch.autograd.gradcheck(
        lambda c: adapter.DeformRoIPool((2, 3), 0.5, 2, 0.3)(x.detach(), torch.cat([batch, c], 1),
                                                              torch.full((6, 2, 2, 3), 0.2)),
        (coordinates,), eps=1e-6, atol=1e-6)


def test_the_jax_adapter_gives_the_box_gradient_only_when_the_boxes_are_differentiated(monkeypatch):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from numba_droi import jax as adapter
    calls = counted(monkeypatch, "roi_align_box_backward")
    grad_output = np.random.default_rng(6).standard_normal((6, 2, 2, 3))

    def loss(x, boxes):
        return (adapter.roi_align(x, boxes, (2, 3), 0.5, 2, True) * grad_output).sum()

    x, boxes = jax.numpy.asarray(features(6)), jax.numpy.asarray(ROIS)
    jax.grad(loss)(x, boxes)
    assert not calls
    grad_boxes = jax.jit(jax.grad(loss, argnums=1))(x, boxes)
    assert len(calls) == 1
    np.testing.assert_allclose(np.asarray(grad_boxes),
                               ops.roi_align_box_backward(grad_output, features(6), ROIS, 0.5, 2, True),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["roi_align_box_backward", "deform_roi_pool_box_backward"])
def test_the_box_backwards_check_their_arguments_before_any_kernel_runs(no_launch, name):
    backward = getattr(ops, name)
    x, grad_output = features(), np.zeros((6, 2, 2, 2))
    offset = () if name == "roi_align_box_backward" else (None,)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(6, 2, 2, 2\)"):
        backward(np.zeros((6, 3, 2, 2)), x, ROIS, *offset, 0.5, 2)
    with pytest.raises(ValueError, match=r"rois\[1, 0\]"):
        backward(grad_output, x[:1], ROIS, *offset, 0.5, 2)
    with pytest.raises(ValueError, match="rois"):
        backward(grad_output, x, ROIS[:, :4], *offset, 0.5, 2)
    with pytest.raises(ValueError, match="spatial_scale"):
        backward(grad_output, x, ROIS, *offset, np.nan, 2)
