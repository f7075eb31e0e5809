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
import inspect
import math

import numpy as np

from . import _backend, functional, registry
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

class OperatorModule(Module):
    """The layer of an operator of the registry (``operator``; one subclass per operator): the
    operator's options at construction, with the forward's names, order and defaults; its arrays at
    the call, an optional one defaulting to None::

        RoIAlign(output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False)(features, rois)
    """

    operator = None

    def __init__(self, *args, **kwargs):
        bound = _options_signature(self.operator).bind(*args, **kwargs)
        bound.apply_defaults()
        for name, value in bound.arguments.items():
            setattr(self, name, value)

    def forward(self, *args, **kwargs):
        arrays = _arrays_signature(self.operator).bind(*args, **kwargs)
        arrays.apply_defaults()
        options = {name: getattr(self, name) for name in self.operator.options}
        return getattr(functional, self.operator.name)(**arrays.arguments, **options)

    def extra_repr(self):
        return ", ".join(f"{name}={getattr(self, name)}" for name in self.operator.options)


def _options_signature(operator):
    parameters = inspect.signature(operator.forward).parameters.values()
    return inspect.Signature([p for p in parameters if p.name in operator.options])


def _arrays_signature(operator):
    """The forward's arrays, the optional ones (but for those before a required one) defaulting to
    None."""
    parameters = [p for p in inspect.signature(operator.forward).parameters.values()
                  if p.name in operator.arrays]
    required = [i for i, p in enumerate(parameters) if p.name not in operator.optional]
    last_required = required[-1] if required else -1
    return inspect.Signature([p.replace(default=None) if i > last_required else p.replace(default=p.empty)
                              for i, p in enumerate(parameters)])


def _module_class(operator):
    return type(operator.module, (OperatorModule,), {
        "operator": operator, "__module__": __name__,
        "__doc__": f"``functional.{operator.name}`` as a layer: ``{operator.module}"
                   f"{_options_signature(operator)}{_arrays_signature(operator)}``."})


# name of the operator -> its layer, for every operator of the registry that has one
MODULES = {operator.name: _module_class(operator) for operator in registry.OPERATORS if operator.module}
globals().update((cls.__name__, cls) for cls in MODULES.values())


def _zero_last_linear(sequential):
    """Zero the last Linear of ``sequential``: the branch then predicts 0 for every input."""
    last = [module for module in sequential if isinstance(module, Linear)][-1]
    last.weight.data[...] = 0
    last.bias.data[...] = 0


class DeformRoIPoolPack(MODULES["deform_roi_pool"]):
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
        super().__init__(_checks.pair(output_size, "output_size"), spatial_scale, sampling_ratio, gamma)
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
        return MODULES["deform_roi_pool"].forward(self, input, rois, self._offset(rows), mask)


class DeformPSRoIPoolPack(MODULES["deform_psroi_pool"]):
    """Deformable position-sensitive RoI pooling that predicts its own part offsets, the R-FCN head of
    Deformable ConvNets (Dai et al., 2017, https://arxiv.org/abs/1703.06211; the ``rfcn_cls_offset_t``
    branch of its ``resnet_v1_101_rfcn_dcn`` symbol)::

        offset_map = offset_conv(features)      # 1x1 conv: (N, 2*offset_classes*G*G, H, W)
        trans = deform_psroi_pool(offset_map, rois, None, output_dim=2*offset_classes,
                                  pooled_size=part_size, no_trans=True)   # (K, 2*offset_classes, P, P)
        out = deform_psroi_pool(input, rois, trans, output_dim, ..., trans_std=trans_std)

    ``input`` is the position-sensitive score map, ``(N, output_dim * G*G, H, W)`` with ``G =
    group_size``; ``features`` (``in_channels`` channels) is the map the offsets are predicted from —
    in R-FCN the map the score map was itself computed from — and defaults to ``input``.
    ``offset_classes`` classes of offsets (1: shared by all output channels; ``output_dim``: one per
    class, as R-FCN's classification branch) divide the output channels into equal consecutive runs.
    Each class's ``trans`` channels are x then y, as ``deform_psroi_pool`` reads them.

    ``offset_conv`` is zero-initialised (as the original), so training starts from plain PS RoI
    pooling with sub-sampling (``no_trans``); ``rng`` and ``dtype`` as ``Conv2d``. The gradient reaches
    ``features`` through the offsets and ``input`` through the pooling.
    """

    def __init__(self, in_channels, spatial_scale, output_dim, group_size, pooled_size, part_size=None,
                 sample_per_part=1, trans_std=0.1, offset_classes=1, rng=None, dtype=np.float32):
        super().__init__(spatial_scale, output_dim, group_size, pooled_size, part_size,
                         sample_per_part, trans_std, no_trans=False)
        if output_dim % offset_classes:
            raise ValueError(f"offset_classes = {offset_classes} must divide output_dim = {output_dim}")
        self.in_channels, self.offset_classes = in_channels, offset_classes
        self.offset_conv = Conv2d(in_channels, 2 * offset_classes * group_size ** 2, 1, rng=rng,
                                  dtype=dtype)
        self.offset_conv.weight.data[...] = 0
        self.offset_conv.bias.data[...] = 0

    def forward(self, input, rois, features=None):
        offset_map = self.offset_conv(input if features is None else features)
        part_size = self.pooled_size if self.part_size is None else self.part_size
        trans = functional.deform_psroi_pool(
            offset_map, rois, None, self.spatial_scale, 2 * self.offset_classes, self.group_size,
            part_size, part_size, self.sample_per_part, no_trans=True)
        return super().forward(input, rois, trans)

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, {super().extra_repr()}, "
                f"offset_classes={self.offset_classes}")


