"""numba_droi: forward and backward kernels for RoI feature extraction and deformable operators,
written once in Python and compiled by Numba for the CPU and for CUDA.

Array level (NumPy or CuPy in, the same kind out): ``roi_align``, ``roi_pool``, ``ps_roi_pool``,
``ps_roi_align`` and their ``*_backward`` (``roi_pool_with_argmax`` gives what ``roi_pool_backward``
needs).
Differentiable level: ``numba_droi.functional`` on ``Tensor`` objects, with ``Function`` for your
own operations and ``gradcheck`` to test them.
"""
from . import functional
from ._backend import available_targets, target
from .autograd import Function, Tensor, no_grad
from .gradcheck import GradcheckError, gradcheck
from .ops import roi_align, roi_align_backward
from .ops import roi_pool, roi_pool_backward, roi_pool_with_argmax
from .ops import ps_roi_align, ps_roi_align_backward, ps_roi_pool, ps_roi_pool_backward

__version__ = "0.1.0"
__all__ = ["Function", "GradcheckError", "Tensor", "available_targets", "functional", "gradcheck",
           "no_grad", "roi_align", "roi_align_backward", "target",
           "roi_pool", "roi_pool_backward", "roi_pool_with_argmax",
           "ps_roi_pool", "ps_roi_pool_backward", "ps_roi_align", "ps_roi_align_backward"]
