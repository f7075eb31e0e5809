"""``python -m numba_droi warmup`` fills the on-disk kernel cache so that a later process compiles
nothing, and processes that start together on an empty cache compile each kernel once between them."""
import json
import os
import pathlib
import subprocess
import sys

from numba_droi import registry, warmup

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Every operator's example with each optional array present and absent (the arrays a kernel is
# passed then change), forward and backward; prints the kernels this process compiled.
EVERY_VARIANT = """
import itertools, json, sys, numpy as np
from numba_droi import benchmark, ops, registry
dtype = np.dtype(sys.argv[1])
for operator in registry.OPERATORS:
    switches = {name: values for name, values in operator.choices.items()
                if name.startswith("with_") or name == "no_trans"}
    for values in itertools.product(*switches.values()):
        example = operator.example(np.random.default_rng(0), dtype, **dict(zip(switches, values)))
        output = operator.call(ops, example.arrays, example.options)
        operator.vjp(ops, np.ones(output.shape, output.dtype), example.arrays, example.options)
        for schedule in operator.cpu_schedules:
            with schedule():
                operator.vjp(ops, np.ones(output.shape, output.dtype), example.arrays, example.options)
print(json.dumps(benchmark._compiled_kernels()))
"""

FIRST_CALL = """
import json, numpy as np
from numba_droi import benchmark, ops, registry
operator = registry.BY_NAME["roi_align"]
example = operator.example(np.random.default_rng(0))
output = operator.call(ops, example.arrays, example.options)
operator.vjp(ops, np.ones(output.shape), example.arrays, example.options)
print(json.dumps(benchmark._compiled_kernels()))
"""


def python(arguments, cache, **kwargs):
    environment = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT), NUMBA_ENABLE_CUDASIM="0")
    return subprocess.Popen([sys.executable, *arguments], env=environment, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finished(process):
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]
    return out, err


def test_after_warmup_a_fresh_process_compiles_nothing(tmp_path):
    out, err = finished(python(["-m", "numba_droi", "warmup", "--dtype", "float64", "--jobs", "2"], tmp_path))
    combinations = len(registry.OPERATORS)  # one dtype, one target
    assert f"numba_droi warmup: {combinations} operator x dtype x target combinations" in out
    assert "kernels compiled" in out and f"{combinations}/{combinations}" in err  # the progress bar
    out, _ = finished(python(["-c", EVERY_VARIANT, "float64"], tmp_path))
    assert json.loads(out.splitlines()[-1]) == []


def test_processes_starting_together_compile_each_kernel_once(tmp_path):
    processes = [python(["-c", FIRST_CALL], tmp_path) for _ in range(3)]
    compiled = [json.loads(finished(process)[0].splitlines()[-1]) for process in processes]
    everything = [name for names in compiled for name in names]
    assert everything and len(everything) == len(set(everything)), compiled


def test_the_tasks_cover_every_combination_in_order():
    assert warmup.tasks(["cpu"], ["float32", "float64"], ["roi_align", "roi_pool"]) == [
        ("cpu", "float32", "roi_align"), ("cpu", "float32", "roi_pool"),
        ("cpu", "float64", "roi_align"), ("cpu", "float64", "roi_pool")]


def test_warmup_in_this_process_reports_what_it_did(cpu):
    lines = []
    assert warmup.warmup(["cpu"], ["float32"], ["roi_align"], jobs=1, out=lines.append) == 1
    assert lines[0].startswith("numba_droi warmup: 1 operator x dtype x target combinations into ")
    assert lines[1].startswith("done in ") and "kernels compiled" in lines[1]
