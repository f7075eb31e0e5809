"""The README's Python examples run as written, and each shows what it claims: a gradient example
leaves a gradient in ``x``, a training example records falling ``losses``; the tests that
docs/operators.md names exist."""
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def check_gradient(namespace):
    x = namespace["x"]
    assert x.grad is not None
    grad = np.asarray(x.grad)  # a NumPy array, or a torch tensor
    assert grad.shape == tuple(x.shape) and np.all(np.isfinite(grad))


def check_training(namespace):
    losses = namespace["losses"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.01 * losses[0], losses


# the framework adapters' examples need these; without them the example is skipped
OPTIONAL_FRAMEWORKS = ("torch", "torchvision", "jax")

# what a block defines -> how to check it; every block must define at least one of these names
CHECKS = {"x": check_gradient, "losses": check_training}


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(cpu, index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may save files
    namespace = {}
    try:
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), namespace)
    except ModuleNotFoundError as error:
        if error.name not in OPTIONAL_FRAMEWORKS:
            raise
        pytest.skip(f"README python block {index} needs {error.name}, which is not installed")
    checks = [check for name, check in CHECKS.items() if name in namespace]
    assert checks, f"README python block {index} defines none of {sorted(CHECKS)} to check"
    for check in checks:
        check(namespace)


def test_the_tests_the_specification_names_exist():
    """docs/operators.md pins each deliberate difference to a test by ``tests/<file>.py::<name>``."""
    specification = README.parent / "docs" / "operators.md"
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", specification.read_text())
    assert len(named) > 10
    for path, name in named:
        source = (README.parent / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name}"
