"""``python -m numba_droi warmup``: compile every operator's kernels into Numba's on-disk cache, so that
a cluster job or a container build pays the compile once and every later process only loads them."""
import concurrent.futures
import multiprocessing
import os
import time

import numba
import numpy as np

from . import _backend, benchmark, ops, registry

DTYPES = ("float32", "float64")


def tasks(targets, dtypes, names):
    """``(target, dtype, operator name)`` for every combination, in order."""
    return [(target, dtype, name) for target in targets for dtype in dtypes for name in names]


def compile_operator(target, dtype, name):
    """Run operator ``name`` forward and backward (every gradient) on a small ``dtype`` example on
    ``target`` (on the cuda target, the deterministic backward too): whatever its kernels need is
    compiled, or loaded from the cache. Returns the names of the kernels compiled."""
    operator = registry.BY_NAME[name]
    example = operator.example(np.random.default_rng(0), np.dtype(dtype))
    setting = benchmark.Setting(target)
    with setting.context():
        arrays = {key: None if a is None else setting.array(a) for key, a in example.arrays.items()}
        output = operator.call(ops, arrays, example.options)
        grad_output = _backend.array_module(output).ones(output.shape, output.dtype)
        operator.vjp(ops, grad_output, arrays, example.options)
        for schedule in operator.cpu_schedules if target == "cpu" else ():
            with schedule():
                operator.vjp(ops, grad_output, arrays, example.options)
        if target == "cuda":
            with _backend.deterministic():
                operator.vjp(ops, grad_output, arrays, example.options)
        setting.synchronize()
    return benchmark._compiled_kernels()


def warmup(targets=("cpu",), dtypes=DTYPES, names=None, jobs=1, out=print):
    """Compile the kernels of operators ``names`` (default: all) for each of ``targets`` and ``dtypes``
    into the on-disk cache, in ``jobs`` processes at once, with a progress bar. Returns the number
    of (target, dtype, operator) combinations done."""
    from tqdm import tqdm
    todo = tasks(targets, dtypes, names or list(registry.BY_NAME))
    where = numba.config.CACHE_DIR or "__pycache__ folders beside the kernel sources"
    out(f"numba_droi warmup: {len(todo)} operator x dtype x target combinations into {where}")
    start = time.perf_counter()
    compiled = set()
    with tqdm(total=len(todo), unit="op", desc="compiling") as bar:
        if jobs <= 1:
            for task in todo:
                bar.set_postfix_str(" ".join(task))
                compiled.update(compile_operator(*task))
                bar.update()
        else:
            # Processes that compile a function shared by two operators take turns (a file lock),
            # and the second loads what the first saved.
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
                for kernels in pool.map(_compile_task, todo):
                    compiled.update(kernels)
                    bar.update()
    out(f"done in {time.perf_counter() - start:.1f} s: {len(compiled)} kernels compiled, the rest "
        "loaded from the cache; later processes load them all")
    return len(todo)


def _compile_task(task):
    return compile_operator(*task)


def default_jobs():
    """One process per core (compiling is single-threaded), at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))
