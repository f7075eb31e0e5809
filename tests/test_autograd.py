"""Tensor, Function, the backward walk and no_grad."""
import numpy as np
import pytest

import numba_droi
from numba_droi.autograd import Function, Tensor


class Multiply(Function):
    @staticmethod
    def forward(ctx, a, b, scale=1.0):
        ctx.save_for_backward(a, b)
        ctx.scale = scale
        return a * b * scale

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return grad * b * ctx.scale, grad * a * ctx.scale, None


class Sum(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.shape = a.shape
        return np.asarray(a.sum())

    @staticmethod
    def backward(ctx, grad):
        return np.broadcast_to(grad, ctx.shape).copy()


def test_apply_records_and_backward_reaches_leaves():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = Tensor(np.array([3.0, 5.0]), requires_grad=True)
    loss = Sum.apply(Multiply.apply(a, b, 2.0))
    assert loss.shape == () and loss.requires_grad and not loss.is_leaf
    loss.backward()
    np.testing.assert_array_equal(a.grad, [6.0, 10.0])
    np.testing.assert_array_equal(b.grad, [2.0, 4.0])


def test_non_tensor_arguments_pass_through_and_get_no_gradient():
    a = Tensor(np.array([2.0]), requires_grad=True)
    out = Multiply.apply(a, np.array([4.0]), 0.5)
    np.testing.assert_array_equal(out.data, [4.0])
    out.backward(np.ones(1))
    np.testing.assert_array_equal(a.grad, [2.0])


def test_a_tensor_used_twice_accumulates_both_paths():
    a = Tensor(np.array([3.0]), requires_grad=True)
    Sum.apply(Multiply.apply(a, a)).backward()  # d(a^2)/da = 2a
    np.testing.assert_array_equal(a.grad, [6.0])


def test_diamond_graph_is_walked_once_per_node():
    a = Tensor(np.array([2.0]), requires_grad=True)
    b = Multiply.apply(a, np.array([3.0]))  # 3a
    c = Multiply.apply(b, b)  # 9a^2
    d = Multiply.apply(c, b)  # 27a^3
    Sum.apply(d).backward()
    np.testing.assert_allclose(a.grad, [81.0 * 4])


def test_gradients_accumulate_across_backward_calls_until_reset():
    a = Tensor(np.array([1.0, 1.0]), requires_grad=True)
    Sum.apply(a).backward()
    Sum.apply(a).backward()
    np.testing.assert_array_equal(a.grad, [2.0, 2.0])
    a.zero_grad()
    assert a.grad is None


def test_backward_needs_a_gradient_for_non_scalars():
    a = Tensor(np.ones(3), requires_grad=True)
    out = Multiply.apply(a, a)
    with pytest.raises(RuntimeError, match="needs a grad"):
        out.backward()
    with pytest.raises(ValueError, match=r"grad must have shape \(3,\)"):
        out.backward(np.ones(2))


def test_no_grad_records_nothing():
    a = Tensor(np.ones(2), requires_grad=True)
    with numba_droi.no_grad():
        out = Multiply.apply(a, a)
    assert not out.requires_grad and out.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        Sum.apply(out).backward()


def test_inputs_without_requires_grad_get_no_gradient():
    a, b = Tensor(np.ones(2)), Tensor(np.ones(2), requires_grad=True)
    Sum.apply(Multiply.apply(a, b)).backward()
    assert a.grad is None and b.grad is not None


def test_tensor_properties():
    t = Tensor(np.zeros((2, 3), np.float32), requires_grad=True)
    assert t.shape == (2, 3) and t.dtype == np.float32 and t.ndim == 2 and t.size == 6
    assert t.grad is None and t.is_leaf and not t.detach().requires_grad
    assert "requires_grad=True" in repr(t)


def test_no_grad_is_a_setting_of_each_thread():
    """One thread inside no_grad while another records: the other's outputs still require gradients
    and its gradients are right."""
    import threading
    inside, done = threading.Event(), threading.Event()

    def evaluating():
        with numba_droi.no_grad():
            inside.set()
            done.wait(10)

    thread = threading.Thread(target=evaluating)
    thread.start()
    try:
        assert inside.wait(10)
        x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
        y = Sum.apply(Multiply.apply(x, x))
        assert y.requires_grad
        y.backward()
        np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    finally:
        done.set()
        thread.join()
    with numba_droi.no_grad():
        assert not Multiply.apply(x, x).requires_grad


def test_each_leaf_gets_its_own_gradient_array():
    """c = a + b passes its gradient on to both: a.grad, b.grad and the caller's grad are three
    arrays, so that changing one in place changes no other."""
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    grad = np.array([1.0, 2.0, 3.0])
    (a + b).backward(grad)
    a.grad *= 10
    np.testing.assert_array_equal(b.grad, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(grad, [1.0, 2.0, 3.0])
    leaf = Tensor(np.ones(3), requires_grad=True)
    leaf.backward(grad)  # a leaf as the root
    assert not np.shares_memory(leaf.grad, grad)
