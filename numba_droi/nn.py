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
