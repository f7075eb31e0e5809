"""Array-level operators: argument checks, output allocation, kernel launch; a forward and a
backward per operator. Arrays in, arrays of the same kind (NumPy or CuPy) out.

Each module here lists its public functions in ``__all__``; this package (and ``numba_droi``) gives
them all.
"""
import importlib
import pkgutil

__all__ = []
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _module = importlib.import_module(f"{__name__}.{_module.name}")
        globals().update((name, getattr(_module, name)) for name in _module.__all__)
        __all__ += _module.__all__
