"""numba_droi: forward and backward kernels for RoI feature extraction and deformable operators,
written once in Python and compiled by Numba for the CPU and for CUDA.

Array level (NumPy or CuPy in, the same kind out): ``roi_align`` and ``roi_align_backward``;
``deform_conv2d`` and ``deform_conv2d_backward`` (their im2col pieces in ``numba_droi.ops``).
Differentiable level: ``numba_droi.functional`` on ``Tensor`` objects, with ``Function`` for your
own operations and ``gradcheck`` to test them.
"""
from . import functional
from ._backend import available_targets, target
from .autograd import Function, Tensor, no_grad
from .gradcheck import GradcheckError, gradcheck
from .ops import roi_align, roi_align_backward
from .ops import deform_conv2d, deform_conv2d_backward

__version__ = "0.1.0"
__all__ = ["Function", "GradcheckError", "Tensor", "available_targets", "functional", "gradcheck",
           "no_grad", "roi_align", "roi_align_backward", "target", "deform_conv2d",
           "deform_conv2d_backward"]
