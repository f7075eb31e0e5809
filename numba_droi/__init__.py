"""numba_droi: forward and backward kernels for RoI feature extraction and deformable operators,
written once in Python and compiled by Numba for the CPU and for CUDA.

Array level (NumPy or CuPy in, the same kind out): ``roi_align``, ``roi_pool``, ``ps_roi_pool``,
``ps_roi_align``, ``deform_roi_pool``, ``deform_psroi_pool``, ``deform_conv2d`` and their
``*_backward`` (``roi_pool_with_argmax`` gives what ``roi_pool_backward`` needs; the im2col pieces of
``deform_conv2d`` are in ``numba_droi.ops``).
Differentiable level: ``numba_droi.functional`` on ``Tensor`` objects, with ``Function`` for your
own operations and ``gradcheck`` to test them. Training: ``numba_droi.nn`` (modules) and
``numba_droi.optim`` (SGD, Adam).
"""
from . import functional, nn, optim
from ._backend import available_targets, target
from ._backend import are_deterministic_algorithms_enabled, deterministic, use_deterministic_algorithms
from .autograd import Function, Tensor, no_grad
from .gradcheck import GradcheckError, gradcheck
from .ops import (deform_conv2d, deform_conv2d_backward, deform_psroi_pool, deform_psroi_pool_backward,
                  deform_roi_pool, deform_roi_pool_backward, ps_roi_align, ps_roi_align_backward,
                  ps_roi_pool, ps_roi_pool_backward, roi_align, roi_align_backward, roi_pool,
                  roi_pool_backward, roi_pool_with_argmax)

__version__ = "0.1.0"
__all__ = ["Function", "GradcheckError", "Tensor", "available_targets", "functional", "gradcheck",
           "nn", "no_grad", "optim", "target",
           "roi_align", "roi_align_backward",
           "roi_pool", "roi_pool_backward", "roi_pool_with_argmax",
           "ps_roi_pool", "ps_roi_pool_backward", "ps_roi_align", "ps_roi_align_backward",
           "deform_roi_pool", "deform_roi_pool_backward", "deform_psroi_pool", "deform_psroi_pool_backward",
           "deform_conv2d", "deform_conv2d_backward",
           "use_deterministic_algorithms", "are_deterministic_algorithms_enabled", "deterministic"]
