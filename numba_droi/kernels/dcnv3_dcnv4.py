"""The sample positions of dcnv3 and dcnv4, from their offsets (the sampling itself is
``ms_deform_attn``'s, one level whose rows are the input's pixels).

``dcnv_position`` is the formula, InternImage's CUDA kernels' grouping of the terms; the ops layer
applies it to whole NumPy or CuPy arrays, ``dcnv_positions_cpu`` in one compiled pass on the cpu
(NumPy's strided passes over the ``(x, y)`` pairs took as long as a small call's sampling).
"""
from .._backend import cpu_function, jitable


@jitable
def dcnv_position(start, tap, offset, scale):
    """A sample's ``x`` (or ``y``) in pixels: its window's start ``start`` (``wo*stride_w - pad_w +
    c_w - c_w*offset_scale``), the point's place ``tap`` in the window (``i*dilation_w``), its offset,
    the scale ``offset_scale``."""
    return (tap + offset) * scale + start


@cpu_function
def dcnv_positions_cpu(offset, start_x, start_y, tap_x, tap_y, scale, locations):
    """``locations[n, ho, wo, g, k] = (x, y)`` of ``offset[n, ho, wo, g, k]`` (both ``(N, Ho, Wo, G, K,
    2)``) with ``dcnv_position``; ``start_x (Wo,)``, ``start_y (Ho,)``, ``tap_x``, ``tap_y (K,)``."""
    scale = locations.dtype.type(scale)
    for n in range(offset.shape[0]):
        for ho in range(offset.shape[1]):
            for wo in range(offset.shape[2]):
                for g in range(offset.shape[3]):
                    for k in range(offset.shape[4]):
                        locations[n, ho, wo, g, k, 0] = dcnv_position(start_x[wo], tap_x[k],
                                                                      offset[n, ho, wo, g, k, 0], scale)
                        locations[n, ho, wo, g, k, 1] = dcnv_position(start_y[ho], tap_y[k],
                                                                      offset[n, ho, wo, g, k, 1], scale)
