"""The main job, ``python -m numba_droi demo``, on both targets at small sizes."""
import pytest

from numba_droi import __main__ as cli
from numba_droi import demo


@pytest.fixture
def small(monkeypatch):
    sizes = dict(demo.SIZES, timing={device: (1, 3, 12, 14, 4) for device in demo.SIZES["timing"]})
    monkeypatch.setattr(demo, "SIZES", sizes)


def test_demo_gradchecks_every_operator_and_prints_a_table(small, on, capsys):
    assert cli.main(["demo", "--target", on.name, "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"on the {on.name} target" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert set(rows) == set(demo.OPERATORS)
    assert all(row[-1] == "pass" for row in rows.values())
    assert rows["roi_align"][2] == "4x3x7x7"


def test_demo_reports_a_failing_gradient(small, cpu, monkeypatch, capsys):
    monkeypatch.setattr(demo, "gradcheck", lambda *args, **kwargs: False)
    assert cli.main(["demo", "--target", "cpu", "--repeats", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_every_case_makes_its_other_arrays_with_the_given_array_module():
    """On the GPU the boxes must be CuPy arrays like the features: each case makes them with ``xp``."""
    import numpy as np

    class Recording:
        made = []

        @classmethod
        def asarray(cls, array):
            cls.made.append(array)
            return array

    for name, case in demo.OPERATORS.items():
        Recording.made = []
        arrays, _ = case(np.random.default_rng(0), *demo.SIZES["gradcheck"], np.float32, Recording)
        boxes = [a for a in Recording.made if a.ndim == 2 and a.shape[1] == 5]
        assert len(boxes) == (name != "deform_conv2d"), name
        assert all(isinstance(a, np.ndarray) for a in arrays)
