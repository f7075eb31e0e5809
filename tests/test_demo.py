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
