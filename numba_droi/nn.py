"""Modules for custom training loops: ``Module`` and the layers built on ``numba_droi.functional``.

A ``Module`` holds ``Parameter`` objects (Tensors that require gradients) and sub-modules as plain
attributes; ``parameters()`` and ``state_dict()`` find them by walking the attributes in the order they
were assigned (not inside lists or dicts: use ``Sequential``), so a new layer needs nothing but
``__init__`` and ``forward``::

    class Head(Module):
        def __init__(self, rng=None):
            self.fc = Linear(256, 10, rng=rng)
            self.scale = Parameter(numpy.ones(1, numpy.float32))

        def forward(self, x):
            return self.fc(x) * self.scale

Parameters are created on the host (NumPy) and may be moved with ``to(cupy)``; every forward uses the
array module of its input, so a model runs on NumPy or CuPy arrays alike. ``state_dict()`` returns NumPy
copies, which ``numpy.savez`` writes and ``load_state_dict(numpy.load(path))`` reads back.
"""
import math

import numpy as np

from . import _backend, functional
from .ops import _checks
from .autograd import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates: ``requires_grad`` is True by default."""

    def __init__(self, array, requires_grad=True):
        super().__init__(array, requires_grad)


def kaiming_uniform(shape, fan_in, rng=None, dtype=np.float32):
    """PyTorch's default weight (and bias) initialisation of Linear and Conv layers:
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, which is Kaiming-uniform with ``a = sqrt(5)``.
    ``rng`` is a seed or a ``numpy.random.Generator`` (None: fresh entropy)."""
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return np.random.default_rng(rng).uniform(-bound, bound, shape).astype(dtype)


class Module:
    """Base class of layers: subclasses set Parameters and Modules as attributes and define
    ``forward``; calling the module calls ``forward``."""

    training = True

    def forward(self, *inputs):
        raise NotImplementedError

    def __call__(self, *inputs, **options):
        return self.forward(*inputs, **options)

    def named_children(self):
        return [(name, value) for name, value in vars(self).items() if isinstance(value, Module)]

    def children(self):
        return [module for _, module in self.named_children()]

    def modules(self):
        """This module and all modules below it, depth first."""
        found = [self]
        for child in self.children():
            found.extend(child.modules())
        return found

    def named_parameters(self, prefix=""):
        """``(dotted name, Parameter)`` for every Parameter of this module and below, each once."""
        named, seen = [], set()
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                pairs = [(prefix + name, value)]
            elif isinstance(value, Module):
                pairs = value.named_parameters(prefix + name + ".")
            else:
                continue
            for pair in pairs:
                if id(pair[1]) not in seen:
                    seen.add(id(pair[1]))
                    named.append(pair)
        return named

    def parameters(self):
        return [parameter for _, parameter in self.named_parameters()]

    def train(self, mode=True):
        """Put this module and all below it in training mode (``eval()``: evaluation mode)."""
        for module in self.modules():
            module.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for parameter in self.parameters():
            parameter.grad = None

    def state_dict(self):
        """``{dotted name: NumPy copy of the parameter}``, ready for ``numpy.savez(path, **state)``."""
        return {name: _backend.to_numpy(parameter.data).copy()
                for name, parameter in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy the arrays of ``state`` (a dict, or what ``numpy.load`` returns for an ``.npz``) into
        the parameters, in place, keeping each parameter's dtype and array module. The names must
        match ``state_dict()`` exactly, and the shapes too."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state does not match the module's parameters: missing {missing}, "
                           f"unexpected {unexpected}")
        values = {name: state[name] for name in own}
        for name, value in values.items():
            if tuple(np.shape(value)) != own[name].shape:
                raise ValueError(f"state[{name!r}] has shape {tuple(np.shape(value))}, the parameter "
                                 f"{own[name].shape}")
        for name, parameter in own.items():
            parameter.data[...] = _backend.array_module(parameter.data).asarray(values[name])

    def to(self, array_module):
        """Move every parameter's array to ``numpy`` or ``cupy``; returns self. Do it before making
        an optimizer, whose state is created from the parameters' arrays."""
        for parameter in self.parameters():
            parameter.data = (_backend.to_numpy(parameter.data) if array_module is np
                              else array_module.asarray(parameter.data))
            parameter.grad = None
        return self

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): {child!r}".replace("\n", "\n  ") for name, child in self.named_children()]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        return f"{type(self).__name__}({self.extra_repr()}\n  " + "\n  ".join(lines) + "\n)"