class MultiScaleRoIAlign(Module):
    """torchvision's ``MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio, *,
    canonical_scale=224, canonical_level=4)``: ``forward(x, boxes, image_shapes)`` pools each box from
    the level of ``x`` (a dict of ``(N, C, H, W)`` features) that its size maps to, among those named
    in ``featmap_names`` (finest first); ``boxes`` is a ``(K, 5)`` array or a list of ``(L_i, 4)``
    arrays, one per image; ``image_shapes`` the images' ``(height, width)``. See
    ``functional.multi_scale_roi_align``."""

    def __init__(self, featmap_names, output_size, sampling_ratio, *, canonical_scale=224, canonical_level=4):
        self.featmap_names = list(featmap_names)
        self.output_size = _checks.pair(output_size, "output_size")
        self.sampling_ratio = sampling_ratio
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level

    def forward(self, x, boxes, image_shapes):
        missing = [name for name in self.featmap_names if name not in x]
        if missing:
            raise ValueError(f"x has no features named {missing}: it has {list(x)}")
        if isinstance(boxes, (list, tuple)):
            boxes = [_backend.as_array(b) for b in boxes]
            if not boxes or not all(b.ndim == 2 and b.shape[1] == 4 for b in boxes):
                raise ValueError("boxes must be a (K, 5) array or a non-empty list of (L, 4) arrays, one per "
                                 f"image, got a list of shapes {[tuple(b.shape) for b in boxes]}")
            xp = _backend.array_module(boxes[0])
            boxes = xp.concatenate([xp.concatenate([xp.full((len(b), 1), i, b.dtype), b], 1)
                                    for i, b in enumerate(boxes)])
        return functional.multi_scale_roi_align([x[name] for name in self.featmap_names], boxes, image_shapes,
                                                self.output_size, self.sampling_ratio, self.canonical_scale,
                                                self.canonical_level)

    def extra_repr(self):
        return (f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}")


# -- convolutions ------------------------------------------------------------------------------------

