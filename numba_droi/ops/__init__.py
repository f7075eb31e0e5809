"""Array-level operators: argument checks, output allocation, kernel launch; a forward and a
backward per operator. Arrays in, arrays of the same kind (NumPy or CuPy) out."""
from .deform_conv import col2im, deform_conv2d, deform_conv2d_backward, grouped_matmul, im2col
from .roi_align import roi_align, roi_align_backward

__all__ = ["roi_align", "roi_align_backward", "deform_conv2d", "deform_conv2d_backward", "im2col",
           "col2im", "grouped_matmul"]
