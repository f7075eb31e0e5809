"""A small reverse-mode autograd: Tensor, Function, no_grad.

A ``Function`` subclass defines static ``forward(ctx, *inputs)`` and ``backward(ctx, *grad_outputs)``
on plain arrays, as in PyTorch. ``Function.apply(*args)`` unwraps Tensor arguments, runs ``forward``
and, when gradients are being recorded and some input requires one, links the output to a node of the
graph. ``Tensor.backward`` walks the graph in reverse topological order and accumulates gradients into
the ``.grad`` of the leaf Tensors that require them.

Tensor's arithmetic operators (``+ - * / @``, unary ``-``) are Functions defined here, next to Tensor:
Python finds operators only as methods of the class, and this layer must not import ``functional``.
They broadcast as NumPy does; each input's gradient is summed over the axes it was broadcast along.
"""
import contextlib
import threading

from . import _backend

# Whether gradients are recorded is a setting of each thread, as in PyTorch: a thread inside no_grad
# (a gradient check, an evaluation loop) leaves the others recording.
_grad_mode = threading.local()


def is_grad_enabled():
    """Whether ``Function.apply`` records the calls of this thread (False inside ``no_grad``)."""
    return getattr(_grad_mode, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Inside the block, Function.apply records nothing in this thread: outputs never require
    gradients. Other threads are not affected."""
    previous, _grad_mode.enabled = is_grad_enabled(), False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


class Tensor:
    """An array (NumPy or CuPy) with an optional gradient.

    ``data`` is the array, ``grad`` the accumulated gradient (None until a backward reaches it).
    ``+ - * / @`` and unary ``-`` are differentiable; the other operand may be a Tensor, an array or a
    Python number.
    """

    # NumPy and CuPy arrays defer to Tensor's reflected operators (array + tensor -> Tensor.__radd__)
    # instead of treating the Tensor as an element of an object array.
    __array_ufunc__ = None

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

    def __add__(self, other):
        return Add.apply(self, other)

    def __radd__(self, other):
        return Add.apply(other, self)

    def __sub__(self, other):
        return Subtract.apply(self, other)

    def __rsub__(self, other):
        return Subtract.apply(other, self)

    def __mul__(self, other):
        return Multiply.apply(self, other)

    def __rmul__(self, other):
        return Multiply.apply(other, self)

    def __truediv__(self, other):
        return Divide.apply(self, other)

    def __rtruediv__(self, other):
        return Divide.apply(other, self)

    def __matmul__(self, other):
        return MatMul.apply(self, other)

    def __rmatmul__(self, other):
        return MatMul.apply(other, self)

    def __neg__(self):
        return Negate.apply(self)

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
        # A leaf's .grad is its own array: not the caller's grad, nor another leaf's (a Function may
        # pass its grad_output on, or a view of it, to several inputs).
        handed_out = [grad]
        for tensor in _reverse_topological_order(self):
            grad = grads.pop(id(tensor), None)
            if grad is None:
                continue
            if tensor.is_leaf:
                if tensor.grad is not None:
                    tensor.grad = tensor.grad + grad
                    continue
                if any(xp.may_share_memory(grad, other) for other in handed_out):
                    grad = grad.copy()
                tensor.grad = grad
                handed_out.append(grad)
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
        # Under no_grad nothing is recorded, so forward may skip what only a backward would need.
        enabled = is_grad_enabled()
        needs_input_grad = tuple(enabled and isinstance(a, Tensor) and a.requires_grad
                                 for a in args)
        ctx = Context(needs_input_grad)
        output = cls.forward(ctx, *(a.data if isinstance(a, Tensor) else a for a in args))
        result = Tensor(output)
        if any(needs_input_grad):
            result.requires_grad = True
            result._node = _Node(cls, ctx, args)
        return result


# -- arithmetic ------------------------------------------------------------------------------------

def reduce_to(grad, like):
    """``grad`` of a broadcast result, summed back to the shape (and dtype) of the input ``like``."""
    extra = grad.ndim - like.ndim
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(axis for axis, size in enumerate(like.shape) if size == 1 and grad.shape[axis] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return _backend.as_array(grad).astype(like.dtype, copy=False)


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a + b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        needs_a, needs_b = ctx.needs_input_grad
        return (reduce_to(grad, a) if needs_a else None), (reduce_to(grad, b) if needs_b else None)


class Subtract(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a - b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        needs_a, needs_b = ctx.needs_input_grad
        return (reduce_to(grad, a) if needs_a else None), (reduce_to(-grad, b) if needs_b else None)


class Multiply(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        needs_a, needs_b = ctx.needs_input_grad
        return (reduce_to(grad * b, a) if needs_a else None), (reduce_to(grad * a, b) if needs_b else None)


class Divide(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        needs_a, needs_b = ctx.needs_input_grad
        return ((reduce_to(grad / b, a) if needs_a else None),
                (reduce_to(-grad * a / (b * b), b) if needs_b else None))


class Negate(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, grad):
        return -grad


class MatMul(Function):
    """``a @ b`` with NumPy's rules: 1-d operands are promoted to a row (a) or a column (b) and the
    promoted axis dropped from the result; leading (batch) axes broadcast."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        xp = _backend.array_module(grad)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        grad2 = grad[..., None] if b.ndim == 1 else grad  # the result with the dropped axes put back
        grad2 = grad2[..., None, :] if a.ndim == 1 else grad2
        needs_a, needs_b = ctx.needs_input_grad
        grad_a = grad_b = None
        if needs_a:
            grad_a = reduce_to(grad2 @ xp.swapaxes(b2, -1, -2), a2).reshape(a.shape)
        if needs_b:
            grad_b = reduce_to(xp.swapaxes(a2, -1, -2) @ grad2, b2).reshape(b.shape)
        return grad_a, grad_b