class Conv2d(Module):
    """``functional.conv2d`` as a layer, as ``torch.nn.Conv2d``: ``weight`` (out_channels,
    in_channels/groups, kh, kw) and ``bias`` (out_channels,) initialised as PyTorch's
    (``kaiming_uniform`` with ``fan_in = in_channels/groups * kh * kw``) from ``rng``, in ``dtype``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, rng=None, dtype=np.float32):
        groups = _checks.integer(groups, "groups")
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups = {groups} must be positive and divide in_channels = "
                             f"{in_channels} and out_channels = {out_channels}")
        rng = np.random.default_rng(rng)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _checks.pair(kernel_size, "kernel_size")
        self.stride = _checks.pair(stride, "stride")
        self.padding = _checks.pair(padding, "padding", minimum=0)
        self.dilation = _checks.pair(dilation, "dilation")
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        self.weight = Parameter(kaiming_uniform((out_channels, in_channels // groups) + self.kernel_size,
                                                fan_in, rng, dtype))
        self.bias = Parameter(kaiming_uniform((out_channels,), fan_in, rng, dtype)) if bias else None

    def _check_input(self, input):
        if len(input.shape) != 4 or input.shape[1] != self.in_channels:
            raise ValueError(f"input must be (N, in_channels = {self.in_channels}, H, W), got shape "
                             f"{tuple(input.shape)}")

    def forward(self, input):
        self._check_input(input)
        return functional.conv2d(input, self.weight, self.bias, self.stride, self.padding,
                                 self.dilation, self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")


class DeformConv2d(Conv2d):
    """``functional.deform_conv2d`` as a layer: ``DeformConv2d(in_channels, out_channels, kernel_size,
    ...)(input, offset, mask=None)``, parameters as ``Conv2d`` (and as torchvision's DeformConv2d).
    ``offset`` ``(N, 2*G*kh*kw, Ho, Wo)``, y before x for each tap; ``mask`` ``(N, G*kh*kw, Ho, Wo)``
    (DCNv2) or None; ``G``, the number of offset groups, is read from ``offset.shape[1]``."""

    def forward(self, input, offset, mask=None):
        self._check_input(input)
        return functional.deform_conv2d(input, offset, self.weight, self.bias, self.stride,
                                        self.padding, self.dilation, mask)


class DeformConv2dPack(DeformConv2d):
    """Deformable convolution (DCNv1, Dai et al., 2017, https://arxiv.org/abs/1703.06211) that
    predicts its own offsets, as mmcv's ``DeformConv2dPack``::

        offset = conv_offset(input)   # Conv2d(in_channels, 2*deform_groups*kh*kw), same kernel,
                                      # stride, padding and dilation: offsets for every output pixel
        out = deform_conv2d(input, offset, weight, bias)

    Offset channel ``2*(g*kh*kw + i*kw + j)`` is the y offset of tap ``(i, j)`` of offset group ``g``,
    the next channel its x offset (the layout of mmcv, torchvision and ``deform_conv2d``).
    ``conv_offset`` is zero-initialised, so training starts from the plain convolution. No bias by
    default (as mmcv); parameters otherwise as ``Conv2d`` from ``rng``, in ``dtype``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 deform_groups=1, bias=False, rng=None, dtype=np.float32):
        rng = np.random.default_rng(rng)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         rng, dtype)
        deform_groups = _checks.integer(deform_groups, "deform_groups")
        if deform_groups < 1 or in_channels % deform_groups:
            raise ValueError(f"deform_groups = {deform_groups} must be positive and divide "
                             f"in_channels = {in_channels}")
        self.deform_groups = deform_groups
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = Conv2d(in_channels, self._offset_channels_per_tap * deform_groups * taps,
                                  self.kernel_size, self.stride, self.padding, self.dilation, rng=rng,
                                  dtype=dtype)
        self.conv_offset.weight.data[...] = 0
        self.conv_offset.bias.data[...] = 0

    _offset_channels_per_tap = 2

    def forward(self, input):
        return super().forward(input, self.conv_offset(input))

    def extra_repr(self):
        return f"{super().extra_repr()}, deform_groups={self.deform_groups}"


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """Modulated deformable convolution (DCNv2, Zhu et al., 2019, https://arxiv.org/abs/1811.11168)
    that predicts its own offsets and mask, as mmcv's ``ModulatedDeformConv2dPack``::

        prediction = conv_offset(input)              # (N, 3*deform_groups*kh*kw, Ho, Wo)
        offset, mask = prediction[:, :2/3], sigmoid(prediction[:, 2/3:])
        out = deform_conv2d(input, offset, weight, bias, mask=mask)

    The first two thirds of ``conv_offset``'s channels are the offsets, in ``deform_conv2d``'s layout
    (channel ``2*(g*kh*kw + i*kw + j)`` the y offset of tap ``(i, j)`` of group ``g``, the next its x
    offset: mmcv's ``cat(o1, o2)``), the last third the mask before the sigmoid (channel ``g*kh*kw +
    i*kw + j``). ``conv_offset`` is zero-initialised, so training starts from ``0.5 *`` the plain
    convolution without bias (``sigmoid(0) = 0.5``, as mmcv). Bias on by default (as mmcv).
    """

    _offset_channels_per_tap = 3

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 deform_groups=1, bias=True, rng=None, dtype=np.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deform_groups, bias, rng, dtype)

    def forward(self, input):
        prediction = self.conv_offset(input)
        mask_channels = prediction.shape[1] // 3
        offset, mask = functional.split(prediction, (2 * mask_channels, mask_channels), axis=1)
        return DeformConv2d.forward(self, input, offset, functional.sigmoid(mask))


