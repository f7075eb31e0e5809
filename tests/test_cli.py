"""The command line, ``python -m numba_droi demo|check|bench|info`` (demo itself: test_demo.py), and the
benchmark's busy-core mode."""
import contextlib
import importlib.util
import os
import re
import time

import numba
import numpy as np
import pytest
import scipy

import numba_droi
from numba_droi import __main__ as cli
from numba_droi import _backend, benchmark, demo, ops, registry

OPTIONS = {"demo": ["--target", "--repeats"], "check": ["--target", "--only"],
           "bench": ["--target", "--only", "--repeats", "--torchvision", "--latency"],
           "warmup": ["--target", "--dtype", "--only", "--jobs"], "info": []}


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_every_subcommand_has_help_naming_its_options(command, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m numba_droi {command}")
    assert all(option in text for option in OPTIONS[command])
    assert ("--target" in text) == (command != "info")


@pytest.mark.parametrize("command", ["demo", "check", "bench", "warmup"])
def test_the_cuda_target_without_a_gpu_or_the_simulator_is_a_usage_error(command, monkeypatch, capsys):
    monkeypatch.setattr(_backend, "available_targets", lambda: ("cpu",))
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--target", "cuda"])
    assert exit.value.code == 2
    assert "the cuda target needs a GPU" in capsys.readouterr().err


def test_warmup_refuses_the_simulator_and_checks_jobs(capsys):
    if _backend.gpu_available():
        pytest.skip("a GPU is present")
    for arguments, words in ((["--target", "cuda"], "needs a GPU with CuPy"),
                             (["--jobs", "0"], "--jobs must be at least 1, got 0")):
        with pytest.raises(SystemExit) as exit:
            cli.main(["warmup", *arguments, "--only", "roi_align"])
        assert exit.value.code == 2
        assert words in capsys.readouterr().err


def test_bench_refuses_the_simulator(capsys):
    if _backend.gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as exit:
        cli.main(["bench", "--target", "cuda", "--only", "roi_align"])
    assert exit.value.code == 2
    assert "needs a GPU with CuPy" in capsys.readouterr().err


def check_rows(text):
    """operator -> its row (operator, inputs, result, detail...) in the table ``check`` printed."""
    return {cells[0]: cells for cells in (line.split() for line in text.splitlines()[3:])}


def test_check_passes_every_operator_on_the_cpu_and_prints_a_row_each(cpu, capsys):
    assert cli.main(["check", "--target", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("numba_droi check on the cpu target")
    rows = check_rows(out)
    assert list(rows) == list(registry.BY_NAME)
    assert all(row[2:] == ["pass"] for row in rows.values())
    sizes = demo.SIZES["gradcheck"]
    features = "x".join(str(sizes[key]) for key in ("batch", "channels", "height", "width"))
    assert rows["roi_align"][1] == f"{features},{sizes['boxes']}x5"  # features, boxes
    assert rows["deform_roi_pool"][1].count(",") == 3  # features, boxes, offset, mask


def test_check_fails_an_operator_whose_backward_is_wrong(cpu, monkeypatch, capsys):
    backward = ops.roi_align_backward
    monkeypatch.setattr(ops, "roi_align_backward", lambda *args, **kwargs: 1.01 * backward(*args, **kwargs))
    assert cli.main(["check", "--target", "cpu", "--only", "roi_align", "ps_roi_align"]) == 1
    rows = check_rows(capsys.readouterr().out)
    assert list(rows) == ["roi_align", "ps_roi_align"]
    assert rows["roi_align"][2:4] == ["FAIL", "gradient"]
    assert rows["ps_roi_align"][2:] == ["pass"]


def test_check_fails_an_operator_that_raises(cpu, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(ops, "ps_roi_pool", broken)
    assert cli.main(["check", "--target", "cpu", "--only", "ps_roi_pool", "ps_roi_align"]) == 1
    rows = check_rows(capsys.readouterr().out)
    assert rows["ps_roi_pool"][2:] == ["FAIL", "RuntimeError:", "kernel", "exploded"]
    assert rows["ps_roi_align"][2:] == ["pass"]


def test_info_prints_the_versions_it_claims(capsys):
    assert cli.main(["info"]) == 0
    facts = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1)
                 for line in capsys.readouterr().out.splitlines())
    import numba_cuda
    expected = {"numba_droi": numba_droi.__version__, "numba": numba.__version__,
                "numba-cuda": numba_cuda.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
                "targets": ", ".join(_backend.available_targets()),
                "CUDA simulator": "on (NUMBA_ENABLE_CUDASIM=1)" if _backend.SIMULATED else "off"}
    for name in ("torch", "torchvision", "jax", "cupy"):
        if importlib.util.find_spec(name) is None:
            expected[name] = "not installed"
    assert {key: facts.get(key) for key in expected} == expected
    if importlib.util.find_spec("torch") is not None:
        import torch
        # The installed distribution's version; its local part (+cpu, +cu130) is there or not by build.
        assert facts["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert facts["cpu threads"].startswith(f"{numba_droi.get_num_threads()} ")
    assert ("GPU" in facts) != _backend.gpu_available()  # "GPU  none", or "GPU name" and the rest


def table_rows(text):
    """The cells of a markdown table's body rows."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| operator")]


def test_bench_prints_a_row_per_pass_of_the_chosen_operator(cpu, capsys):
    assert cli.main(["bench", "--target", "cpu", "--only", "roi_align", "--repeats", "1"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [row[:2] for row in rows] == [["roi_align", "forward"], ["roi_align", "forward+backward"]]
    assert all(float(row[2]) > 0 and row[3:6] == ["n/a", "n/a", "n/a"] for row in rows)
    (_, _, forward, *_, no_ratio), (_, _, both, *_, backward_ratio) = rows
    assert no_ratio == "" and float(backward_ratio) == pytest.approx(
        (float(both) - float(forward)) / float(forward), abs=0.01 + 0.06 * float(backward_ratio))


def test_bench_with_torchvision_compares_with_it(cpu, capsys):
    pytest.importorskip("torchvision")
    import torch
    assert cli.main(["bench", "--target", "cpu", "--only", "roi_align", "--repeats", "1",
                     "--torchvision"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert [row[:2] for row in rows] == [["roi_align", "forward"], ["roi_align", "forward+backward"]]
    for _, _, ours, peer_name, peer, ratio, _ in rows:
        assert peer_name == "torchvision"
        assert float(ratio) == pytest.approx(float(ours) / float(peer), rel=0.05)
    assert f"torch {torch.__version__}" in out


def test_bench_with_torchvision_not_installed_says_so(monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "torchvision_installed", lambda: False)
    with pytest.raises(SystemExit) as exit:
        cli.main(["bench", "--target", "cpu", "--torchvision"])
    assert exit.value.code == 2
    assert "--torchvision needs torchvision installed" in capsys.readouterr().err


def test_bench_measures_on_the_cuda_target(cuda, monkeypatch):
    """The cuda path of ``measure`` (target, arrays, our own peer) on small cases: simulated without
    a GPU, so that every launch goes through the cuda kernels."""
    detection_case = registry.detection_case
    monkeypatch.setattr(registry, "detection_case", lambda rng, **sizes: detection_case(
        rng, batch=1, channels=2, height=6, width=7, boxes=2))
    launches = []
    launch = _backend.launch
    monkeypatch.setattr(_backend, "launch", lambda *args: launches.append(args[0]) or launch(*args))
    rows = benchmark.measure(["deform_roi_pool"], 1, benchmark.Setting("cuda"))
    assert [row[:2] for row in rows] == [("deform_roi_pool", "forward"),
                                         ("deform_roi_pool", "forward+backward")]
    assert all(row[2] > 0 and row[3] == "numba_droi roi_align" and row[4] > 0 for row in rows)
    launched = {name for name, cuda_kernel in _backend.CUDA_KERNELS.items()
                if any(cuda_kernel.kernel is k for k in launches)}
    assert any(name.startswith("deform_roi_pool") for name in launched)
    assert any(name.startswith("roi_align") for name in launched)


def test_bench_latency_runs_each_first_call_in_fresh_processes(capsys):
    assert cli.main(["bench", "--latency", "--target", "cpu", "--only", "roi_align"]) == 0
    out = capsys.readouterr().out
    (row,) = table_rows(out)
    name, dtype, imported, cold, warm, setup, compiled_cold, compiled_warm = row
    assert name == "roi_align" and dtype == "float32"
    assert all(float(seconds) > 0 for seconds in (imported, cold, warm, setup))
    assert float(setup) <= float(warm)  # the set-up is a part of the warm first call
    assert int(compiled_cold) >= 2  # an empty cache: the forward's and the backward's functions compile
    assert compiled_warm == "none"  # the cache they filled: every kernel loads from it
    assert "Target: cpu." in out


def test_bench_forward_backward_starts_from_cleared_gradients():
    """Each timed forward+backward leaves one call's gradient, not the sum of all calls'."""
    rng = np.random.default_rng(0)
    features, rois = registry.detection_case(rng, batch=1, channels=3, height=9, width=8, boxes=4,
                                             dtype=np.float64)
    rois[:, 1:] /= 16
    seen = []

    def ours(x):
        seen.append(x)
        return numba_droi.functional.roi_align(x, rois, 2, sampling_ratio=2)
    calls = benchmark.case_calls(benchmark.Case([features], ours), benchmark.Setting("cpu"))
    assert set(calls) == {("forward", "ours"), ("forward+backward", "ours")}
    for _ in range(3):
        calls["forward+backward", "ours"]()
    once = ops.roi_align_backward(np.ones((4, 3, 2, 2)), rois, features.shape, 1.0, 2)
    assert np.any(once != 0)
    np.testing.assert_array_equal(seen[-1].grad, once)


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_busy_cores_keeps_processes_spinning_until_the_block_ends():
    with benchmark.busy_cores(2) as children:
        time.sleep(1.0)
        assert all(child.poll() is None for child in children)
        spent = [_cpu_seconds(child.pid) for child in children]
    assert len(children) == 2 and all(child.poll() is not None for child in children)
    assert sum(spent) > 0.5  # two spinning processes on two cores, one second: about 2 s between them


def test_busy_cores_stop_by_themselves_after_their_time():
    with benchmark.busy_cores(1, seconds=0.2) as (child,):
        deadline = time.monotonic() + 10
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.returncode == 0


def test_measure_quiet_and_busy_times_each_operator_both_ways(monkeypatch):
    detection_case = registry.detection_case
    monkeypatch.setattr(registry, "detection_case", lambda rng, **sizes: detection_case(
        rng, batch=1, channels=2, height=6, width=7, boxes=2))
    busy = []

    @contextlib.contextmanager
    def recording_busy_cores(processes=None):
        busy.append(processes)
        yield []
    monkeypatch.setattr(benchmark, "busy_cores", recording_busy_cores)
    measured = []
    measure = benchmark._measure
    monkeypatch.setattr(benchmark, "_measure", lambda name, *args: measured.append((name, len(busy)))
                        or measure(name, *args))
    rows = benchmark.measure_quiet_and_busy(["deform_roi_pool"], 1, processes=3)
    assert busy == [3] and measured == [("deform_roi_pool", 0), ("deform_roi_pool", 1)]
    assert [row[:3] for row in rows] == [("deform_roi_pool", direction, "numba_droi roi_align")
                                         for direction in ("forward", "forward+backward")]
    assert all(value > 0 for row in rows for value in row[3:])


def test_busy_table_gives_both_ratios_and_their_quotient():
    rows = [("roi_align", "forward", "torchvision", 2.0, 8.0, 3.0, 6.0),
            ("roi_align", "forward+backward", None, 2.0, None, 3.0, None)]
    (row,) = table_rows(benchmark.busy_table(rows, 2, 2))
    assert row == ["roi_align", "forward", "torchvision", "2.0", "8.0", "0.25", "3.0", "6.0", "0.50", "2.00"]


def test_peak_mib_counts_the_memory_a_call_holds_after_its_warm_up():
    calls = []

    def allocate():  # 64 MiB, every page written
        calls.append("call")
        return float(np.ones(64 * 2 ** 20 // 8).sum())
    assert 60 < benchmark.peak_mib(allocate, warm_up=lambda: calls.append("warm up")) < 80
    assert calls == ["warm up", "call"]


def test_timed_medians_warms_up_only_the_calls_named():
    counts = {"a": 0, "b": 0}

    def counted(key):
        def call():
            counts[key] += 1
        return call
    medians = benchmark.timed_medians({"a": counted("a"), "b": counted("b")}, 3, benchmark.Setting(),
                                      warm_up=["a"])
    assert counts == {"a": 4, "b": 3} and set(medians) == {"a", "b"}
