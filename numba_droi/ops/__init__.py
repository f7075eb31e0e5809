"""Array-level operators: argument checks, output allocation, kernel launch; a forward and a
backward per operator. Arrays in, arrays of the same kind (NumPy or CuPy) out."""
from .deform_conv import col2im, deform_conv2d, deform_conv2d_backward, grouped_matmul, im2col
from .deform_psroi_pool import deform_psroi_pool, deform_psroi_pool_backward
from .deform_roi_pool import deform_roi_pool, deform_roi_pool_backward
from .ps_roi import ps_roi_align, ps_roi_align_backward, ps_roi_pool, ps_roi_pool_backward
from .roi_align import roi_align, roi_align_backward
from .roi_pool import roi_pool, roi_pool_backward, roi_pool_with_argmax

__all__ = ["roi_align", "roi_align_backward",
           "roi_pool", "roi_pool_backward", "roi_pool_with_argmax",
           "ps_roi_pool", "ps_roi_pool_backward", "ps_roi_align", "ps_roi_align_backward",
           "deform_roi_pool", "deform_roi_pool_backward", "deform_psroi_pool", "deform_psroi_pool_backward",
           "deform_conv2d", "deform_conv2d_backward", "im2col", "col2im", "grouped_matmul"]
