"""A small reverse-mode autograd: Tensor, Function, no_grad.

A ``Function`` subclass defines static ``forward(ctx, *inputs)`` and ``backward(ctx, *grad_outputs)``
on plain arrays, as in PyTorch. ``Function.apply(*args)`` unwraps Tensor arguments, runs ``forward``
and, when gradients are being recorded and some input requires one, links the output to a node of the
graph. ``Tensor.backward`` walks the graph in reverse topological order and accumulates gradients into
the ``.grad`` of the leaf Tensors that require them.
"""
import contextlib

from . import _backend

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Inside the block, Function.apply records nothing: outputs never require gradients."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


class Tensor:
    """An array (NumPy or CuPy) with an optional gradient.

    ``data`` is the array, ``grad`` the accumulated gradient (None until a backward reaches it).
    """

    def __init__(self, array, requires_grad=False):
        self.data = _backend.as_array(array.data if isinstance(array, Tensor) else array)
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._node = None  # the Function call that produced this Tensor, if recorded

    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)

    @property
    def is_leaf(self):
        return self._node is None

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def detach(self):
        return Tensor(self.data)

    def numpy(self):
        return _backend.to_numpy(self.data)

    def item(self):
        return self.data.item()

    def zero_grad(self):
        self.grad = None

    def backward(self, grad=None):
        """Accumulate ``d self / d leaf``, contracted with ``grad``, into every leaf's ``.grad``.

        ``grad`` defaults to 1 for a Tensor of one element.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a Tensor that does not require grad")
        xp = _backend.array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() needs a grad for a Tensor of shape {self.shape}")
            grad = xp.ones_like(self.data)
        grad = _backend.as_array(grad.data if isinstance(grad, Tensor) else grad)
        if tuple(grad.shape) != self.shape:
            raise ValueError(f"grad must have shape {self.shape}, got {tuple(grad.shape)}")

        grads = {id(self): grad}
        for tensor in _reverse_topological_order(self):
            grad = grads.pop(id(tensor), None)
            if grad is None:
                continue
            if tensor.is_leaf:
                tensor.grad = grad if tensor.grad is None else tensor.grad + grad
                continue
            node = tensor._node
            input_grads = node.function.backward(node.ctx, grad)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            # As in PyTorch, gradients for defaulted arguments that apply() didn't get may follow,
            # as long as they are None.
            extra = input_grads[len(node.inputs):]
            if len(input_grads) < len(node.inputs) or any(g is not None for g in extra):
                raise RuntimeError(f"{node.function.__name__}.backward returned {len(input_grads)} "
                                   f"gradients for {len(node.inputs)} inputs")
            for parent, parent_grad in zip(node.inputs, input_grads):
                if parent_grad is None or not (isinstance(parent, Tensor) and parent.requires_grad):
                    continue
                if tuple(parent_grad.shape) != parent.shape:
                    raise RuntimeError(f"{node.function.__name__}.backward returned a gradient of "
                                       f"shape {tuple(parent_grad.shape)} for an input of shape "
                                       f"{parent.shape}")
                key = id(parent)
                grads[key] = parent_grad if key not in grads else grads[key] + parent_grad


def _reverse_topological_order(root):
    order, seen = [], set()
    stack = [(root, False)]
    while stack:  # iterative depth-first search: deep graphs don't hit the recursion limit
        tensor, expanded = stack.pop()
        if expanded:
            order.append(tensor)
            continue
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        stack.append((tensor, True))
        if tensor._node is not None:
            stack.extend((parent, False) for parent in tensor._node.inputs
                         if isinstance(parent, Tensor) and parent.requires_grad)
    return reversed(order)


class Context:
    """What ``forward`` leaves for ``backward``: saved arrays and any attributes it sets."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.saved_tensors = ()

    def save_for_backward(self, *arrays):
        self.saved_tensors = arrays


class _Node:
    __slots__ = ("function", "ctx", "inputs")

    def __init__(self, function, ctx, inputs):
        self.function, self.ctx, self.inputs = function, ctx, inputs


class Function:
    """Base class of differentiable operations, subclassed as in PyTorch::

        class Square(Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x * x

            @staticmethod
            def backward(ctx, grad):
                (x,) = ctx.saved_tensors
                return 2 * x * grad

        y = Square.apply(Tensor(x, requires_grad=True))

    ``forward`` receives arrays where ``apply`` got Tensors (other arguments pass through unchanged)
    and returns one array. ``backward`` returns one gradient (or None) per argument of ``forward``.
    """

    @staticmethod
    def forward(ctx, *args):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args):
        needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx = Context(needs_input_grad)
        output = cls.forward(ctx, *(a.data if isinstance(a, Tensor) else a for a in args))
        result = Tensor(output)
        if _grad_enabled and any(needs_input_grad):
            result.requires_grad = True
            result._node = _Node(cls, ctx, args)
        return result
