"""The cuda kernels as PTX, and the GPU resources ``ptxas`` gives them, found without a GPU.

Compiling needs the CUDA simulator off (``NUMBA_ENABLE_CUDASIM=0`` before Numba is imported); reading
PTX and running ``ptxas`` work anywhere. ``ptxas`` must come from the CUDA release whose NVVM wrote the
PTX (its header names that release): ``find_ptxas`` looks for one. Used by the PTX tests and by
``experiments/ptx_report.py``.
"""
import os
import re
import shutil
import subprocess

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
