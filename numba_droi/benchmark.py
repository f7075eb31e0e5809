"""The benchmark cases: every operator at a detection-sized case, side by side with a peer, and the
measuring of forward and forward+backward times (``python -m numba_droi bench``,
``experiments/bench.py``)."""
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np

import numba_droi
from numba_droi import _backend, demo, registry
from numba_droi import functional as F
from numba_droi.autograd import Tensor


def torchvision_installed():
    return importlib.util.find_spec("torchvision") is not None


class Setting:
    """Where the cases run and against what. ``target`` 'cpu': NumPy arrays; 'cuda': CuPy arrays on
    the GPU (NumPy arrays on the simulated target under NUMBA_ENABLE_CUDASIM=1, for tests), torch
    tensors on the GPU. ``torchvision``: compare with torchvision's operators (it must be installed);
    else operators without a peer of our own are timed alone. ``torch``: torch for peers written in
    PyTorch (implied by ``torchvision``). torch runs on as many threads as numba."""

    def __init__(self, target="cpu", torchvision=False, torch=False):
        self.target = target
        self.gpu = target == "cuda" and not _backend.SIMULATED
        self.torch = self.torchvision = None
        if torchvision or torch:
            import torch as torch_module
            self.torch = torch_module
            torch_module.set_num_threads(_backend.get_num_threads())
        if torchvision:
            import torchvision as torchvision_module
            self.torchvision = torchvision_module

    def array(self, array):
        """A NumPy array as an array of this target."""
        return _backend.cupy.asarray(array) if self.gpu else array

    def peer_tensor(self, array):
        """A NumPy array as a torch tensor on this target's device."""
        return self.torch.from_numpy(array).to("cuda" if self.target == "cuda" else "cpu")

    def context(self):
        return _backend.target("cuda") if self.target == "cuda" and not self.gpu else contextlib.nullcontext()

    def synchronize(self):
        if self.gpu:
            _backend.cupy.cuda.get_current_stream().synchronize()
            if self.torch is not None:
                self.torch.cuda.synchronize()


class Case:
    """One benchmark row pair: ``ours(*tensors)`` on Tensors made of ``inputs`` (the arrays that get
    gradients), and the ``peer`` named ``peer_name`` on ``peer_inputs`` (default: ``inputs``) as torch
    tensors when the peer is written in PyTorch (``torch_peer``; by default when it is torchvision),
    else as our Tensors."""

    def __init__(self, inputs, ours, peer_name=None, peer=None, peer_inputs=None, torch_peer=None):
        self.inputs, self.ours = inputs, ours
        self.peer_name, self.peer = peer_name, peer
        self.peer_inputs = inputs if peer_inputs is None else peer_inputs
        self.torch_peer = peer_name == "torchvision" if torch_peer is None else torch_peer


def case(name, setting, boxes=512):
    """The benchmark ``Case`` of operator ``name`` (its record's detection-sized case, with ``boxes``
    boxes where it takes boxes): against torchvision's operator when ``setting`` asks for it, else
    against our own operator that the record names as the peer (the deformable operators' offset-free
    counterparts), else alone."""
    operator = registry.BY_NAME[name]
    example, peer = operator.benchmark(np.random.default_rng(0), boxes)
    inputs, ours = demo.example_call(operator, example, setting.array, timed=True)
    differentiable = operator.timed(example.arrays)
    if peer is None:
        return Case(inputs, ours)
    peer_differentiable = [key for key in peer.arrays if key in differentiable]
    peer_inputs = [example.arrays[key] for key in peer_differentiable]
    given = dict(example.arrays, **peer.extra)
    if setting.torchvision is not None:
        function = getattr(setting.torchvision.ops, peer.name)
        peer_fixed = {key: setting.peer_tensor(given[key]) for key in peer.arrays}
        peer_name = "torchvision"
    elif peer.name != name and peer.name in registry.BY_NAME:
        function = getattr(F, peer.name)
        peer_fixed = {key: setting.array(given[key]) for key in peer.arrays}
        peer_name = f"numba_droi {peer.name}"
    else:
        return Case(inputs, ours)

    def peer_call(*tensors):  # positionally: torchvision names the boxes ``boxes``
        arrays = dict(peer_fixed, **dict(zip(peer_differentiable, tensors)))
        return function(*(arrays[key] for key in peer.arrays), **peer.options)
    return Case(inputs, ours, peer_name, peer_call, peer_inputs)


def _timed(fn, setting):
    setting.synchronize()
    start = time.perf_counter()
    fn()
    setting.synchronize()
    return time.perf_counter() - start


def _peer_tensors(case, setting):
    if case.torch_peer:
        return [setting.peer_tensor(a).requires_grad_(True) for a in case.peer_inputs]
    return [Tensor(setting.array(a), requires_grad=True) for a in case.peer_inputs]


