"""numba_droi: forward and backward kernels for RoI feature extraction and deformable operators,
written once in Python and compiled by Numba for the CPU and for CUDA.

Array level (NumPy or CuPy in, the same kind out): ``roi_align`` and ``roi_align_backward``;
``deform_conv2d`` and ``deform_conv2d_backward`` (their im2col pieces in ``numba_droi.ops``).
Differentiable level: ``numba_droi.functional`` on ``Tensor`` objects, with ``Function`` for your
own operations and ``gradcheck`` to test them. Training: ``numba_droi.nn`` (modules) and
``numba_droi.optim`` (SGD, Adam).
"""
from . import functional, nn, optim
from ._backend import available_targets, target
from .autograd import Function, Tensor, no_grad
from .gradcheck import GradcheckError, gradcheck
from .ops import (deform_conv2d, deform_conv2d_backward, deform_psroi_pool, deform_psroi_pool_backward,
                  deform_roi_pool, deform_roi_pool_backward, roi_align, roi_align_backward)

__version__ = "0.1.0"
__all__ = ["Function", "GradcheckError", "Tensor", "available_targets", "functional", "gradcheck",
           "nn", "no_grad", "optim", "roi_align", "roi_align_backward", "target",
           "deform_psroi_pool", "deform_psroi_pool_backward", "deform_roi_pool", "deform_roi_pool_backward",
           "deform_conv2d", "deform_conv2d_backward"]