# -- attention ---------------------------------------------------------------------------------------

def sampling_offset_ring(heads, levels, points, dtype=np.float32):
    """The initial sampling offsets of Deformable DETR, ``(heads, levels, points, 2)`` ``(x, y)``: head
    ``h`` points along the direction ``2*pi*h/heads`` (its larger coordinate scaled to 1), point ``i``
    ``i + 1`` times as far, the same at every level."""
    angles = np.arange(heads, dtype=np.float32) * np.float32(2 * math.pi / heads)
    ring = np.stack([np.cos(angles), np.sin(angles)], -1)
    ring = ring / np.abs(ring).max(-1, keepdims=True)
    return (ring[:, None, None, :] * np.arange(1, points + 1)[None, None, :, None]
            * np.ones((1, levels, 1, 1))).astype(dtype)


def xavier_uniform(shape, rng=None, dtype=np.float32):
    """Glorot's initialisation of a ``(fan_out, fan_in)`` weight: ``U(-a, a)``, ``a = sqrt(6 /
    (fan_in + fan_out))``, as ``torch.nn.init.xavier_uniform_``."""
    bound = math.sqrt(6 / (shape[0] + shape[1]))
    return np.random.default_rng(rng).uniform(-bound, bound, shape).astype(dtype)


class MSDeformAttn(Module):
    """Multi-scale deformable attention with its projections, as Deformable DETR's ``MSDeformAttn``
    (Zhu et al., 2020, https://arxiv.org/abs/2010.04159)::

        value = value_proj(input_flatten), 0 where input_padding_mask   # (N, S, heads, d_model/heads)
        offsets = sampling_offsets(query)                # (N, Lq, heads, levels, points, 2), (x, y)
        weights = softmax over levels*points of attention_weights(query)
        locations = reference_points + offsets / (W_l, H_l)          # reference_points (N, Lq, L, 2)
                  = centre + offsets / points * size / 2             # or boxes (N, Lq, L, 4): cx, cy, w, h
        out = output_proj(ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights))

    Initialised as the paper: the offsets' weight 0 and their bias a ring of directions
    (``sampling_offset_ring``), the attention weights' weight and bias 0 (uniform weights), the value
    and output projections Glorot-uniform with bias 0; from ``rng``, in ``dtype``. The parameters have
    Deformable DETR's names, so its state dicts load (as NumPy arrays).
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, rng=None, dtype=np.float32):
        if d_model % n_heads:
            raise ValueError(f"d_model = {d_model} must be a multiple of n_heads = {n_heads}")
        rng = np.random.default_rng(rng)
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        points = n_heads * n_levels * n_points
        self.sampling_offsets = Linear(d_model, points * 2, rng=rng, dtype=dtype)
        self.sampling_offsets.weight.data[...] = 0
        ring = sampling_offset_ring(n_heads, n_levels, n_points, dtype)
        self.sampling_offsets.bias.data[...] = ring.ravel()
        self.attention_weights = Linear(d_model, points, rng=rng, dtype=dtype)
        self.attention_weights.weight.data[...] = 0
        self.attention_weights.bias.data[...] = 0
        self.value_proj = Linear(d_model, d_model, rng=rng, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, rng=rng, dtype=dtype)
        for projection in (self.value_proj, self.output_proj):
            projection.weight.data[...] = xavier_uniform((d_model, d_model), rng, dtype)
            projection.bias.data[...] = 0

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index,
                input_padding_mask=None):
        """``query (N, Lq, d_model)``, ``reference_points (N, Lq, L, 2)`` normalised ``(x, y)`` or
        ``(N, Lq, L, 4)`` boxes ``(cx, cy, w, h)``, ``input_flatten (N, S, d_model)`` the levels'
        maps flattened and concatenated, ``input_spatial_shapes (L, 2)`` ``(H, W)``,
        ``input_level_start_index (L,)``, ``input_padding_mask (N, S)`` True where padded, or None.
        Returns ``(N, Lq, d_model)``."""
        query, reference_points = functional._tensor(query), functional._tensor(reference_points)
        images, queries = query.shape[:2]
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        shapes = _backend.to_numpy(_backend.as_array(input_spatial_shapes))
        if shapes.shape != (levels, 2):
            raise ValueError(f"input_spatial_shapes must have shape (n_levels, 2) = ({levels}, 2), got "
                             f"{shapes.shape}")
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            xp = _backend.array_module(value.data)
            keep = 1 - xp.asarray(input_padding_mask, dtype=value.dtype)
            value = value * keep[..., None]
        value = functional.reshape(value, (value.shape[0], value.shape[1], heads, self.d_model // heads))
        offsets = functional.reshape(self.sampling_offsets(query),
                                     (images, queries, heads, levels, points, 2))
        weights = functional.softmax(functional.reshape(self.attention_weights(query),
                                                        (images, queries, heads, levels * points)))
        weights = functional.reshape(weights, (images, queries, heads, levels, points))
        side = reference_points.shape[-1]
        if side == 2:
            normalizer = np.stack([shapes[:, 1], shapes[:, 0]], -1).astype(query.dtype)  # (W, H)
            xp = _backend.array_module(query.data)
            locations = (functional.reshape(reference_points, (images, queries, 1, levels, 1, 2))
                         + offsets / xp.asarray(normalizer)[None, None, None, :, None, :])
        elif side == 4:
            centre, size = functional.split(reference_points, (2, 2), axis=3)
            locations = (functional.reshape(centre, (images, queries, 1, levels, 1, 2))
                         + offsets * (0.5 / points)
                         * functional.reshape(size, (images, queries, 1, levels, 1, 2)))
        else:
            raise ValueError(f"reference_points' last axis must have 2 (x, y) or 4 (cx, cy, w, h) elements, "
                             f"got {side}")
        output = functional.ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations,
                                           weights)
        return self.output_proj(output)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
                f"n_points={self.n_points}")


# -- DCNv3 and DCNv4 -----------------------------------------------------------------------------------

class LayerNorm(Module):
    """``functional.layer_norm`` over the last axis of ``normalized_shape`` elements, ``weight`` 1 and
    ``bias`` 0 at first, as ``torch.nn.LayerNorm(normalized_shape, eps)``."""

    def __init__(self, normalized_shape, eps=1e-5, dtype=np.float32):
        self.normalized_shape, self.eps = _checks.integer(normalized_shape, "normalized_shape"), eps
        self.weight = Parameter(np.ones(normalized_shape, dtype))
        self.bias = Parameter(np.zeros(normalized_shape, dtype))

    def forward(self, input):
        return functional.layer_norm(input, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"({self.normalized_shape},), eps={self.eps}"


class GELU(Module):
    def forward(self, input):
        return functional.gelu(input)


class Permute(Module):
    """``functional.permute(input, axes)`` as a layer (InternImage's ``to_channels_last`` is
    ``Permute((0, 2, 3, 1))``)."""

    def __init__(self, axes):
        self.axes = tuple(axes)

    def forward(self, input):
        return functional.permute(input, self.axes)

    def extra_repr(self):
        return f"axes={self.axes}"


def _depthwise(channels, kernel_size, rng, dtype):
    """A depth-wise ``Conv2d`` of odd ``kernel_size`` that keeps the map's size."""
    return Conv2d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels, rng=rng,
                  dtype=dtype)


