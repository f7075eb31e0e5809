"""The cuda kernels as PTX, and the GPU resources ``ptxas`` gives them, found without a GPU.

Compiling needs the CUDA simulator off (``NUMBA_ENABLE_CUDASIM=0`` before Numba is imported); reading
PTX and running ``ptxas`` work anywhere. ``ptxas`` must come from the CUDA release whose NVVM wrote the
PTX (its header names that release): ``find_ptxas`` looks for one. ``memory_traffic`` estimates the
bytes each kernel reads and writes per output element, on the simulator instead
(``NUMBA_ENABLE_CUDASIM=1``). Used by the PTX tests and by ``experiments/ptx_report.py``.
"""
import collections
import contextlib
import os
import re
import shutil
import subprocess

import numpy as np

from . import _backend, registry

DTYPES = ("float32", "float64")
FORWARD_REGISTER_TARGET = 64  # four 256-thread blocks per SM of 64K registers: half occupancy


def ptx_file_name(name, dtype, cc):
    return f"{name}.{dtype}.sm_{cc}.ptx"


def is_forward(name):
    """Kernels that compute an operator's output (the others compute gradients)."""
    return "backward" not in name and "grad" not in name


def operator_kernels():
    """``{cuda kernel name: operator names}`` for every cuda kernel of every operator of the registry,
    in the registry's order; a kernel that several operators run names them all (``"ms_deform_attn,
    dcnv3, dcnv4"``)."""
    kernels = {}
    for operator in registry.OPERATORS:
        for kernel in sorted(operator.cuda_kernels):
            kernels[kernel] = f"{kernels[kernel]}, {operator.name}" if kernel in kernels else operator.name
    return kernels


def compile_all(out_dir, capabilities, progress=None):
    """Write the PTX of every operator's cuda kernels, for every float dtype and capability (``"80"``,
    ...), into ``out_dir``; returns the file names. ``progress(message)`` is called before each
    compilation."""
    names = []
    for name in operator_kernels():
        for dtype in DTYPES:
            for cc in capabilities:
                if progress:
                    progress(f"compiling {name} {dtype} sm_{cc}")
                ptx = _backend.kernel_ptx(name, dtype, (int(cc[:-1]), int(cc[-1])))
                names.append(ptx_file_name(name, dtype, cc))
                with open(os.path.join(out_dir, names[-1]), "w") as f:
                    f.write(ptx)
    return names


def f64_instructions(ptx):
    """The lines of ``ptx`` that operate on float64 values (none are expected in float32 kernels)."""
    return [line.strip() for line in ptx.splitlines() if ".f64" in line]


def cuda_release(text):
    """The CUDA release (``"12.9"``) named by a PTX header or by ``ptxas --version``, else None."""
    match = re.search(r"Cuda compilation tools, release (\d+\.\d+)", text)
    return match and match.group(1)


def ptxas_version(ptxas):
    """The version line of ``ptxas`` ("Cuda compilation tools, release 12.9, V12.9.86")."""
    output = subprocess.run([ptxas, "--version"], capture_output=True, text=True, check=True).stdout
    return next(line for line in output.splitlines() if "release" in line).strip()


def find_ptxas(ptx):
    """A ``ptxas`` of the CUDA release that wrote ``ptx``, else None.

    Looks where CUDA's wheels put it (``cuda.pathfinder``, which also finds the NVVM wheel Numba
    compiles with), then under ``CUDA_HOME``/``CUDA_PATH``, then on ``PATH``: a system toolkit of
    another release may be first on ``PATH``, and it would assemble the same PTX differently.
    """
    candidates = []
    try:
        from cuda.pathfinder import find_nvidia_binary_utility
        candidates.append(find_nvidia_binary_utility("ptxas"))
    except ImportError:
        pass
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            candidates.append(os.path.join(os.environ[variable], "bin", "ptxas"))
    candidates.append(shutil.which("ptxas"))
    wanted = cuda_release(ptx)
    for ptxas in candidates:
        if ptxas and os.path.isfile(ptxas) and cuda_release(ptxas_version(ptxas)) == wanted:
            return ptxas
    return None


