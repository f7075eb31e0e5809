"""numba_droi: forward and backward kernels for RoI feature extraction and deformable operators,
written once in Python and compiled by Numba for the CPU and for CUDA."""
from ._backend import available_targets, target
from .ops import roi_align, roi_align_backward

__version__ = "0.1.0"
__all__ = ["available_targets", "roi_align", "roi_align_backward", "target"]
