"""Test set-up: the cuda target runs under Numba's CUDA simulator unless NUMBA_ENABLE_CUDASIM=0 is set
(on a machine with a GPU and CuPy), so the GPU code path is tested on GPU-less machines too."""
import contextlib
import os
import sys

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # before anything imports numba.cuda
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # reference/

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import numba_droi  # noqa: E402
from numba_droi import _backend  # noqa: E402


class On:
    """Arrays and the target context for one target: ``with on: ...`` runs NumPy-made cases there."""

    def __init__(self, name):
        self.name = name
        self.gpu = name == "cuda" and not _backend.SIMULATED

    def array(self, value):
        return _backend.cupy.asarray(value) if self.gpu else np.asarray(value)

    def numpy(self, value):
        return _backend.to_numpy(value)

    def arrays(self, arrays):
        """A dict of NumPy arrays (None for an absent one) as arrays of this target."""
        return {name: None if a is None else self.array(a) for name, a in arrays.items()}

    def __enter__(self):
        self._context = (numba_droi.target(self.name) if self.name == "cuda" and not self.gpu
                         else contextlib.nullcontext())
        return self._context.__enter__()

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)

    def __repr__(self):
        return f"On({self.name!r})"


@pytest.fixture(params=["cpu", "cuda"])
def on(request):
    """Each target in turn: the cpu target, and the cuda target (simulated without a GPU)."""
    if request.param == "cuda" and "cuda" not in _backend.available_targets():
        pytest.skip("no GPU and no CUDA simulator")
    return On(request.param)


@pytest.fixture
def no_launch(monkeypatch):
    """Any kernel launched fails the test: for argument checks, which must come first."""
    def fail(*args):
        raise AssertionError("a kernel ran before the arguments were checked")
    monkeypatch.setattr(_backend, "run", fail)
    monkeypatch.setattr(_backend, "launch", fail)


@pytest.fixture
def cpu():
    return On("cpu")


@pytest.fixture
def cuda():
    if "cuda" not in _backend.available_targets():
        pytest.skip("no GPU and no CUDA simulator")
    return On("cuda")


# Property tests (hypothesis): few examples by default, so that the suite stays fast and every run
# draws the same ones; HYPOTHESIS_PROFILE=slow (or --hypothesis-profile=slow) draws many more, fresh.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the property tests skip themselves
    pass
else:
    _unhurried = dict(deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.function_scoped_fixture])  # stateless targets
    settings.register_profile("fast", max_examples=6, derandomize=True, **_unhurried)
    settings.register_profile("slow", max_examples=300, **_unhurried)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
