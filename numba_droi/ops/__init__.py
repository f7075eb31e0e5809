"""Array-level operators: argument checks, output allocation, kernel launch; a forward and a
backward per operator. Arrays in, arrays of the same kind (NumPy or CuPy) out."""
from .roi_align import roi_align, roi_align_backward

__all__ = ["roi_align", "roi_align_backward"]
