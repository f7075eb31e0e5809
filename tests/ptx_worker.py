"""Compile every cuda kernel of numba_droi to PTX, without a GPU, and save each as a file.

Run in its own process (the test suite runs with the CUDA simulator on, which cannot compile):
    python tests/ptx_worker.py OUT_DIR CC [CC ...]     (CC as 70, 90, ...)
"""
import os
import sys

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from numba_droi import ptx  # noqa: E402

if __name__ == "__main__":
    ptx.compile_all(sys.argv[1], sys.argv[2:])
