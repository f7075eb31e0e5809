"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2020) as its CUDA extension computes
it: docs/operators.md, ms_deform_attn. Each level's map is sampled with rule B2 (zero padding)."""
import numpy as np

from .bilinear import b2, b2_gradient, b2_scatter


def _points(value, spatial_shapes, level_start_index, sampling_locations):
    """Per ``(n, q, m, level, p)``: the level's map of ``value[n, :, m, d]`` as ``(H, W, D)`` views, and
    the sample ``(y, x)`` in its pixel coordinates."""
    images, queries, heads, levels, points, _ = sampling_locations.shape
    for n, q, m, level, p in np.ndindex(images, queries, heads, levels, points):
        height, width = (int(v) for v in spatial_shapes[level])
        start = int(level_start_index[level])
        planes = value[n, start:start + height * width, m].reshape(height, width, value.shape[3])
        x = float(sampling_locations[n, q, m, level, p, 0]) * width - 0.5
        y = float(sampling_locations[n, q, m, level, p, 1]) * height - 0.5
        yield (n, q, m, level, p), planes, y, x, height, width


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    images, queries, heads = sampling_locations.shape[:3]
    channels = value.shape[3]
    out = np.zeros((images, queries, heads, channels))
    for (n, q, m, level, p), planes, y, x, _, _ in _points(value, spatial_shapes, level_start_index,
                                                      sampling_locations):
        for d in range(channels):
            out[n, q, m, d] += attention_weights[n, q, m, level, p] * b2(planes[:, :, d], y, x)
    return out.reshape(images, queries, heads * channels)


def ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights, wanted=None):
    """Gradients of ``sum(grad_output * ms_deform_attn(...))``: (value, sampling_locations,
    attention_weights), all of them (``wanted`` is accepted, as the operator's, and ignored)."""
    images, queries, heads = sampling_locations.shape[:3]
    channels = value.shape[3]
    grad_output = grad_output.reshape(images, queries, heads, channels)
    grad_value = np.zeros(value.shape)
    grad_locations = np.zeros(sampling_locations.shape)
    grad_weights = np.zeros(attention_weights.shape)
    for (n, q, m, level, p), planes, y, x, height, width in _points(value, spatial_shapes, level_start_index,
                                                               sampling_locations):
        start = int(level_start_index[level])
        grad_planes = grad_value[n, start:start + height * width, m].reshape(height, width, channels)
        assert np.shares_memory(grad_planes, grad_value) or not grad_planes.size
        weight = attention_weights[n, q, m, level, p]
        for d in range(channels):
            g = grad_output[n, q, m, d]
            b2_scatter(grad_planes[:, :, d], y, x, g * weight)
            dy, dx = b2_gradient(planes[:, :, d], y, x)
            grad_locations[n, q, m, level, p, 0] += g * weight * width * dx
            grad_locations[n, q, m, level, p, 1] += g * weight * height * dy
            grad_weights[n, q, m, level, p] += g * b2(planes[:, :, d], y, x)
    return grad_value, grad_locations, grad_weights