class Linear(Module):
    """``y = x @ weight.T + bias``; ``weight`` (out_features, in_features) and ``bias``
    (out_features,) initialised as PyTorch's Linear (``kaiming_uniform``) from ``rng``."""

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        rng = np.random.default_rng(rng)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(kaiming_uniform((out_features, in_features), in_features, rng, dtype))
        self.bias = Parameter(kaiming_uniform((out_features,), in_features, rng, dtype)) if bias else None

    def forward(self, input):
        return functional.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class ReLU(Module):
    def forward(self, input):
        return functional.relu(input)


class Sigmoid(Module):
    def forward(self, input):
        return functional.sigmoid(input)


class Flatten(Module):
    """``functional.flatten(input, start_dim, end_dim)``; by default keeps the batch axis."""

    def __init__(self, start_dim=1, end_dim=-1):
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input):
        return functional.flatten(input, self.start_dim, self.end_dim)


class Sequential(Module):
    """Modules applied in order. The first gets all the inputs (e.g. features and boxes for an RoI
    module), each next one the previous output. ``model[i]``, ``len(model)`` and iteration work."""

    def __init__(self, *modules):
        for index, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(f"Sequential takes Modules, got {type(module).__name__} at position {index}")
            setattr(self, str(index), module)

    def __getitem__(self, index):
        return self.children()[index]

    def __len__(self):
        return len(self.children())

    def __iter__(self):
        return iter(self.children())

    def forward(self, *inputs):
        modules = self.children()
        if not modules:
            return inputs[0] if len(inputs) == 1 else inputs
        output = modules[0](*inputs)
        for module in modules[1:]:
            output = module(output)
        return output


# -- RoI operators ---------------------------------------------------------------------------------

class RoIAlign(Module):
    """``functional.roi_align`` as a layer: ``RoIAlign(output_size, spatial_scale, sampling_ratio,
    aligned)(features, rois)``, with torchvision's argument order and defaults."""

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, input, rois):
        return functional.roi_align(input, rois, self.output_size, self.spatial_scale,
                                    self.sampling_ratio, self.aligned)

    def extra_repr(self):
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


class DeformRoIPool(Module):
    """``functional.deform_roi_pool`` as a layer, with mmcv's argument order and defaults:
    ``DeformRoIPool(output_size, spatial_scale, sampling_ratio, gamma)(features, rois, offset, mask)``;
    without ``offset`` and ``mask`` it is ``roi_align(..., aligned=True)``."""

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
        self.output_size = _checks.pair(output_size, "output_size")
        self.spatial_scale = spatial_scale
        self.sampling_ratio, self.gamma = sampling_ratio, gamma

    def forward(self, input, rois, offset=None, mask=None):
        return functional.deform_roi_pool(input, rois, offset, self.output_size, self.spatial_scale,
                                          self.sampling_ratio, self.gamma, mask)

    def extra_repr(self):
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}")


class DeformPSRoIPool(Module):
    """``functional.deform_psroi_pool`` as a layer, with its argument order and defaults:
    ``DeformPSRoIPool(spatial_scale, output_dim, group_size, pooled_size, part_size, sample_per_part,
    trans_std, no_trans)(features, rois, trans)``; ``trans`` may be left out when ``no_trans``."""

    def __init__(self, spatial_scale, output_dim, group_size, pooled_size, part_size=None,
                 sample_per_part=1, trans_std=0.0, no_trans=False):
        self.spatial_scale, self.output_dim, self.group_size = spatial_scale, output_dim, group_size
        self.pooled_size, self.part_size, self.sample_per_part = pooled_size, part_size, sample_per_part
        self.trans_std, self.no_trans = trans_std, no_trans

    def forward(self, input, rois, trans=None):
        return functional.deform_psroi_pool(input, rois, trans, self.spatial_scale, self.output_dim,
                                            self.group_size, self.pooled_size, self.part_size,
                                            self.sample_per_part, self.trans_std, self.no_trans)

    def extra_repr(self):
        return (f"spatial_scale={self.spatial_scale}, output_dim={self.output_dim}, "
                f"group_size={self.group_size}, pooled_size={self.pooled_size}, "
                f"part_size={self.part_size}, sample_per_part={self.sample_per_part}, "
                f"trans_std={self.trans_std}, no_trans={self.no_trans}")


def _zero_last_linear(sequential):
    """Zero the last Linear of ``sequential``: the branch then predicts 0 for every input."""
    last = [module for module in sequential if isinstance(module, Linear)][-1]
    last.weight.data[...] = 0
    last.bias.data[...] = 0


