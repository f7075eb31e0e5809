"""Kernel sources: plain-Python device helpers and bodies, compiled for both targets on first use."""
import importlib
import pkgutil


def import_all():
    """Import every kernel module, so that ``_backend.CUDA_KERNELS`` lists every cuda kernel."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
