"""Gradient checking by central finite differences, in float64."""
import warnings

import numpy as np

from . import _backend
from .autograd import Tensor, no_grad

class GradcheckError(AssertionError):
    """The backward of a function disagrees with its finite differences."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, max_full_size=10_000,
              n_directions=4, seed=0, constant=None):
    """Check the backward of ``fn`` against central finite differences of its forward,
    ``(f(x + eps e) - f(x - eps e)) / (2 eps)``.

    ``fn(*inputs)`` must return a float64 Tensor; every Tensor of ``inputs`` with ``requires_grad`` is
    checked and must be float64 (a ``TypeError`` says why otherwise); other arguments are passed through.

    * When the checked inputs hold at most ``max_full_size`` elements (10 000 by default), every input
      element gets its own central difference (two evaluations of ``fn``), giving ``u^T J`` for every
      one-hot cotangent ``u`` (outputs of at most 16 elements) or for 4 random ones; each is compared
      element by element with the backward's ``u^T J``. An error in a single element of a gradient is
      caught.
    * Above that, ``n_directions`` random pairs ``(u, v)`` compare the backward's ``u^T J v`` with the
      derivative of ``t -> <u, fn(x + t v)>`` at 0, and a ``RuntimeWarning`` says that this is weaker:
      an error in one of ``n`` elements moves ``u^T J v`` by about ``1 / sqrt(n)`` of its size, and passes
      when that is below the tolerance. Errors spread over the gradient (a wrong factor, a wrong
      formula) are caught.

    ``constant`` maps the position of an input to a boolean mask of its shape: elements the function
    has no derivative in (a batch index), which are neither moved nor compared.

    An element fails when ``|analytic - numeric| > atol + rtol * |numeric|``. Returns True, or raises
    ``GradcheckError`` naming the worst element (returns False when ``raise_exception`` is False).
    """
    single = isinstance(inputs, Tensor)
    inputs = list([inputs] if single else inputs)
    checked = [i for i, a in enumerate(inputs) if isinstance(a, Tensor) and a.requires_grad]
    if not checked:
        raise ValueError("gradcheck needs at least one input Tensor with requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(_not_float64(f"input {i}", inputs[i].dtype, eps))
    rng = np.random.default_rng(seed)
    constant = constant or {}
    moving = {i: ~np.asarray(constant.get(i, np.zeros(inputs[i].shape, bool))).ravel() for i in checked}

    def evaluate(replacements):
        """fn's output (a flat NumPy array) with the checked inputs replaced as given."""
        arguments = list(inputs)
        for i, value in replacements.items():
            xp = _backend.array_module(inputs[i].data)
            arguments[i] = Tensor(xp.asarray(value.reshape(inputs[i].shape)))
        with no_grad():
            return _backend.to_numpy(fn(*arguments).data).ravel()

    output = evaluate({})
    if output.dtype != np.float64:
        raise TypeError(_not_float64("fn's output", output.dtype, eps))

    def vector_jacobian(u):
        """Backward's ``u^T J`` for each checked input, as flat NumPy arrays."""
        for i in checked:
            inputs[i].grad = None
        output = fn(*inputs)
        xp = _backend.array_module(output.data)
        output.backward(xp.asarray(u.reshape(output.shape)))
        return [np.zeros(inputs[i].size) if inputs[i].grad is None
                else _backend.to_numpy(inputs[i].grad).ravel() for i in checked]

    def central_difference(at):
        """The derivative at 0 of ``t -> at(t)`` (a NumPy array)."""
        return (at(eps) - at(-eps)) / (2 * eps)

    failures = []  # (excess over tolerance, description)
    size = sum(inputs[i].size for i in checked)
    if size <= max_full_size:
        cotangents = np.eye(output.size) if output.size <= 16 else rng.standard_normal((4, output.size))
        analytic = [vector_jacobian(u) for u in cotangents]
        for position, i in enumerate(checked):
            x0 = _backend.to_numpy(inputs[i].data).ravel()
            if x0.size == 0:
                continue

            def moved(t, element):
                x = x0.copy()
                x[element] += t
                return cotangents @ evaluate({i: x})

            numeric = np.stack([central_difference(lambda t: moved(t, k)) if moving[i][k] else
                                np.zeros(len(cotangents)) for k in range(x0.size)], axis=1)
            for row in range(len(cotangents)):
                error = np.abs(analytic[row][position] - numeric[row])
                excess = np.where(moving[i], error - (atol + rtol * np.abs(numeric[row])), -np.inf)
                worst = int(np.argmax(excess))
                element = tuple(int(v) for v in np.unravel_index(worst, inputs[i].shape))
                failures.append((excess[worst], f"input {i}, element {element} (cotangent {row}): "
                                 f"backward {float(analytic[row][position][worst])!r}, "
                                 f"finite differences {float(numeric[row][worst])!r}"))
    else:
        warnings.warn(f"gradcheck: {size} checked elements, above max_full_size = {max_full_size}: "
                      f"{n_directions} random directions catch errors spread over the gradient but can "
                      "miss an error in a few elements; raise max_full_size to check every element",
                      RuntimeWarning, stacklevel=2)
        for direction in range(n_directions):
            u = rng.standard_normal(output.size)
            v = {i: rng.standard_normal(inputs[i].size) * moving[i] for i in checked}
            x0 = {i: _backend.to_numpy(inputs[i].data).ravel() for i in checked}
            analytic = sum(g @ v[i] for g, i in zip(vector_jacobian(u), checked))
            numeric = central_difference(lambda t: u @ evaluate({i: x0[i] + t * v[i] for i in checked}))
            excess = abs(analytic - numeric) - (atol + rtol * abs(numeric))
            failures.append((excess, f"direction {direction}: backward u.J.v = {float(analytic)!r}, "
                             f"finite differences {float(numeric)!r}"))

    if not failures:  # an empty output (or checked inputs without elements): nothing to compare
        return True
    excess, description = max(failures, key=lambda failure: failure[0])
    if excess <= 0:
        return True
    if raise_exception:
        raise GradcheckError(f"gradient mismatch (atol={atol}, rtol={rtol}), worst at {description}")
    return False


def _not_float64(what, dtype, eps):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return f"gradcheck: {what} is {dtype}, not float64: only float arrays have gradients"
    rounding = np.finfo(dtype).eps / eps
    return (f"gradcheck: {what} is {dtype}, not float64: in {dtype} a central difference with step "
            f"eps = {eps:g} is off by about {rounding:.0%} of the function's size (rounding error "
            f"{np.finfo(dtype).eps:.1e} / eps), far above rtol, and the backward would be blamed; check "
            "on float64 copies (.astype(numpy.float64))")