def _blend_with_centre_features(output, projected, query, weight, bias, group):
    """InternImage's centre feature scale: ``output * (1 - s) + projected * s`` with ``s =
    sigmoid(query @ weight.T + bias)`` per group, the same for the group's channels."""
    scale = functional.sigmoid(functional.linear(query, weight, bias))
    shape = tuple(output.shape[:-1]) + (group, output.shape[-1] // group)
    scale = functional.reshape(scale, shape[:-1] + (1,))
    output, projected = functional.reshape(output, shape), functional.reshape(projected, shape)
    return functional.reshape(output * (1 - scale) + projected * scale, shape[:-2] + (shape[-2] * shape[-1],))


def _dcn_geometry(channels, kernel_size, group, remove_center):
    if channels % group:
        raise ValueError(f"channels = {channels} must be divisible by group = {group}")
    if remove_center and kernel_size % 2 == 0:
        raise ValueError(f"remove_center needs an odd kernel_size, got {kernel_size}")
    return kernel_size * kernel_size - int(bool(remove_center))


def _projection(features, rng, dtype, bias=True):
    """A ``Linear(features, features)`` initialised Glorot-uniform, its bias 0."""
    projection = Linear(features, features, bias=bias, rng=rng, dtype=dtype)
    projection.weight.data[...] = xavier_uniform((features, features), rng, dtype)
    if bias:
        projection.bias.data[...] = 0
    return projection


def _zero_linear(in_features, out_features, dtype):
    layer = Linear(in_features, out_features, dtype=dtype)
    layer.weight.data[...] = 0
    layer.bias.data[...] = 0
    return layer


class DCNv3(Module):
    """The DCNv3 layer of InternImage (Wang et al., CVPR 2023, https://arxiv.org/abs/2211.05778), as its
    ``DCNv3`` module, on a channels-last ``(N, H, W, channels)`` input::

        x = input_proj(input)
        query = dw_conv(input)              # depth-wise conv, LayerNorm (eps 1e-6), GELU; channels-last
        offset = offset(query)              # (N, H, W, group*K*2)
        mask = softmax over the K points of mask(query), per group
        x = dcnv3(x, offset, mask, kernel_size, ..., group, channels // group, offset_scale, remove_center)
        x = x * (1 - s) + input_proj(input) * s      # with center_feature_scale: s = sigmoid(linear(query))
        out = output_proj(x)

    ``K = kernel_size**2``, less one if ``remove_center``. Initialised as InternImage: the offset and
    mask layers 0 (so the layer starts as the mean of its window's points), the projections
    Glorot-uniform with bias 0, the depth-wise convolution as PyTorch's; from ``rng``, in ``dtype``.
    The parameters have InternImage's names (``dw_conv.0.weight``, ``dw_conv.1.1.weight``,
    ``offset.weight``, ...), so its state dicts load (as NumPy arrays). Only ``act_layer="GELU"`` and
    ``norm_layer="LN"`` (InternImage's defaults) are built here. The offsets and masks are predicted at
    the input's resolution: the output must have the input's size (stride 1, ``pad = (dilation *
    (kernel_size - 1)) // 2``), as InternImage's.
    """

    def __init__(self, channels=64, kernel_size=3, dw_kernel_size=None, stride=1, pad=1, dilation=1, group=4,
                 offset_scale=1.0, act_layer="GELU", norm_layer="LN", center_feature_scale=False,
                 remove_center=False, rng=None, dtype=np.float32):
        if act_layer != "GELU" or norm_layer != "LN":
            raise ValueError(f"act_layer must be 'GELU' and norm_layer 'LN', got {act_layer!r} and "
                             f"{norm_layer!r}")
        points = _dcn_geometry(channels, kernel_size, group, remove_center)
        rng = np.random.default_rng(rng)
        self.channels, self.kernel_size, self.stride, self.pad = channels, kernel_size, stride, pad
        self.dilation, self.group, self.offset_scale = dilation, group, offset_scale
        self.remove_center, self.center_feature_scale = bool(remove_center), center_feature_scale
        self.dw_kernel_size = kernel_size if dw_kernel_size is None else dw_kernel_size
        if center_feature_scale:
            self.center_feature_scale_proj_weight = Parameter(np.zeros((group, channels), dtype))
            self.center_feature_scale_proj_bias = Parameter(np.zeros(group, dtype))
        self.dw_conv = Sequential(_depthwise(channels, self.dw_kernel_size, rng, dtype),
                                  Sequential(Permute((0, 2, 3, 1)), LayerNorm(channels, 1e-6, dtype)), GELU())
        self.offset = _zero_linear(channels, group * points * 2, dtype)
        self.mask = _zero_linear(channels, group * points, dtype)
        self.input_proj = _projection(channels, rng, dtype)
        self.output_proj = _projection(channels, rng, dtype)

    def forward(self, input):
        input = functional._tensor(input)
        images, height, width, _ = input.shape
        x = self.input_proj(input)
        query = self.dw_conv(functional.permute(input, (0, 3, 1, 2)))
        offset = self.offset(query)
        logits = functional.reshape(self.mask(query), (images, height, width, self.group, -1))
        mask = functional.softmax(logits)
        mask = functional.reshape(mask, (images, height, width, mask.shape[3] * mask.shape[4]))
        k, s, p, d = self.kernel_size, self.stride, self.pad, self.dilation
        output = functional.dcnv3(x, offset, mask, k, k, s, s, p, p, d, d, self.group,
                                  self.channels // self.group, self.offset_scale, self.remove_center)
        if self.center_feature_scale:
            output = _blend_with_centre_features(output, x, query, self.center_feature_scale_proj_weight,
                                                 self.center_feature_scale_proj_bias, self.group)
        return self.output_proj(output)

    def extra_repr(self):
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"pad={self.pad}, dilation={self.dilation}, group={self.group}, "
                f"offset_scale={self.offset_scale}, remove_center={self.remove_center}")


class DCNv4(Module):
    """The DCNv4 layer (Xiong et al., CVPR 2024, https://arxiv.org/abs/2401.06197), as its ``DCNv4``
    module, on tokens ``(N, L, channels)`` of an ``H x W`` map (``shape=(H, W)``, default square)::

        x = value_proj(input)                                   # unless without_pointwise
        offset_mask = offset_mask(offset_mask_dw(input))        # the depth-wise conv only if dw_kernel_size
        x = dcnv4(x, offset_mask, kernel_size, ..., group, channels // group, offset_scale, remove_center)
        x = x * (1 - s) + value_proj(input) * s      # only with center_feature_scale, s = sigmoid(linear(x))
        out = output_proj(x)                                    # unless without_pointwise

    ``offset_mask`` has ``3*group*K`` outputs rounded up to a multiple of 8 (those past ``3*group*K``
    are not read); no softmax: the aggregation weights are unbounded. Initialised as DCNv4: the
    ``offset_mask`` layer 0 (so the layer's output starts at 0 before ``output_proj``'s bias), the
    projections Glorot-uniform with bias 0, the depth-wise convolution as PyTorch's; from ``rng``, in
    ``dtype``. The parameters have DCNv4's names, so its state dicts load (as NumPy arrays). As DCNv4's,
    the output must have the input's size.
    """

    def __init__(self, channels=64, kernel_size=3, stride=1, pad=1, dilation=1, group=4, offset_scale=1.0,
                 dw_kernel_size=None, center_feature_scale=False, remove_center=False, output_bias=True,
                 without_pointwise=False, rng=None, dtype=np.float32):
        points = _dcn_geometry(channels, kernel_size, group, remove_center)
        rng = np.random.default_rng(rng)
        self.channels, self.kernel_size, self.stride, self.pad = channels, kernel_size, stride, pad
        self.dilation, self.group, self.offset_scale = dilation, group, offset_scale
        self.remove_center, self.center_feature_scale = bool(remove_center), center_feature_scale
        self.dw_kernel_size, self.without_pointwise = dw_kernel_size, without_pointwise
        if center_feature_scale:
            self.center_feature_scale_proj_weight = Parameter(np.zeros((group, channels), dtype))
            self.center_feature_scale_proj_bias = Parameter(np.zeros(group, dtype))
        if dw_kernel_size is not None:
            self.offset_mask_dw = _depthwise(channels, dw_kernel_size, rng, dtype)
        self.offset_mask = _zero_linear(channels, -(-3 * group * points // 8) * 8, dtype)
        if not without_pointwise:
            self.value_proj = _projection(channels, rng, dtype)
            self.output_proj = _projection(channels, rng, dtype, bias=output_bias)

    def forward(self, input, shape=None):
        input = functional._tensor(input)
        images, tokens, channels = input.shape
        height, width = (math.isqrt(tokens),) * 2 if shape is None else shape
        if height * width != tokens:
            raise ValueError(f"shape = {(height, width)} must give the input's {tokens} tokens")
        x = input if self.without_pointwise else self.value_proj(input)
        x = functional.reshape(x, (images, height, width, channels))
        query = input
        if self.dw_kernel_size is not None:
            planes = functional.permute(functional.reshape(input, (images, height, width, channels)),
                                        (0, 3, 1, 2))
            query = functional.permute(self.offset_mask_dw(planes), (0, 2, 3, 1))
        offset_mask = functional.reshape(self.offset_mask(query), (images, height, width, -1))
        k, s, p, d = self.kernel_size, self.stride, self.pad, self.dilation
        output = functional.dcnv4(x, offset_mask, k, k, s, s, p, p, d, d, self.group, channels // self.group,
                                  self.offset_scale, self.remove_center)
        if self.center_feature_scale:
            output = _blend_with_centre_features(output, x, output, self.center_feature_scale_proj_weight,
                                                 self.center_feature_scale_proj_bias, self.group)
        output = functional.reshape(output, (images, tokens, channels))
        return output if self.without_pointwise else self.output_proj(output)

    def extra_repr(self):
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"pad={self.pad}, dilation={self.dilation}, group={self.group}, "
                f"offset_scale={self.offset_scale}, remove_center={self.remove_center}")