def ptxas_resources(ptxas, ptx_path, cc, max_registers=None):
    """What ``ptxas -v`` reports for the PTX file at ``ptx_path`` on ``sm_<cc>`` (with at most
    ``max_registers`` per thread if given): a dict of ``registers`` (per thread), ``spill_stores``,
    ``spill_loads``, ``stack_frame`` (local memory per thread) and ``shared`` bytes. Registers are the
    largest of any function in the file, bytes summed (the kernels inline every call, so there is one)."""
    limit = [f"-maxrregcount={max_registers}"] if max_registers else []
    result = subprocess.run([ptxas, "-v", f"-arch=sm_{cc}", *limit, "-o", os.devnull, ptx_path],
                            capture_output=True, text=True, check=True)
    log = result.stdout + result.stderr

    def numbers(pattern):
        return [int(value) for value in re.findall(pattern, log)]

    registers = numbers(r"Used (\d+) registers")
    if not registers:
        raise ValueError(f"no register count in the ptxas output for {ptx_path}:\n{log}")
    return {"registers": max(registers),
            "spill_stores": sum(numbers(r"(\d+) bytes spill stores")),
            "spill_loads": sum(numbers(r"(\d+) bytes spill loads")),
            "stack_frame": sum(numbers(r"(\d+) bytes stack frame")),
            "shared": sum(numbers(r"(\d+) bytes smem"))}


# -- memory traffic, counted on the simulator -------------------------------------------------------

@contextlib.contextmanager
def counting_traffic():
    """Count, while inside, the bytes that simulated cuda kernels read and write: ``{"read": bytes,
    "written": bytes}``, each array element a thread reads or writes counted at its size (an atomic
    add as one read and one write). That is the traffic the threads request, before any cache: what a
    GPU roofline judges a kernel by. Needs the simulator."""
    if not _backend.SIMULATED:
        raise RuntimeError("counting memory traffic needs the CUDA simulator (NUMBA_ENABLE_CUDASIM=1)")
    from numba.cuda.simulator import kernelapi
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    counts = collections.Counter()
    get, put, atomic_add = FakeCUDAArray.__getitem__, FakeCUDAArray.__setitem__, kernelapi.FakeCUDAAtomic.add

    def counted_get(array, index):
        value = get(array, index)
        if not isinstance(value, FakeCUDAArray):  # an element, not a view
            counts["read"] += array._ary.itemsize
        return value

    def counted_put(array, index, value):
        counts["written"] += array._ary.itemsize
        put(array, index, value)

    def counted_atomic_add(self, array, index, value):
        counts["read"] += array._ary.itemsize
        counts["written"] += array._ary.itemsize
        with kernelapi.addlock:
            old = array._ary[index]
            array._ary[index] += value
        return old

    FakeCUDAArray.__getitem__, FakeCUDAArray.__setitem__ = counted_get, counted_put
    kernelapi.FakeCUDAAtomic.add = counted_atomic_add
    try:
        yield counts
    finally:
        FakeCUDAArray.__getitem__, FakeCUDAArray.__setitem__ = get, put
        kernelapi.FakeCUDAAtomic.add = atomic_add


def memory_traffic(names=None, example=None):
    """``{kernel: (operator, bytes read, bytes written)}`` per element of the operator's output, for
    every cuda kernel of the operators ``names`` (default: all), each counted (``counting_traffic``)
    at its first launch while its operator runs forward and every gradient, atomic and deterministic,
    on the simulator: on ``example(operator)`` (default: the record's float32 example at the demo's
    simulator size, with three boxes inside the map). A kernel that several operators run is counted
    with the first."""
    from . import deterministic, demo, ops
    if example is None:
        def example(operator):
            inside = {"boxes": (registry.INSIDE,) * 3} if "rois" in operator.arrays else {}
            return operator.example(np.random.default_rng(0), np.float32,
                                    **dict(demo.simulator_size(operator), **inside))
    traffic = {}
    launch = _backend.launch
    for name in names or registry.BY_NAME:
        operator = registry.BY_NAME[name]
        case = example(operator)
        size = []

        def counted_launch(kernel, *args):
            with counting_traffic() as counts:
                launch(kernel, *args)
            if kernel.__name__ not in traffic:
                traffic[kernel.__name__] = (operator.name, counts["read"], counts["written"], size)
        _backend.launch = counted_launch
        try:
            with _backend.target("cuda"):
                output = operator.call(ops, case.arrays, case.options)
                size.append(output.size)
                grad_output = np.ones(output.shape, output.dtype)
                operator.vjp(ops, grad_output, case.arrays, case.options)
                with deterministic():
                    operator.vjp(ops, grad_output, case.arrays, case.options)
        finally:
            _backend.launch = launch
    return {kernel: (name, read / max(size[0], 1), written / max(size[0], 1))
            for kernel, (name, read, written, size) in traffic.items()}
