"""Compile every cuda kernel of numba_droi to PTX, without a GPU, and save each as a file.

Run in its own process (the test suite runs with the CUDA simulator on, which cannot compile):
    python tests/ptx_worker.py OUT_DIR CC [CC ...]     (CC as 70, 90, ...)
"""
import os
import sys
from types import SimpleNamespace

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

import numba.cuda.dispatcher  # noqa: E402

# Compiling a kernel that calls device functions asks the driver for the current device's compute
# capability; without a GPU there is none, so stand in for it. Kernels are compiled for each CC below.
numba.cuda.dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(9, 0))

from numba import cuda  # noqa: E402

from numba_droi import _backend, kernels  # noqa: E402


def main(out_dir, *capabilities):
    kernels.import_all()
    for name, (kernel, spec) in _backend.CUDA_KERNELS.items():
        for dtype in ("float32", "float64"):
            for cc in capabilities:
                ptx, _ = cuda.compile_ptx(kernel.py_func, _backend.kernel_argument_types(spec, dtype),
                                          cc=(int(cc[:-1]), int(cc[-1])))
                with open(os.path.join(out_dir, f"{name}.{dtype}.sm_{cc}.ptx"), "w") as f:
                    f.write(ptx)


if __name__ == "__main__":
    main(*sys.argv[1:])
