"""Gradient checking by finite differences (SciPy's ``scipy.differentiate``), in float64."""
import numpy as np
from scipy import differentiate

from . import _backend
from .autograd import Tensor, no_grad


class GradcheckError(AssertionError):
    """The backward of a function disagrees with its finite differences."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, max_full_size=1024,
              n_directions=4, seed=0):
    """Check the backward of ``fn`` against central finite differences of its forward.

    ``fn(*inputs)`` must return a Tensor; every Tensor of ``inputs`` with ``requires_grad`` is checked
    (other arguments are passed through). The check runs on float64 copies of the inputs.

    * When the checked inputs hold at most ``max_full_size`` elements, the whole Jacobian ``J`` is
      estimated by finite differences (one central difference per input element) and compared with
      the backward's ``u^T J`` for every one-hot ``u`` (up to 16 outputs) or for 4 random ``u``.
    * Otherwise ``n_directions`` random pairs ``(u, v)`` compare ``u^T J v`` from the backward with the
      derivative of ``t -> <u, fn(x + t v)>`` at 0.

    An element fails when ``|analytic - numeric| > atol + rtol * |numeric|``. Returns True, or raises
    ``GradcheckError`` naming the worst element (returns False when ``raise_exception`` is False).
    """
    single = isinstance(inputs, Tensor)
    inputs = [_float64(a) for a in ([inputs] if single else list(inputs))]
    checked = [i for i, a in enumerate(inputs) if isinstance(a, Tensor) and a.requires_grad]
    if not checked:
        raise ValueError("gradcheck needs at least one input Tensor with requires_grad=True")
    rng = np.random.default_rng(seed)

    def evaluate(replacements):
        """fn's output (a flat NumPy array) with the checked inputs replaced as given."""
        arguments = list(inputs)
        for i, value in replacements.items():
            xp = _backend.array_module(inputs[i].data)
            arguments[i] = Tensor(xp.asarray(value.reshape(inputs[i].shape)))
        with no_grad():
            return _backend.to_numpy(fn(*arguments).data).ravel()

    output_size = evaluate({}).size

    def vector_jacobian(u):
        """Backward's ``u^T J`` for each checked input, as flat NumPy arrays."""
        for i in checked:
            inputs[i].grad = None
        output = fn(*inputs)
        xp = _backend.array_module(output.data)
        output.backward(xp.asarray(u.reshape(output.shape)))
        return [np.zeros(inputs[i].size) if inputs[i].grad is None
                else _backend.to_numpy(inputs[i].grad).ravel() for i in checked]

    failures = []  # (excess over tolerance, description)
    if sum(inputs[i].size for i in checked) <= max_full_size:
        cotangents = (np.eye(output_size) if output_size <= 16
                      else rng.standard_normal((4, output_size)))
        for position, i in enumerate(checked):
            x0 = _backend.to_numpy(inputs[i].data).ravel()

            def columns(x, i=i):  # scipy passes (n_in, ...): one evaluation per point
                points = x.reshape(x.shape[0], -1)
                values = [evaluate({i: points[:, j]}) for j in range(points.shape[1])]
                return np.stack(values, axis=-1).reshape((output_size,) + x.shape[1:])

            jacobian = differentiate.jacobian(columns, x0, order=2, maxiter=1, initial_step=eps,
                                              tolerances=dict(atol=0, rtol=0)).df
            for row, u in enumerate(cotangents):
                analytic = vector_jacobian(u)[position]
                numeric = u @ jacobian.reshape(output_size, -1)
                excess = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
                worst = int(np.argmax(excess))
                element = tuple(int(v) for v in np.unravel_index(worst, inputs[i].shape))
                failures.append((excess[worst], f"input {i}, element {element} (cotangent {row}): "
                                 f"backward {float(analytic[worst])!r}, "
                                 f"finite differences {float(numeric[worst])!r}"))
    else:
        for direction in range(n_directions):
            u = rng.standard_normal(output_size)
            v = {i: rng.standard_normal(inputs[i].size) for i in checked}
            x0 = {i: _backend.to_numpy(inputs[i].data).ravel() for i in checked}
            analytic = sum(g @ v[i] for g, i in zip(vector_jacobian(u), checked))

            def along(t):
                flat = np.ravel(t)
                values = [u @ evaluate({i: x0[i] + s * v[i] for i in checked}) for s in flat]
                return np.reshape(values, np.shape(t))

            numeric = differentiate.derivative(along, 0.0, order=2, maxiter=1, initial_step=eps,
                                               tolerances=dict(atol=0, rtol=0)).df
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


def _float64(value):
    if not isinstance(value, Tensor):
        return value
    xp = _backend.array_module(value.data)
    data = value.data.astype(xp.float64) if value.dtype.kind == "f" else value.data
    return Tensor(data, requires_grad=value.requires_grad)