def _detached(tensors):
    return [t.detach() for t in tensors]


def _without_grads(tensors):
    """``tensors`` with their ``.grad`` cleared, as a training step's ``zero_grad()`` leaves them: each
    forward+backward then times the operator, not the accumulation of its gradient into the last."""
    for t in tensors:
        t.grad = None
    return tensors


def measure(names, repeats, setting=None):
    """Rows ``(operator, pass, ours ms, peer name, peer ms)``: medians over ``repeats`` of each
    operator's forward and forward+backward, and of its peer's, on ``setting`` (default: cpu, no
    torchvision)."""
    setting = setting or Setting()
    with setting.context():
        return [row for name in names for row in _measure(name, repeats, setting)]


def _measure(name, repeats, setting):
    case_ = case(name, setting)
    medians = timed_medians(case_calls(case_, setting), repeats, setting)
    rows = [(name, direction, medians[direction, "ours"], case_.peer_name,
             medians.get((direction, "peer"))) for direction in ("forward", "forward+backward")]
    print(f"  {name}: done", file=sys.stderr, flush=True)
    return rows


# A child that keeps one core busy, until ``sys.argv[1]`` seconds have passed or its parent has gone.
_SPIN_SCRIPT = """
import os, sys, time
parent, end = os.getppid(), time.monotonic() + float(sys.argv[1])
while time.monotonic() < end and os.getppid() == parent:
    pass
"""


@contextlib.contextmanager
def busy_cores(processes=None, seconds=600.0):
    """Inside the block, ``processes`` other processes (default: one per core) each keep a core busy,
    as a data loader's workers do beside a training step; they stop when the block ends, and by
    themselves after ``seconds`` or if this process dies."""
    processes = os.cpu_count() if processes is None else processes
    children = [subprocess.Popen([sys.executable, "-c", _SPIN_SCRIPT, str(seconds)])
                for _ in range(processes)]
    try:
        yield children
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait()


def measure_quiet_and_busy(names, repeats, setting=None, processes=None):
    """Rows ``(operator, pass, peer name, ours quiet ms, peer quiet ms, ours busy ms, peer busy ms)``:
    ``measure``'s medians of each operator, then again while ``busy_cores(processes)`` keeps the cores
    busy (an operator at a time, so that both figures come from about the same machine state)."""
    setting = setting or Setting()
    rows = []
    with setting.context():
        for name in names:
            quiet = _measure(name, repeats, setting)
            with busy_cores(processes):
                busy = _measure(name, repeats, setting)
            rows += [(name, direction, peer_name, ours, peer, busy_row[2], busy_row[4])
                     for (name, direction, ours, peer_name, peer), busy_row in zip(quiet, busy)]
    return rows


