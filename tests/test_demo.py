"""The main job, ``python -m numba_droi demo``, on both targets at small sizes."""
import numpy as np
import pytest

from numba_droi import __main__ as cli
from numba_droi import demo, registry


@pytest.fixture
def small(monkeypatch):
    """Every timing at the simulator's small size."""
    monkeypatch.setattr(demo, "timing_example", lambda operator, device, rng: operator.example(
        rng, np.float32, **demo.simulator_size(operator, dict(batch=1, channels=3, height=12, width=14,
                                                               boxes=4))))


def test_demo_gradchecks_every_operator_and_prints_a_table(small, on, capsys):
    assert cli.main(["demo", "--target", on.name, "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"on the {on.name} target" in lines[0]
    assert "The first run compiles" in lines[1]
    rows = {line.split()[0]: line.split() for line in lines[4:]}
    assert list(rows) == list(registry.BY_NAME)
    assert all(row[-1] == "pass" for row in rows.values())
    assert rows["roi_align"][1:3] == ["1x3x12x14", "4x3x2x2"]


def test_demo_prints_each_row_as_its_operator_finishes(small, cpu, monkeypatch):
    events = []
    timing_example = demo.timing_example
    monkeypatch.setattr(demo, "timing_example", lambda operator, device, rng: (
        events.append(f"start {operator.name}"), timing_example(operator, device, rng))[1])
    demo.run("cpu", 1, out=events.append)
    names = list(registry.BY_NAME)
    starts = [events.index(f"start {name}") for name in names]
    rows = [next(i for i, e in enumerate(events) if e.startswith(name + " ")) for name in names]
    assert all(start < row for start, row in zip(starts, rows))
    assert all(row < start for row, start in zip(rows, starts[1:]))


def test_demo_times_the_benchmark_cases_on_the_cpu():
    example = demo.timing_example(registry.BY_NAME["roi_align"], "cpu", np.random.default_rng(0))
    assert example.arrays["input"].shape == (2, 256, 50, 68) and example.arrays["input"].dtype == np.float32


def test_demo_reports_a_failing_gradient(small, cpu, monkeypatch, capsys):
    monkeypatch.setattr(demo, "gradcheck", lambda *args, **kwargs: False)
    assert cli.main(["demo", "--target", "cpu", "--repeats", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_the_example_call_puts_the_other_arrays_on_the_target():
    """On the GPU the boxes must be CuPy arrays like the features: ``example_call`` makes them with
    ``to_target``; the arrays that get gradients stay NumPy arrays (the caller makes Tensors)."""
    made = []

    def to_target(array):
        made.append(array)
        return array

    for operator in registry.OPERATORS:
        made.clear()
        example = operator.example(np.random.default_rng(0), **demo.SIZES["gradcheck"])
        arrays, call = demo.example_call(operator, example, to_target)
        assert all(isinstance(a, np.ndarray) for a in arrays)
        others = [name for name in operator.arrays if name not in operator.wanted(example.arrays)
                  and example.arrays[name] is not None]
        assert len(made) == len(others), operator.name
