"""Optimizers: ``SGD`` and ``Adam``, with PyTorch's update rules.

An optimizer holds a list of Tensors that require gradients (``model.parameters()``); ``step()``
updates each one that has a ``.grad``, in place on its array (NumPy or CuPy), and ``zero_grad()``
clears the gradients before the next backward. Hyper-parameters are attributes (``optimizer.lr =
...`` changes the learning rate for the next steps).
"""
import math

from . import _backend
from .autograd import Tensor


class Optimizer:
    def __init__(self, params):
        self.params = list(params)
        if not self.params:
            raise ValueError("params is empty: give the Tensors to optimise, e.g. model.parameters()")
        for index, parameter in enumerate(self.params):
            if not (isinstance(parameter, Tensor) and parameter.requires_grad):
                raise TypeError(f"params must be Tensors with requires_grad=True; item {index} is "
                                f"{parameter!r:.80}")
        self.state = [{} for _ in self.params]  # per parameter, created at its first update

    def zero_grad(self):
        for parameter in self.params:
            parameter.grad = None

    def step(self):
        for parameter, state in zip(self.params, self.state):
            if parameter.grad is not None:
                self._update(parameter.data, parameter.grad, state)

    def _update(self, array, grad, state):
        raise NotImplementedError


def _check_at_least(name, value, low=0.0):
    if not value >= low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay, as ``torch.optim.SGD``:
    ``g = grad + weight_decay * p``; with momentum ``b = momentum * b + g`` (``b = g`` at the first
    step) and ``g = b``; then ``p -= lr * g``."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params)
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            _check_at_least(name, value)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def _update(self, array, grad, state):
        if self.weight_decay:
            grad = grad + self.weight_decay * array
        if self.momentum:
            buffer = state.get("momentum")
            state["momentum"] = buffer = grad.copy() if buffer is None else self.momentum * buffer + grad
            grad = buffer
        array -= self.lr * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) as ``torch.optim.Adam``: ``g = grad + weight_decay * p``;
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``; at step t
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            _check_at_least(name, value)
        for index, beta in enumerate(betas):
            if not 0 <= beta < 1:
                raise ValueError(f"betas[{index}] must lie in [0, 1), got {beta!r}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay

    def _update(self, array, grad, state):
        xp = _backend.array_module(array)
        beta1, beta2 = self.betas
        if self.weight_decay:
            grad = grad + self.weight_decay * array
        if not state:
            state.update(step=0, m=xp.zeros_like(array), v=xp.zeros_like(array))
        state["step"] += 1
        state["m"] = m = beta1 * state["m"] + (1 - beta1) * grad
        state["v"] = v = beta2 * state["v"] + (1 - beta2) * grad * grad
        correction1, correction2 = 1 - beta1 ** state["step"], 1 - beta2 ** state["step"]
        array -= (self.lr / correction1) * m / (xp.sqrt(v) / math.sqrt(correction2) + self.eps)
