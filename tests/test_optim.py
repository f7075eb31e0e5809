"""numba_droi.optim: SGD and Adam against transcriptions of PyTorch's documented update rules (and
torch.optim itself when installed), their bookkeeping, and that they minimise a loss."""
import numpy as np
import pytest

from numba_droi import functional as F
from numba_droi import nn, optim
from numba_droi.autograd import Tensor

STEPS = 5


def gradients(shape, seed=0):
    """A different gradient at each step."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(STEPS)]


def sgd_by_the_rule(p, grads, lr, momentum, weight_decay):
    p, buffer = p.copy(), None
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            buffer = g if buffer is None else momentum * buffer + g
            g = buffer
        p = p - lr * g
    return p


def adam_by_the_rule(p, grads, lr, betas, eps, weight_decay):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def run(optimizer_class, start, grads, **options):
    parameter = Tensor(start.copy(), requires_grad=True)
    optimizer = optimizer_class([parameter], **options)
    for g in grads:
        optimizer.zero_grad()
        parameter.grad = g.copy()
        optimizer.step()
    return parameter.data


SGD_OPTIONS = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.1, weight_decay=0.01),
               dict(lr=0.02, momentum=0.5, weight_decay=0.1)]
ADAM_OPTIONS = [dict(lr=1e-3), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6), dict(lr=0.01, weight_decay=0.1)]


@pytest.mark.parametrize("options", SGD_OPTIONS, ids=str)
def test_sgd_follows_its_rule(options):
    start, grads = np.random.default_rng(1).standard_normal((3, 4)), gradients((3, 4))
    expected = sgd_by_the_rule(start, grads, options["lr"], options.get("momentum", 0),
                               options.get("weight_decay", 0))
    np.testing.assert_allclose(run(optim.SGD, start, grads, **options), expected, rtol=1e-13)


@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=str)
def test_adam_follows_its_rule(options):
    start, grads = np.random.default_rng(1).standard_normal((3, 4)), gradients((3, 4))
    expected = adam_by_the_rule(start, grads, options["lr"], options.get("betas", (0.9, 0.999)),
                                options.get("eps", 1e-8), options.get("weight_decay", 0))
    np.testing.assert_allclose(run(optim.Adam, start, grads, **options), expected, rtol=1e-12)


@pytest.mark.parametrize("name, options",
                         [("SGD", o) for o in SGD_OPTIONS] + [("Adam", o) for o in ADAM_OPTIONS], ids=str)
def test_optimizers_agree_with_torch(name, options):
    torch = pytest.importorskip("torch")
    start, grads = np.random.default_rng(1).standard_normal((3, 4)), gradients((3, 4))
    theirs = torch.tensor(start.copy(), requires_grad=True)
    optimizer = getattr(torch.optim, name)([theirs], **options)
    for g in grads:
        theirs.grad = torch.tensor(g)
        optimizer.step()
    np.testing.assert_allclose(run(getattr(optim, name), start, grads, **options),
                               theirs.detach().numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("optimizer_class", [optim.SGD, optim.Adam])
def test_steps_skip_parameters_without_gradients_and_keep_float32(optimizer_class):
    a = Tensor(np.ones(3, np.float32), requires_grad=True)
    b = Tensor(np.ones(2, np.float32), requires_grad=True)
    momentum = dict(momentum=0.9) if optimizer_class is optim.SGD else {}
    optimizer = optimizer_class([a, b], lr=0.1, weight_decay=0.1, **momentum)
    F.sum(a * a).backward()
    data_a = a.data
    optimizer.step()
    assert a.data is data_a and a.dtype == np.float32  # updated in place
    assert np.all(a.data < 1)
    np.testing.assert_array_equal(b.data, np.ones(2))
    optimizer.zero_grad()
    assert a.grad is None and b.grad is None


def test_bad_arguments():
    p = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(ValueError, match="lr must be >= 0.0, got -0.1"):
        optim.SGD([p], lr=-0.1)
    with pytest.raises(ValueError, match="momentum must be >= 0.0"):
        optim.SGD([p], lr=0.1, momentum=-1)
    with pytest.raises(ValueError, match=r"betas\[1\] must lie in \[0, 1\), got 1.0"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps must be >= 0.0"):
        optim.Adam([p], eps=float("nan"))
    with pytest.raises(ValueError, match="params is empty"):
        optim.Adam(nn.ReLU().parameters())
    with pytest.raises(TypeError, match="item 1 is Tensor"):
        optim.SGD([p, Tensor(np.ones(2))], lr=0.1)


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: optim.Adam(ps, lr=0.05)], ids=["SGD", "Adam"])
def test_optimizers_fit_a_linear_regression(make):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = (x @ np.array([[1.5], [-2.0], [0.5]]) + 0.3).astype(np.float32)
    model = nn.Linear(3, 1, rng=1)
    optimizer = make(model.parameters())
    losses = []
    for _ in range(200):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-4 * losses[0]
