"""``python -m numba_droi check`` and ``info``: every operator's gradient checked on a target, and what
this installation runs on."""
import contextlib
import importlib.metadata
import platform

import numba
import numpy as np
import scipy

from . import __version__, _backend, demo, registry
from .gradcheck import GradcheckError


def check(target=None, names=None, out=print):
    """Check each operator's backward (of ``names``; default: all) against finite differences of its
    forward on ``target`` ('cpu' or 'cuda'; default: the GPU when there is one), in float64 at the
    demo's small case, and print a table; True when all pass."""
    target = target or ("cuda" if _backend.gpu_available() else "cpu")
    gpu = target == "cuda" and not _backend.SIMULATED
    xp = _backend.cupy if gpu else np
    device = "simulator" if target == "cuda" and not gpu else ("gpu" if gpu else "cpu")
    out(f"numba_droi check on the {target} target ({device}): float64 backward against finite differences")
    header = ("operator", "inputs", "result", "detail")
    rows = []
    with _backend.target(target) if device == "simulator" else contextlib.nullcontext():
        for name in names or registry.BY_NAME:
            operator = registry.BY_NAME[name]
            example = operator.example(np.random.default_rng(0), np.float64, **demo.SIZES["gradcheck"])
            arrays = [example.arrays[name] for name in operator.wanted(example.arrays)]
            try:
                demo.gradcheck_example(operator, example, xp.asarray)
                result, detail = "pass", ""
            except GradcheckError as error:
                result, detail = "FAIL", str(error)
            except Exception as error:  # an operator that raises fails its row; the others still run
                result, detail = "FAIL", f"{type(error).__name__}: {error}"
            rows.append((name, ",".join("x".join(map(str, a.shape)) for a in arrays), result, detail))
    print_table(header, rows, out)
    return all(row[2] == "pass" for row in rows)


def info(out=print):
    """Print the versions of numba_droi and of what it runs with, the targets, the GPU and threads."""
    facts = [("numba_droi", __version__), ("python", platform.python_version()),
             ("numba", numba.__version__), ("numba-cuda", _version_of("numba-cuda")),
             ("numpy", np.__version__), ("scipy", scipy.__version__),
             ("cupy", _backend.cupy.__version__ if _backend.cupy is not None else "not installed")]
    facts += [(name, _version_of(name)) for name in ("torch", "torchvision", "jax")]
    facts += [("targets", ", ".join(_backend.available_targets())),
              ("CUDA simulator", "on (NUMBA_ENABLE_CUDASIM=1)" if _backend.SIMULATED else "off")]
    gpu = _backend.gpu_description()
    facts += [(f"GPU {key}", value) for key, value in gpu.items()] if gpu else [("GPU", "none")]
    facts += [("cpu threads", f"{_backend.get_num_threads()} (NUMBA_NUM_THREADS="
                              f"{numba.config.NUMBA_NUM_THREADS}; numba_droi.set_num_threads)"),
              ("kernel cache", numba.config.CACHE_DIR or "__pycache__ next to the kernel sources")]
    width = max(len(key) for key, _ in facts)
    for key, value in facts:
        out(f"{key.ljust(width)}  {value}")


def _version_of(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def print_table(header, rows, out=print):
    """Rows of strings in left-aligned columns under ``header`` and a rule."""
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths)] + rows:
        out("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