def busy_table(rows, threads, processes, setting=None):
    """``measure_quiet_and_busy``'s rows as a markdown table: each side's times quiet and busy, the
    ratios ours / peer, and how much the ratio grew under load (busy ratio / quiet ratio)."""
    lines = [f"| operator | pass | peer | quiet: ours (ms) | peer (ms) | ratio | busy ({processes} spinning "
             "processes): ours (ms) | peer (ms) | ratio | busy ratio / quiet ratio |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, direction, peer_name, ours, peer, ours_busy, peer_busy in rows:
        if peer is None:
            continue
        quiet_ratio, busy_ratio = ours / peer, ours_busy / peer_busy
        lines.append(f"| {name} | {direction} | {peer_name} | {ours:.1f} | {peer:.1f} | {quiet_ratio:.2f} "
                     f"| {ours_busy:.1f} | {peer_busy:.1f} | {busy_ratio:.2f} "
                     f"| {busy_ratio / quiet_ratio:.2f} |")
    return "\n".join(lines) + "\n\n" + machine_and_versions(threads, setting) + "\n"


def case_calls(case, setting):
    """Callables that each run ``case`` once: ``{(pass, side): fn}``, with pass ``"forward"`` or
    ``"forward+backward"`` and side ``"ours"`` or, when the case has a peer, ``"peer"``."""
    xs = [Tensor(setting.array(a), requires_grad=True) for a in case.inputs]
    out = case.ours(*xs)
    grad = _backend.array_module(out.data).ones(out.shape, out.dtype)
    calls = {
        ("forward", "ours"): lambda: case.ours(*_detached(xs)),
        ("forward+backward", "ours"): lambda: case.ours(*_without_grads(xs)).backward(grad),
    }
    if case.peer is not None:
        peer_xs = _peer_tensors(case, setting)
        if case.torch_peer:
            peer_grad = setting.torch.ones_like(case.peer(*peer_xs))
            calls[("forward", "peer")] = lambda: _no_grad(setting.torch, case.peer, _detached(peer_xs))
        else:
            peer_grad = _backend.array_module(out.data).ones(case.peer(*peer_xs).shape, out.dtype)
            calls[("forward", "peer")] = lambda: case.peer(*_detached(peer_xs))
        calls[("forward+backward", "peer")] = lambda: case.peer(*_without_grads(peer_xs)).backward(
            peer_grad)
    return calls


def timed_medians(calls, repeats, setting, warm_up=None):
    """``{key: median ms}`` of each of ``calls`` over ``repeats``, after one warm-up call of each of
    those whose keys are in ``warm_up`` (default: all)."""
    times = {key: [] for key in calls}
    for key, fn in calls.items():
        if warm_up is None or key in warm_up:
            fn()  # compile and warm up
    for _ in range(repeats):  # interleaved: both sides see the same machine state
        for key, fn in calls.items():
            times[key].append(_timed(fn, setting))
    return {key: 1e3 * statistics.median(values) for key, values in times.items()}


def _rss_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def peak_mib(fn, warm_up=None):
    """MiB ``fn()`` lifts this process's resident set by at its peak (Linux's VmHWM, reset through
    /proc/self/clear_refs), after a warm-up call of ``warm_up`` (default: ``fn``; its results are freed
    before ``fn`` runs)."""
    import gc
    (warm_up or fn)()  # compile, load, warm up
    gc.collect()
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak resident set size starts again from the current one
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def peaks_in_fresh_processes(script, keys):
    """``{key: MiB}``: ``python script --peak *key`` for each of ``keys`` (tuples of strings), each in a
    fresh process that prints its ``peak_mib`` as the last line; large allocations through mmap, so
    that freed memory leaves the resident set. With a tqdm bar."""
    from tqdm import tqdm
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    peaks = {}
    for key in tqdm(keys, desc="memory", file=sys.stderr):
        child = subprocess.run([sys.executable, script, "--peak", *key], env=environment,
                               capture_output=True, text=True, check=True)
        peaks[key] = json.loads(child.stdout.strip().splitlines()[-1])
    return peaks


def _no_grad(torch, fn, xs):
    with torch.no_grad():
        return fn(*xs)


def table(rows, threads, setting=None):
    """``measure``'s rows as a markdown table, with our backward's time over our forward's (the
    forward+backward's time less the forward's) on each forward+backward row."""
    forward = {name: ours for name, direction, ours, _, _ in rows if direction == "forward"}
    lines = ["| operator | pass | numba_droi (ms) | peer | peer (ms) | ratio | backward / forward |",
             "|---|---|---:|---|---:|---:|---:|"]
    for name, direction, ours, peer_name, peer in rows:
        peer_text = f"{peer:.1f}" if peer is not None else "n/a"
        ratio = f"{ours / peer:.2f}" if peer is not None else "n/a"
        backward = (f"{(ours - forward[name]) / forward[name]:.2f}"
                    if direction == "forward+backward" and name in forward else "")
        lines.append(f"| {name} | {direction} | {ours:.1f} | {peer_name or 'n/a'} | {peer_text} | {ratio} "
                     f"| {backward} |")
    return "\n".join(lines) + "\n\n" + machine_and_versions(threads, setting) + "\n"


def machine_and_versions(threads, setting=None):
    """The line under a benchmark table: the machine, the threads and the versions measured."""
    setting = setting or Setting()
    torch, torchvision = setting.torch, setting.torchvision
    versions = (f"numba_droi {numba_droi.__version__}, numba {numba.__version__}, numpy {np.__version__}"
                + (f", torch {torch.__version__}" if torch else "")
                + (f", torchvision {torchvision.__version__}" if torchvision else ""))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads"
    if setting.gpu:
        machine += f"; {_backend.gpu_description()['name']}, cupy {_backend.cupy.__version__}"
    return f"Machine: {machine}. Versions: {versions}."


# -- first-call latency ----------------------------------------------------------------------------

# What a fresh process runs for ``latency`` and ``first_calls_at_once``: ``import numba_droi``, then
# the first call of each operator named, for each dtype, in turn, each timed; prints one line of JSON.
_FIRST_CALL_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import numba_droi
imported = time.perf_counter() - start
from numba_droi import benchmark
target, dtypes, names = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
calls = [dict(benchmark.first_call(name, target, dtype), name=name, dtype=dtype)
         for dtype in dtypes for name in names]
print(json.dumps(dict(calls=calls, import_s=imported, total_s=time.perf_counter() - start)))
"""


def first_call(name, target="cpu", dtype="float32"):
    """Time the first forward+backward of operator ``name`` in this process, at the demo's small
    ``dtype`` case (so that the time is that of compiling or loading its kernels, not of computing):
    ``{"first_call_s": seconds, "setup_s": seconds, "compiled": names of the kernels compiled rather
    than loaded}``. On the cpu target, ``setup_s`` is the part of the first call spent setting up
    Numba's cpu target (once per process, whichever function is compiled or loaded first)."""
    setting = Setting(target)
    xp = _backend.cupy if setting.gpu else np
    operator = registry.BY_NAME[name]
    arrays, call = demo.example_call(
        operator, operator.example(np.random.default_rng(0), np.dtype(dtype), **demo.SIZES["gradcheck"]),
        setting.array)
    compiled_before = set(_compiled_kernels())
    with setting.context():
        xs = [Tensor(setting.array(a), requires_grad=True) for a in arrays]
        setting.synchronize()
        start = time.perf_counter()
        if target == "cpu":  # what the call would do first: counted in its time, and reported apart
            numba.core.registry.cpu_target.typing_context.refresh()
            numba.core.registry.cpu_target.target_context.refresh()
        setup = time.perf_counter() - start
        output = call(*xs)
        output.backward(xp.ones(output.shape, output.dtype))
        setting.synchronize()
        seconds = time.perf_counter() - start
    return {"first_call_s": seconds, "setup_s": setup if target == "cpu" else None,
            "compiled": sorted(set(_compiled_kernels()) - compiled_before)}


def _compiled_kernels():
    """Names of the cpu functions and cuda kernels this process compiled (a miss of the on-disk
    cache)."""
    kernels = {name: cuda_kernel.kernel for name, cuda_kernel in _backend.CUDA_KERNELS.items()}
    kernels.update((name.rsplit(".", 1)[-1], function) for name, function in _backend.CPU_FUNCTIONS.items())
    return sorted(name for name, kernel in kernels.items()
                  if getattr(getattr(kernel, "stats", None), "cache_misses", None))


def latency(names, target="cpu", dtypes=("float32",)):
    """For each operator and dtype, its first call in a fresh process with an empty on-disk kernel
    cache (cold) and again with the cache that call filled (warm): rows ``(operator, dtype, import s,
    cold s, warm s, Numba's set-up s (part of warm s; None on cuda), kernels compiled cold, kernels
    compiled warm)``."""
    from tqdm import tqdm
    rows = []
    for dtype, name in tqdm([(dtype, name) for dtype in dtypes for name in names], desc="first calls",
                            unit="op"):
        with tempfile.TemporaryDirectory(prefix="numba_droi_cache_") as cache:
            cold = first_calls_in_children([name], target, [dtype], cache)[0]
            warm = first_calls_in_children([name], target, [dtype], cache)[0]
        cold_call, warm_call = cold["calls"][0], warm["calls"][0]
        rows.append((name, dtype, warm["import_s"], cold_call["first_call_s"], warm_call["first_call_s"],
                     warm_call["setup_s"], cold_call["compiled"], warm_call["compiled"]))
    return rows


def first_calls_in_children(names, target, dtypes, cache, processes=1):
    """Start ``processes`` fresh processes at once on the on-disk cache ``cache``, each making the
    first call of every operator of ``names`` for every dtype; their reports (``calls``, ``import_s``
    and ``total_s``, from import to the last call)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(numba_droi.__file__)))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    environment = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=path)
    arguments = [sys.executable, "-c", _FIRST_CALL_SCRIPT, target, ",".join(dtypes), ",".join(names)]
    children = [subprocess.Popen(arguments, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(processes)]
    reports = []
    for child in children:
        out, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"first calls of {names} failed in a fresh process:\n{err[-3000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def latency_table(rows, target):
    lines = ["| operator | dtype | import numba_droi (s) | first call, cold cache (s) "
             "| first call, warm cache (s) | of which Numba's set-up (s) | kernels compiled, cold "
             "| kernels compiled, warm |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, dtype, imported, cold, warm, setup, compiled_cold, compiled_warm in rows:
        setup_text = "n/a" if setup is None else f"{setup:.2f}"
        lines.append(f"| {name} | {dtype} | {imported:.2f} | {cold:.2f} | {warm:.2f} | {setup_text} "
                     f"| {len(compiled_cold)} | {', '.join(compiled_warm) or 'none'} |")
    size = "x".join(map(str, demo.SIZES["gradcheck"].values()))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if target == "cuda" and _backend.gpu_available():
        machine += f", {_backend.gpu_description()['name']}"
    return ("\n".join(lines) + f"\n\nTarget: {target}. Each first call (forward+backward, the demo's "
            f"(batch, channels, height, width, boxes) = {size} case) runs in a fresh process after "
            "`import numba_droi`; cold: an empty NUMBA_CACHE_DIR, warm: the same directory again. "
            "Numba's set-up: the part of the warm first call spent setting up Numba's cpu target, which "
            "a process pays once, at its first compiled or cached function. "
            f"Machine: {machine}, {_backend.get_num_threads()} threads. Versions: numba_droi "
            f"{numba_droi.__version__}, numba {numba.__version__}, numpy {np.__version__}.\n")
