"""The main job: run every operator forward and backward on a target, check its gradients by finite
differences, and print a table of results and timings."""
import contextlib
import functools
import time

import numpy as np

from . import _backend, functional, registry
from .autograd import Tensor
from .gradcheck import gradcheck

# The examples' sizes: the gradient check's, and on the CUDA simulator, which runs a kernel thousands
# of times slower, the timing's and the gradient check's (elsewhere the timing runs each operator's
# detection-sized benchmark case).
SIZES = {"gradcheck": dict(batch=1, channels=2, height=9, width=10, boxes=3),
         "simulator": dict(batch=1, channels=2, height=6, width=7, boxes=2)}


def simulator_size(operator, sizes=SIZES["simulator"]):
    """``example``'s size arguments for ``operator`` on the simulator: ``sizes``, less what its record
    makes smaller there."""
    return dict(sizes, **dict(operator.simulated))


def example_call(operator, example, to_target=np.asarray, timed=False):
    """``(inputs, call)``: the NumPy arrays of ``example`` that get gradients (those that are timed, if
    ``timed``: ``Operator.timed``), and ``call(*tensors)``, ``functional.<operator>`` on Tensors of them
    and on the example's other arrays put on the target by ``to_target``."""
    differentiable = operator.timed(example.arrays) if timed else operator.wanted(example.arrays)
    fixed = {name: None if a is None else to_target(a) for name, a in example.arrays.items()
             if name not in differentiable}

    def call(*tensors):
        return getattr(functional, operator.name)(**fixed, **dict(zip(differentiable, tensors)),
                                                  **example.options)
    return [example.arrays[name] for name in differentiable], call


def gradcheck_example(operator, example, to_target=np.asarray, **options):
    """``gradcheck`` of ``functional.<operator>`` on ``example``'s differentiable arrays (put on the
    target by ``to_target``), the elements that the record's ``no_derivative`` names held constant."""
    arrays, call = example_call(operator, example, to_target)
    constant = {}
    for position, name in enumerate(operator.wanted(example.arrays)):
        columns = [column for array, column in operator.no_derivative if array == name]
        if columns:
            constant[position] = np.zeros(arrays[position].shape, bool)
            constant[position][:, columns] = True
    return gradcheck(call, [Tensor(to_target(a), requires_grad=True) for a in arrays], constant=constant,
                     **options)


def timing_example(operator, device, rng):
    """The example the demo times: the benchmark's detection-sized case, small on the simulator."""
    if device == "simulator":
        return operator.example(rng, np.float32, **simulator_size(operator))
    return operator.benchmark(rng)[0]


COLUMNS = (("operator", 18), ("input", 14), ("output", 16), ("first call s", 12), ("forward ms", 10),
           ("fwd+bwd ms", 10), ("gradcheck", 9))


def run(target=None, repeats=5, out=None):
    """Run the demo on ``target`` ('cpu' or 'cuda'; default: the GPU when there is one), printing
    (``out``, default ``print`` flushed at once) each operator's row as it finishes. Returns True when
    every gradient check passed."""
    out = out or functools.partial(print, flush=True)
    target = target or ("cuda" if _backend.gpu_available() else "cpu")
    device = "simulator" if target == "cuda" and _backend.SIMULATED else (
        "gpu" if target == "cuda" else "cpu")
    to_target = _backend.cupy.asarray if device == "gpu" else np.asarray
    out(f"numba_droi demo on the {target} target ({device}); float32 timings, float64 gradient check")
    out("The first run compiles each operator's kernels (seconds each: the first call column) and caches "
        "them on disk; later runs load them (python -m numba_droi warmup compiles them all ahead).")
    out(_row([name for name, _ in COLUMNS]))
    out(_row(["-" * width for _, width in COLUMNS]))
    passed = True
    with _backend.target(target) if device == "simulator" else contextlib.nullcontext():
        for operator in registry.OPERATORS:
            rng = np.random.default_rng(0)
            arrays, call = example_call(operator, timing_example(operator, device, rng), to_target,
                                        timed=True)
            xs = [Tensor(to_target(a), requires_grad=True) for a in arrays]
            start = time.perf_counter()
            output = call(*xs)
            grad = _backend.array_module(output.data).ones(output.shape, output.dtype)
            output.backward(grad)
            _synchronize(device)
            first = time.perf_counter() - start
            forward = _median_ms(lambda: call(*(x.detach() for x in xs)), repeats, device)
            both = _median_ms(lambda: call(*xs).backward(grad), repeats, device)
            checked = gradcheck_example(operator, operator.example(rng, np.float64, **(
                simulator_size(operator) if device == "simulator" else SIZES["gradcheck"])), to_target,
                raise_exception=False)
            passed = passed and checked
            out(_row([operator.name, "x".join(map(str, arrays[0].shape)), "x".join(map(str, output.shape)),
                      f"{first:.2f}", f"{forward:.1f}", f"{both:.1f}", "pass" if checked else "FAIL"]))
    return passed


def _row(cells):
    return "  ".join(str(cell).ljust(width) for cell, (_, width) in zip(cells, COLUMNS)).rstrip()


def _median_ms(fn, repeats, device):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _synchronize(device):
    if device == "gpu":
        _backend.cupy.cuda.get_current_stream().synchronize()
