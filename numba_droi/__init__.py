"""numba_droi: forward and backward kernels for RoI feature extraction and deformable operators,
written once in Python and compiled by Numba for the CPU and for CUDA.

Array level (NumPy or CuPy in, the same kind out): every operator of ``numba_droi.registry`` and its
``*_backward`` (``roi_align``, ``roi_pool``, ``ps_roi_pool``, ``ps_roi_align``, ``deform_roi_pool``,
``deform_psroi_pool``, ``deform_conv2d``, ...), and the other public functions of ``numba_droi.ops``
(``roi_pool_with_argmax`` gives what ``roi_pool_backward`` needs; ``im2col``, ``col2im`` and
``grouped_matmul`` are the pieces of ``deform_conv2d``). The operators' exact arithmetic:
docs/operators.md.
Differentiable level: ``numba_droi.functional`` on ``Tensor`` objects, with ``Function`` for your
own operations and ``gradcheck`` to test them. Training: ``numba_droi.nn`` (modules) and
``numba_droi.optim`` (SGD, Adam).
"""
from . import functional, nn, ops, optim, registry
from ._backend import available_targets, get_num_threads, set_num_threads, target
from ._backend import are_deterministic_algorithms_enabled, deterministic, use_deterministic_algorithms
from .autograd import Function, Tensor, no_grad
from .gradcheck import GradcheckError, gradcheck

globals().update((name, getattr(ops, name)) for name in ops.__all__)

__version__ = "0.1.0"
__all__ = ["Function", "GradcheckError", "Tensor", "available_targets", "functional", "gradcheck",
           "nn", "no_grad", "optim", "registry", "target", "use_deterministic_algorithms",
           "are_deterministic_algorithms_enabled", "deterministic", "get_num_threads",
           "set_num_threads"] + ops.__all__