class DeformRoIPoolPack(DeformRoIPool):
    """Deformable RoI pooling that predicts its own offsets (Dai et al., Deformable Convolutional
    Networks, 2017, https://arxiv.org/abs/1703.06211), structured as mmcv's ``DeformRoIPoolPack``::

        pooled = deform_roi_pool(input, rois, None)          # = roi_align(aligned=True)
        offset = offset_fc(pooled.reshape(K, C * PH * PW))   # FC-ReLU-FC-ReLU-FC, (K, 2*PH*PW)
        out = deform_roi_pool(input, rois, offset.reshape(K, 2, PH, PW))

    ``output_channels`` is the channel count ``C`` of the input (what the first FC sees, as in mmcv).
    The last FC is zero-initialised, so training starts from plain RoI Align; the other FCs are
    initialised as ``Linear`` from ``rng``, in ``dtype``. The gradient reaches the input along both
    paths (mmcv does not detach the first pooling either).
    """

    def __init__(self, output_size, output_channels, deform_fc_channels=1024, spatial_scale=1.0,
                 sampling_ratio=0, gamma=0.1, rng=None, dtype=np.float32):
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        rng = np.random.default_rng(rng)
        self.output_channels, self.deform_fc_channels = output_channels, deform_fc_channels
        bins = self.output_size[0] * self.output_size[1]
        self.offset_fc = Sequential(
            Linear(bins * output_channels, deform_fc_channels, rng=rng, dtype=dtype), ReLU(),
            Linear(deform_fc_channels, deform_fc_channels, rng=rng, dtype=dtype), ReLU(),
            Linear(deform_fc_channels, bins * 2, rng=rng, dtype=dtype))
        _zero_last_linear(self.offset_fc)

    def _pooled_rows(self, input, rois):
        """The plain pooling of every box, one row per box: ``(K, C * PH * PW)``."""
        if input.shape[1] != self.output_channels:
            raise ValueError(f"input must have output_channels = {self.output_channels} channels, "
                             f"got input of shape {tuple(input.shape)}")
        pooled = super().forward(input, rois)
        return functional.reshape(pooled, (pooled.shape[0], int(np.prod(pooled.shape[1:]))))

    def _offset(self, rows):
        return functional.reshape(self.offset_fc(rows), (rows.shape[0], 2) + self.output_size)

    def forward(self, input, rois):
        return super().forward(input, rois, self._offset(self._pooled_rows(input, rois)))

    def extra_repr(self):
        return (f"{super().extra_repr()}, output_channels={self.output_channels}, "
                f"deform_fc_channels={self.deform_fc_channels}")


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """``DeformRoIPoolPack`` with the modulation of DCNv2 (Zhu et al., 2019,
    https://arxiv.org/abs/1811.11168), structured as mmcv's ``ModulatedDeformRoIPoolPack``: a second
    branch ``mask_fc`` (FC-ReLU-FC-Sigmoid, ``(K, PH*PW)``) of the same pooled rows predicts a mask
    per bin, ``out = deform_roi_pool(input, rois, offset, mask=mask)``.

    Both last FCs are zero-initialised, so training starts from ``0.5 * roi_align(aligned=True)``
    (``sigmoid(0) = 0.5``, as in mmcv). The mask is applied inside the pooling kernel (mmcv multiplies
    the pooled output by it), which gives the same values and gradients.
    """

    def __init__(self, output_size, output_channels, deform_fc_channels=1024, spatial_scale=1.0,
                 sampling_ratio=0, gamma=0.1, rng=None, dtype=np.float32):
        rng = np.random.default_rng(rng)
        super().__init__(output_size, output_channels, deform_fc_channels, spatial_scale,
                         sampling_ratio, gamma, rng, dtype)
        bins = self.output_size[0] * self.output_size[1]
        self.mask_fc = Sequential(
            Linear(bins * output_channels, deform_fc_channels, rng=rng, dtype=dtype), ReLU(),
            Linear(deform_fc_channels, bins, rng=rng, dtype=dtype), Sigmoid())
        _zero_last_linear(self.mask_fc)

    def forward(self, input, rois):
        rows = self._pooled_rows(input, rois)
        mask = functional.reshape(self.mask_fc(rows), (rows.shape[0], 1) + self.output_size)
        return DeformRoIPool.forward(self, input, rois, self._offset(rows), mask)
