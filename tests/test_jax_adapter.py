"""numba_droi.jax: every function's output and gradients (jax.vjp) equal to our own operators (through
numba_droi.functional), gradients checked by jax.test_util.check_grads in float64, and the functions
under jax.jit, jax.grad and jax.vmap; torchvision's list-of-boxes form; float32."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import numba_droi.jax as nj  # noqa: E402
from numba_droi import functional as F  # noqa: E402
from numba_droi import ops, registry  # noqa: E402
from numba_droi.autograd import Tensor  # noqa: E402


def random(shape, seed, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, shape)


def away_from_integers(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 0.9, shape) * rng.choice([-1.0, 1.0], shape)


FEATURES = np.random.default_rng(0).permutation(2 * 8 * 8 * 9).reshape(2, 8, 8, 9) / 100.0  # no ties
ROIS = np.array([[0, 1.3, 0.6, 13.1, 11.7], [1, 4.2, 2.5, 15.6, 14.1], [1, 0.4, 3.3, 9.8, 9.2]])
CONV_INPUT, CONV_WEIGHT, CONV_BIAS = random((2, 4, 5, 6), 1), random((6, 2, 3, 3), 2), random(6, 3)
CONV_OFFSET = away_from_integers((2, 2 * 2 * 9, 5, 3), 4)
CONV_MASK = random((2, 2 * 9, 5, 3), 5, 0.5, 1.5)

def registry_case(operator):
    """``(ours through the adapter, ours through functional, differentiable arrays, the others)`` of
    the record's example. Arrays with elements that have no derivative (prroi_pool's boxes, whose batch
    column finite differences would move) count among the others: tests/test_prroi_pool.py checks their
    gradients."""
    example = operator.example(np.random.default_rng(0), batch=2, channels=2, height=8, width=9)
    differentiable = tuple(name for name in operator.wanted(example.arrays)
                           if name not in dict(operator.no_derivative))
    others = [name for name in operator.arrays if name not in differentiable]

    def call(function):
        def run(*arrays):  # the differentiable arrays, then the others
            given = dict(zip(differentiable + tuple(others), arrays))
            return function(*operator.positional(given, example.options))
        return run
    return (call(nj.FUNCTIONS[operator.name]), call(getattr(F, operator.name)),
            [example.arrays[name] for name in differentiable], [example.arrays[name] for name in others])


# name -> (JAX function, our differentiable operator, differentiable arguments, the boxes if any)
CASES = {operator.name: registry_case(operator) for operator in registry.OPERATORS}
CASES.update({  # the peers' signatures
    "deform_roi_pooling": (
        lambda x, t, r: nj.deform_roi_pooling(x, r, t, 0.5, 3, 2, False, 2, 2, 2, 0.2),
        lambda x, t, r: F.deform_psroi_pool(x, r, t, 0.5, 2, 2, 3, 2, 2, 0.2),
        [FEATURES, random((3, 4, 2, 2), 8)], [ROIS]),
    "modulated_deform_conv2d": (
        lambda x, o, m, w, b: nj.modulated_deform_conv2d(x, o, m, w, b, (1, 2), 1, 1, 2, 2),
        lambda x, o, m, w, b: F.deform_conv2d(x, o, w, b, (1, 2), 1, 1, m),
        [CONV_INPUT, CONV_OFFSET, CONV_MASK, CONV_WEIGHT, CONV_BIAS], []),
})


@pytest.mark.parametrize("name", CASES)
def test_outputs_and_gradients_equal_ours(name):
    function, ours, differentiable, others = CASES[name]
    boxes = [jnp.asarray(a) for a in others]
    output, vjp = jax.vjp(lambda *inputs: function(*inputs, *boxes), *map(jnp.asarray, differentiable))
    grad_output = random(output.shape, 9)
    grads = vjp(jnp.asarray(grad_output))

    our_inputs = [Tensor(a.copy(), requires_grad=True) for a in differentiable]
    our_output = ours(*our_inputs, *others)
    our_output.backward(grad_output)

    assert output.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(output), our_output.data)
    for index, (grad, our) in enumerate(zip(grads, our_inputs)):
        np.testing.assert_array_equal(np.asarray(grad), our.grad, err_msg=f"argument {index}")


@pytest.mark.parametrize("name", CASES)
def test_check_grads(name):
    """Reverse-mode gradients against finite differences of the forward along random directions."""
    function, _, differentiable, others = CASES[name]
    boxes = [jnp.asarray(a) for a in others]
    check_grads(lambda *inputs: function(*inputs, *boxes), tuple(map(jnp.asarray, differentiable)),
                order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_check_grads_detects_a_wrong_backward(monkeypatch):
    roi_align_backward = ops.roi_align_backward
    monkeypatch.setattr(ops, "roi_align_backward", lambda *a, **k: 1.01 * roi_align_backward(*a, **k))
    function, _, differentiable, others = CASES["roi_align"]
    with pytest.raises(AssertionError):
        check_grads(lambda x: function(x, jnp.asarray(others[0])), (jnp.asarray(differentiable[0]),),
                    order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_boxes_get_a_zero_gradient_where_the_operator_has_none():
    grad = jax.grad(lambda r: nj.roi_pool(jnp.asarray(FEATURES), r, 2, 0.5).sum())(jnp.asarray(ROIS))
    assert grad.shape == ROIS.shape and not np.asarray(grad).any()


def test_jit_grad_and_vmap():
    x, rois = jnp.asarray(FEATURES), jnp.asarray(ROIS)

    def loss(x, offset):
        return (nj.deform_roi_pool(x, rois, offset, 3, 0.5, 2) ** 2).sum()

    offset = jnp.asarray(random((3, 2, 3, 3), 6))
    eager = jax.value_and_grad(loss, argnums=(0, 1))(x, offset)
    jitted = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, offset)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)

    batched = jax.vmap(lambda image: nj.roi_align(image[None], rois[:1].at[:, 0].set(0), 2, 0.5, 2))(x)
    for n in range(2):
        expected = ops.roi_align(FEATURES[n:n + 1], np.array([[0, *ROIS[0, 1:]]]), 2, 0.5, 2)
        np.testing.assert_array_equal(np.asarray(batched[n]), expected)


def test_list_of_boxes_and_float32():
    x = jnp.asarray(FEATURES, jnp.float32)
    boxes = [jnp.asarray(ROIS[ROIS[:, 0] == n, 1:], jnp.float32) for n in range(2)]
    output = nj.roi_align(x, boxes, 2, 0.5, 2)
    assert output.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(output), ops.roi_align(FEATURES.astype(np.float32),
                                                                    ROIS.astype(np.float32), 2, 0.5, 2))
    with pytest.raises(ValueError, match="boxes"):
        nj.roi_align(x, jnp.asarray(ROIS[:, 1:]), 2)
    with pytest.raises(ValueError, match="output_size"):
        nj.roi_align(x, jnp.asarray(ROIS), 0)


def test_deform_roi_pooling_without_offsets():
    output = nj.deform_roi_pooling(jnp.asarray(FEATURES), jnp.asarray(ROIS), None, 0.5, 3, 2, True, 2,
                                   sample_per_part=2)
    expected = ops.deform_psroi_pool(FEATURES, ROIS, None, 0.5, 2, 2, 3, 3, 2, 0.0, True)
    np.testing.assert_array_equal(np.asarray(output), expected)
