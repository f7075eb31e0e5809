"""PyTorch adapter: our operators as ``torch.library`` custom operators (``torch.ops.numba_droi.<name>``,
with a fake implementation and an autograd formula: torch.compile, torch.export and fx trace them),
functions and ``torch.nn.Module`` layers, with the names and signatures of torchvision and mmcv. The
functions, the operators' layers, ``DeformConv2d`` and ``MultiScaleRoIAlign`` also compile with
``torch.jit.script``. Import it explicitly (``import numba_droi.torch``): it needs torch.

Every operator of ``numba_droi.registry`` is here as a function of its name and, where it has one, a
layer of its ``module`` name (options at construction, tensors at the call), with the signature of our
array-level operator; for an operator that torchvision has, the boxes argument is named ``boxes`` as
torchvision's. That gives torchvision's ``roi_align``, ``RoIAlign``, ``roi_pool``, ``RoIPool``,
``ps_roi_pool``, ``PSRoIPool``, ``ps_roi_align``, ``PSRoIAlign``, ``deform_conv2d``, and mmcv's
``deform_roi_pool`` and ``DeformRoIPool`` (with our fused ``mask`` as a last, optional argument),
``roi_align_rotated`` and ``RoIAlignRotated``; ``deform_psroi_pool``, ``DeformPSRoIPool``,
``roi_align_max`` (mmcv's ``roi_align`` with ``pool_mode="max"``) and ``RoIAlignMax`` are ours.
Written here by hand: Detectron2's ``ROIAlignRotated`` (angles in degrees); torchvision's
``MultiScaleRoIAlign`` and ``DeformConv2d``; mmcv's ``DeformRoIPoolPack``, ``ModulatedDeformRoIPoolPack``,
``modulated_deform_conv2d``, ``ModulatedDeformConv2d``, ``ModulatedDeformConv2dPack`` and
``DeformConv2dPack``; and Deformable ConvNets' deformable PS RoI pooling as mmdet v1 wrapped it
(``deform_roi_pooling``, ``DeformRoIPooling``).

``use_for_torchvision()`` goes the other way: torchvision's own operators (``torchvision::roi_align``
and its siblings) served by our kernels, for code that calls torchvision.

Where the names clash, torchvision wins: ``deform_conv2d`` and ``DeformConv2d`` are torchvision's
(``DeformConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
bias=True)(input, offset, mask=None)``, offset groups read from the offset), not mmcv's
(``deform_groups``, no bias, ``forward(x, offset)``); mmcv's ``DeformConv2dPack`` keeps mmcv's
signature.

Boxes are a ``(K, 5)`` tensor ``[batch_index, x1, y1, x2, y2]`` or, as torchvision allows, a list of
``(L, 4)`` tensors, one per image. Memory is exchanged with DLPack both ways, without copies: a CPU
tensor is viewed as a NumPy array, a CUDA tensor as a CuPy array (``numba_droi[cuda12]``), our operator
runs on that view, and its result becomes a tensor sharing the result's memory. On CUDA our kernels,
and CuPy's work around them, run on torch's current stream of the tensor's device, so they are ordered
with torch's own work without any synchronisation. Inputs that are not C-contiguous are copied once
(the kernels read contiguous memory). Boxes that require a gradient get one from ``roi_align``,
``deform_roi_pool`` and ``prroi_pool`` (the derivative of the output in the box corners; no peer gives
one for the first two); the other operators' boxes get none, as torchvision's.

As torchvision's operators: half-precision tensors (float16, bfloat16; under ``torch.autocast`` too,
where the layers before give them) are computed in float32 and the result returned in the dtype of
the operator's first array (the features); on the CPU our kernels use ``torch.get_num_threads()``
threads; a bad argument raises an error that is also a ``RuntimeError`` (``BadArgument``, a
``ValueError``, and ``BadArgumentType``, a ``TypeError``), as torch's own checks raise.
"""
import ast
import contextlib
import inspect
import linecache
import math
import numbers
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch._jit_internal import BroadcastingList2  # noqa: F401 (in the generated functions' types)
from torch.nn.modules.utils import _pair

from . import _backend, ops, registry


# -- exchanging memory -------------------------------------------------------------------------------

def _array(tensor):
    """A NumPy (CPU tensor) or CuPy (CUDA tensor) array viewing ``tensor``'s memory; None stays None."""
    return None if tensor is None else _backend.from_dlpack(tensor.detach(), tensor.is_cuda)


def _tensor(array):
    """A tensor sharing ``array``'s memory; None stays None."""
    return None if array is None else torch.from_dlpack(array)


def _stream(tensor):
    """On a CUDA tensor: run inside on torch's current stream of its device."""
    if not tensor.is_cuda:
        return contextlib.nullcontext()
    return _backend.external_stream(torch.cuda.current_stream(tensor.device).cuda_stream,
                                    tensor.device.index)


def _rois(boxes, columns=5):
    """torchvision's boxes as a ``(K, 5)`` tensor: a ``(K, 5)`` tensor ``[batch_index, x1, y1, x2, y2]``
    as it is, or a list of ``(L_i, 4)`` tensors ``[x1, y1, x2, y2]``, one per image, whose rows get
    batch index ``i`` (rotated boxes: ``columns = 6``, lists of ``(L_i, 5)``)."""
    if isinstance(boxes, torch.fx.Proxy):  # symbolic tracing: a tensor, checked by the operator
        return boxes
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.size(1) != columns:
            raise BadArgument(f"boxes must be a Tensor[K, {columns}] or a list of Tensor[L, {columns - 1}], "
                              f"got a tensor of shape {tuple(boxes.shape)}")
        return boxes
    boxes = list(boxes)
    shapes = [tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__ for b in boxes]
    if not boxes or not all(isinstance(b, torch.Tensor) and b.dim() == 2 and b.size(1) == columns - 1
                            for b in boxes):
        raise BadArgument(f"boxes must be a Tensor[K, {columns}] or a non-empty list of "
                          f"Tensor[L, {columns - 1}], got a list of {shapes}")
    batch = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
    return torch.cat([batch, torch.cat(boxes)], dim=1)


# -- as torch's own operators: half precision in float32, torch's threads, RuntimeErrors ---------------

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _follow_torch_threads(tensor):
    """On the CPU, use as many threads as torch does (``torch.set_num_threads``)."""
    if not tensor.is_cuda:
        _backend.set_num_threads(torch.get_num_threads())


class BadArgument(ValueError, RuntimeError):
    """A bad argument value or shape: a ``ValueError``, and a ``RuntimeError`` as torch's checks raise."""


class BadArgumentType(TypeError, RuntimeError):
    """An argument of a bad type or dtype: a ``TypeError``, and a ``RuntimeError`` as torch raises."""


@contextlib.contextmanager
def _torch_errors():
    """Our ValueErrors and TypeErrors, with their messages and tracebacks, as ``BadArgument`` and
    ``BadArgumentType``."""
    try:
        yield
    except (ValueError, TypeError) as error:
        if isinstance(error, RuntimeError):
            raise
        kind = BadArgumentType if isinstance(error, TypeError) else BadArgument
        raise kind(*error.args).with_traceback(error.__traceback__) from None


# -- every operator of the registry: a custom operator, a function and a layer -----------------------

# Each operator is a torch.library custom operator, ``torch.ops.numba_droi.<name>(*arrays, options)``,
# with its backward, ``torch.ops.numba_droi.<name>_backward(grad_output, *arrays, kept, options,
# wanted)`` (the gradients of the ``wanted`` arrays, comma-separated names; ``kept``: what the forward
# kept for it, see ``_define``): torch.compile, torch.export and fx
# see them as single operators, given a fake implementation (the output's shape) and the autograd
# formula. The options travel as the ``repr`` of a dict (a string: a constant for the compilers).

def _given(operator, tensors):
    return dict(zip(operator.arrays, tensors))


def _run(operator, given, compute):
    """``compute(arrays)`` on our arrays viewing ``given``'s tensors (half ones in float32), on
    torch's threads and stream, with our errors as torch's."""
    device_tensor = next(t for t in given.values() if t is not None)
    _follow_torch_threads(device_tensor)
    arrays = {name: _array(t.float() if t is not None and t.dtype in HALF_DTYPES else t)
              for name, t in given.items()}
    with _stream(device_tensor), _torch_errors():
        return compute(arrays)


def _define(operator):
    """The custom operator of ``operator``. Where its forward keeps arrays for the backward (roi_pool's
    argmax), the custom operator returns them too, ``(output, [kept, ...])``, and its backward
    takes them."""
    arrays = ", ".join(f"Tensor{'?' if name in operator.optional else ''} {name}" for name in operator.arrays)
    features = operator.arrays[0]
    kept = [name for name, _ in operator.kept]

    def forward(*args):
        given, options = _given(operator, args[:-1]), ast.literal_eval(args[-1])
        output, saved = _run(operator, given, lambda a: operator.forward_saving(
            ops, a, options, operator.differentiable if kept else ()))
        output = _tensor(output).to(given[features].dtype)
        return (output, [_tensor(saved[name]) for name in kept]) if kept else output

    def forward_fake(*args):
        given, options = _given(operator, args[:-1]), ast.literal_eval(args[-1])
        shapes = {name: None if t is None else tuple(t.shape) for name, t in given.items()}
        output = given[features].new_empty(operator.output_shape(shapes, options))
        return (output, [output.new_empty(output.shape, dtype=getattr(torch, np.dtype(dtype).name))
                         for _, dtype in operator.kept]) if kept else output

    def backward(grad_output, *args):
        given, kept_tensors = _given(operator, args[:-3]), args[-3]
        options, wanted = ast.literal_eval(args[-2]), args[-1].split(",")
        grads = _run(operator, dict(given, grad_output=grad_output, **dict(zip(kept, kept_tensors))),
                     lambda a: operator.vjp(ops, a.pop("grad_output"), a, options, wanted))
        return [_tensor(grads[name]).to(given[name].dtype) for name in wanted]

    def backward_fake(grad_output, *args):
        given, wanted = _given(operator, args[:-3]), args[-1].split(",")
        return [given[name].new_empty(given[name].shape) for name in wanted]

    forward_op = torch.library.custom_op(
        f"numba_droi::{operator.name}", forward, mutates_args=(),
        schema=f"({arrays}, str options) -> {'(Tensor, Tensor[])' if kept else 'Tensor'}")
    forward_op.register_fake(forward_fake)
    backward_op = torch.library.custom_op(
        f"numba_droi::{operator.name}_backward", backward, mutates_args=(),
        schema=f"(Tensor grad_output, {arrays}, Tensor[] kept, str options, str wanted) -> Tensor[]")
    backward_op.register_fake(backward_fake)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:-1], *(output[1] if kept else ()))
        ctx.options = inputs[-1]

    def gradients(ctx, grad_output, *_):  # nothing comes back to the kept arrays
        tensors = ctx.saved_tensors[:len(operator.arrays)]
        wanted = [name for name, tensor, needed in zip(operator.arrays, tensors, ctx.needs_input_grad)
                  if needed and name in operator.differentiable and tensor is not None]
        if not wanted:
            return (None,) * (len(tensors) + 1)
        grads = dict(zip(wanted, backward_op(grad_output, *tensors, list(ctx.saved_tensors[len(tensors):]),
                                             ctx.options, ",".join(wanted))))
        return tuple(grads.get(name) for name in operator.arrays) + (None,)

    forward_op.register_autograd(gradients, setup_context=setup_context)
    return forward_op


CUSTOM_OPS = {operator.name: _define(operator) for operator in registry.OPERATORS}


def _plain(value):
    """An option as a plain Python constant, whose ``repr`` ``ast.literal_eval`` reads back."""
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (tuple, list, torch.Size)):
        return tuple(_plain(v) for v in value)
    raise BadArgumentType(f"options must be numbers, booleans or tuples of them, got {value!r}")


def _signature(operator):
    """The operator's signature, with torchvision's name ``boxes`` for ``rois`` where torchvision has
    the operator."""
    signature = inspect.signature(operator.forward)
    if "torchvision" not in operator.peers:
        return signature
    return signature.replace(parameters=[p.replace(name="boxes") if p.name == "rois" else p
                                         for p in signature.parameters.values()])


# The functions and the layers' forwards are generated as source text (registered with linecache, so
# that TorchScript, which compiles from source, reads it), with TorchScript's types: called in Python
# they check and convert their arguments as torch users expect (``_rois``, ``_plain``); scripted, they
# build the same options text with TorchScript's ``str`` (which writes floats to 17 digits, so that
# ``ast.literal_eval`` gives the same values back).

# TorchScript types of options, by name; those with a default not named here take its type
_OPTION_TYPES = {"output_size": "BroadcastingList2[int]", "stride": "BroadcastingList2[int]",
                 "padding": "BroadcastingList2[int]", "dilation": "BroadcastingList2[int]",
                 "spatial_scale": "float", "part_size": "Optional[int]",
                 **{name: "int" for name in ("output_dim", "group_size", "pooled_size", "kernel_h",
                                             "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w",
                                             "dilation_h", "dilation_w", "group", "group_channels")}}
_DEFAULT_TYPES = {bool: "bool", int: "int", float: "float"}


def _option_type(parameter):
    if parameter.name in _OPTION_TYPES:
        return _OPTION_TYPES[parameter.name]
    if type(parameter.default) not in _DEFAULT_TYPES:
        raise TypeError(f"option {parameter.name!r} has no TorchScript type: name it in _OPTION_TYPES")
    return _DEFAULT_TYPES[type(parameter.default)]


def _array_type(operator, name):
    if name == "rois":
        return "Union[Tensor, List[Tensor]]"
    return "Optional[Tensor]" if name in operator.optional else "Tensor"


def _parameter_text(name, annotation, parameter):
    default = "" if parameter.default is parameter.empty else f" = {parameter.default!r}"
    return f"{name}: {annotation}{default}"


def _as_rois(boxes: Union[Tensor, List[Tensor]], columns: int) -> Tensor:
    """``_rois`` in Python; scripted, the same conversion (the operator checks the shapes)."""
    if not torch.jit.is_scripting():
        return _rois(boxes, columns)
    if isinstance(boxes, torch.Tensor):
        return boxes
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])


def _options_text(options):
    """The options as the custom operators take them: the ``repr`` of a dict of plain constants."""
    return repr({name: _plain(value) for name, value in options.items()})


def _generated(name, source, namespace, place):
    """The function ``name`` defined by ``source`` in ``namespace``, its text kept for TorchScript under
    a file name of its own that says what ``place`` it has."""
    filename = f"<numba_droi.torch: generated {place}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 (our own generated text)
    return namespace.pop(name)


def _function(operator):
    signature = _signature(operator)
    names = {name: "rois" if name == "boxes" else name for name in signature.parameters}  # ours -> the op's
    parameters = [_parameter_text(name, _array_type(operator, original) if original in operator.arrays
                                  else _option_type(signature.parameters[name]), signature.parameters[name])
                  for name, original in names.items()]
    given = {original: name for name, original in names.items()}
    arrays = [f"_as_rois({given['rois']}, {operator.box_columns})" if name == "rois" else given[name]
              for name in operator.arrays]
    scripted = ' + ", " + '.join(f'"{name!r}: " + str({given[name]})' for name in operator.options)
    eager = ", ".join(f"{name!r}: {given[name]}" for name in operator.options)
    call = (f"torch.ops.numba_droi.{operator.name}({', '.join(arrays)}, options)"
            f"{'[0]' if operator.kept else ''}")  # (the output, not what the forward kept)
    source = "\n".join([
        f"def {operator.name}({', '.join(parameters)}) -> Tensor:",
        "    if torch.jit.is_scripting():",
        f"        options = \"{{\" + {scripted or repr('')} + \"}}\"",
        "    else:",
        f"        options = _options_text({{{eager}}})",
        f"    return {call}", ""])
    apply = _generated(operator.name, source, globals(), operator.name)
    apply.__module__ = __name__
    apply.__doc__ = (f"``numba_droi.{operator.name}`` on tensors, differentiable in "
                     f"{', '.join(operator.differentiable)}.\n\n{operator.forward.__doc__ or ''}")
    return apply


def _forward(operator):
    """The forward of ``operator``'s layer: its arrays (the optional ones after the last required one
    defaulting to None), its options from the layer's attributes."""
    signature, arrays = _signature(operator), _arrays_signature(operator)
    parameters = ["self"] + [_parameter_text(name, _array_type(operator, name.replace("boxes", "rois")), p)
                             for name, p in arrays.parameters.items()]
    arguments = [name if name in arrays.parameters else f"self.{name}" for name in signature.parameters]
    source = (f"def forward({', '.join(parameters)}) -> Tensor:\n"
              f"    return {operator.name}({', '.join(arguments)})\n")
    return _generated("forward", source, globals(), f"{operator.module}.forward")


class OperatorModule(nn.Module):
    """The layer of an operator of the registry (``operator``; one subclass per operator): its options
    at construction, its tensors at the call (an optional one defaulting to None)."""

    operator = None

    def __init__(self, *args, **kwargs):
        super().__init__()
        signature = _options_signature(self.operator)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        for name, value in bound.arguments.items():  # (a float option given as an int: a float, as
            if _option_type(signature.parameters[name]) == "float":  # TorchScript's types want)
                value = float(value)
            setattr(self, name, value)

    def extra_repr(self):
        return ", ".join(f"{name}={getattr(self, name)}" for name in self.operator.options)


def _options_signature(operator):
    return inspect.Signature([p for p in _signature(operator).parameters.values()
                              if p.name in operator.options])


def _arrays_signature(operator):
    """The forward's arrays, the optional ones after the last required one defaulting to None."""
    parameters = [p for p in _signature(operator).parameters.values() if p.name not in operator.options]
    names = [p.name.replace("boxes", "rois") for p in parameters]
    last_required = max(i for i, name in enumerate(names) if name not in operator.optional)
    return inspect.Signature([p.replace(default=None) if i > last_required else p.replace(default=p.empty)
                              for i, p in enumerate(parameters)])


# name -> the operator's function and, where it has one, its layer
FUNCTIONS = {operator.name: _function(operator) for operator in registry.OPERATORS}
MODULES = {operator.name: type(operator.module, (OperatorModule,), {
    "operator": operator, "__module__": __name__, "forward": _forward(operator),
    "__doc__": f"``{operator.name}`` as a layer: ``{operator.module}{_options_signature(operator)}"
               f"{_arrays_signature(operator)}``."})
    for operator in registry.OPERATORS if operator.module}
globals().update(FUNCTIONS)
globals().update((cls.__name__, cls) for cls in MODULES.values())

__all__ = (list(FUNCTIONS) + [cls.__name__ for cls in MODULES.values()]
           + ["BadArgument", "BadArgumentType", "DeformConv2d", "ROIAlignRotated", "MultiScaleRoIAlign",
              "DeformRoIPoolPack",
              "ModulatedDeformRoIPoolPack", "modulated_deform_conv2d",
              "ModulatedDeformConv2d", "ModulatedDeformConv2dPack", "DeformConv2dPack", "deform_roi_pooling",
              "DeformRoIPooling", "multi_scale_deformable_attn", "MultiScaleDeformableAttention",
              "ms_deform_attn_grid_sample", "dcnv3_grid_sample", "DCNv3", "DCNv4", "use_for_torchvision"])


# -- layers written by hand ------------------------------------------------------------------------------

class _Convolution(nn.Module):
    """Parameters and geometry of a deformable convolution layer: ``weight`` (out_channels,
    in_channels // groups, kh, kw) and an optional ``bias``, left for subclasses to initialise."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups = {groups} must divide in_channels = {in_channels} and "
                             f"out_channels = {out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)

    @property
    def fan_in(self):
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")


class DeformConv2d(_Convolution):
    """``deform_conv2d`` as a layer, as ``torchvision.ops.DeformConv2d``: ``forward(input, offset,
    mask=None)``; the weight initialised as ``torch.nn.Conv2d``'s (Kaiming-uniform with ``a =
    sqrt(5)``), the bias uniform in ``+-1/sqrt(fan_in)``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.fan_in) if self.fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return deform_conv2d(  # noqa: F821 (one of FUNCTIONS, made a global above)
            input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)


# -- mmcv's layers ----------------------------------------------------------------------------------------

def _zeroed(linear):
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class DeformRoIPoolPack(MODULES["deform_roi_pool"]):
    """Deformable RoI pooling predicting its offsets, as ``mmcv.ops.DeformRoIPoolPack``: the plain
    pooling of each box (``roi_align(aligned=True)``) feeds FC-ReLU-FC-ReLU-FC (``offset_fc``, the last
    zero-initialised, the others as ``torch.nn.Linear``), whose ``(K, 2, PH, PW)`` output offsets the
    second pooling. ``output_channels`` is the input's channel count."""

    def __init__(self, output_size, output_channels, deform_fc_channels=1024, spatial_scale=1.0,
                 sampling_ratio=0, gamma=0.1):
        super().__init__(_pair(output_size), spatial_scale, sampling_ratio, gamma)
        self.output_channels, self.deform_fc_channels = output_channels, deform_fc_channels
        bins = self.output_size[0] * self.output_size[1]
        self.offset_fc = nn.Sequential(
            nn.Linear(bins * output_channels, deform_fc_channels), nn.ReLU(inplace=True),
            nn.Linear(deform_fc_channels, deform_fc_channels), nn.ReLU(inplace=True),
            _zeroed(nn.Linear(deform_fc_channels, bins * 2)))

    def _pooled_rows(self, input, rois):
        if input.size(1) != self.output_channels:
            raise ValueError(f"input must have output_channels = {self.output_channels} channels, got "
                             f"input of shape {tuple(input.shape)}")
        pooled = super().forward(input, rois)
        return pooled.reshape(pooled.size(0), -1)

    def forward(self, input, rois):
        rows = self._pooled_rows(input, rois)
        offset = self.offset_fc(rows).view(rows.size(0), 2, *self.output_size)
        return super().forward(input, rois, offset)


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """``DeformRoIPoolPack`` with a mask per bin (DCNv2), as ``mmcv.ops.ModulatedDeformRoIPoolPack``:
    ``mask_fc`` (FC-ReLU-FC-Sigmoid, the last FC zero-initialised, so the mask starts at 0.5) of the
    same pooled rows. mmcv multiplies the pooled output by the mask; we pass it to ``deform_roi_pool``,
    which applies it in the kernel: the same values and gradients."""

    def __init__(self, output_size, output_channels, deform_fc_channels=1024, spatial_scale=1.0,
                 sampling_ratio=0, gamma=0.1):
        super().__init__(output_size, output_channels, deform_fc_channels, spatial_scale,
                         sampling_ratio, gamma)
        bins = self.output_size[0] * self.output_size[1]
        self.mask_fc = nn.Sequential(
            nn.Linear(bins * output_channels, deform_fc_channels), nn.ReLU(inplace=True),
            _zeroed(nn.Linear(deform_fc_channels, bins)), nn.Sigmoid())

    def forward(self, input, rois):
        rows = self._pooled_rows(input, rois)
        offset = self.offset_fc(rows).view(rows.size(0), 2, *self.output_size)
        mask = self.mask_fc(rows).view(rows.size(0), 1, *self.output_size)
        return FUNCTIONS["deform_roi_pool"](input, rois, offset, self.output_size, self.spatial_scale,
                                            self.sampling_ratio, self.gamma, mask)


def modulated_deform_conv2d(input, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1,
                            groups=1, deform_groups=1):
    """``numba_droi.deform_conv2d`` with mmcv's ``modulated_deform_conv2d`` signature. ``groups`` and
    ``deform_groups`` must agree with the shapes of ``weight`` and ``offset`` (our operator reads them
    from there): ValueError otherwise."""
    taps = weight.size(2) * weight.size(3)
    if weight.size(1) * groups != input.size(1):
        raise ValueError(f"groups = {groups} does not match input channels {input.size(1)} and weight "
                         f"of shape {tuple(weight.shape)}")
    if offset.size(1) != 2 * deform_groups * taps:
        raise ValueError(f"deform_groups = {deform_groups} needs offset.shape[1] = "
                         f"{2 * deform_groups * taps}, got {offset.size(1)}")
    return FUNCTIONS["deform_conv2d"](input, offset, weight, bias, stride, padding, dilation, mask)


class ModulatedDeformConv2d(_Convolution):
    """Modulated deformable convolution (DCNv2) as a layer, as ``mmcv.ops.ModulatedDeformConv2d``:
    ``forward(x, offset, mask)``; weight uniform in ``+-1/sqrt(in_channels * kh * kw)``, bias zero."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 deform_groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.deform_groups = deform_groups
        self.init_weights()

    def init_weights(self):
        bound = 1 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x, offset, mask):
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride,
                                       self.padding, self.dilation, self.groups, self.deform_groups)

    def extra_repr(self):
        return f"{super().extra_repr()}, deform_groups={self.deform_groups}"


def _offset_conv(layer, channels_per_tap):
    """mmcv's ``conv_offset`` of a pack: a zero-initialised ``torch.nn.Conv2d`` of the layer's kernel,
    stride, padding and dilation giving ``channels_per_tap`` channels per tap and offset group."""
    conv = nn.Conv2d(layer.in_channels,
                     layer.deform_groups * channels_per_tap * layer.kernel_size[0] * layer.kernel_size[1],
                     layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=True)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ModulatedDeformConv2dPack(ModulatedDeformConv2d):
    """``ModulatedDeformConv2d`` predicting its offsets and mask, as
    ``mmcv.ops.ModulatedDeformConv2dPack``: a zero-initialised ``conv_offset`` gives ``3 *
    deform_groups * kh * kw`` channels, the first two thirds the offsets, the last the mask before a
    sigmoid (so training starts from half the plain convolution)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conv_offset = _offset_conv(self, 3)

    def forward(self, x):
        offset, mask = torch.split(self.conv_offset(x), 2 * self.conv_offset.out_channels // 3, dim=1)
        return super().forward(x, offset, torch.sigmoid(mask))


class DeformConv2dPack(_Convolution):
    """Deformable convolution (DCNv1) predicting its offsets, as ``mmcv.ops.DeformConv2dPack``
    (mmcv's ``DeformConv2d`` signature, which this module does not otherwise export: ``deform_groups``,
    ``bias=False``; ``im2col_step`` is accepted and has no effect): a zero-initialised ``conv_offset``
    gives the offsets, so training starts from the plain convolution. The weight is initialised as
    mmcv's (Kaiming-uniform for ReLU: ``+-sqrt(6 / fan_in)``); ``bias=True`` (which mmcv refuses) adds
    a zero-initialised bias."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 deform_groups=1, bias=False, im2col_step=32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.deform_groups, self.im2col_step = deform_groups, im2col_step
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.conv_offset = _offset_conv(self, 2)

    def forward(self, x):
        return FUNCTIONS["deform_conv2d"](x, self.conv_offset(x), self.weight, self.bias, self.stride,
                                          self.padding,
                             self.dilation)

    def extra_repr(self):
        return f"{super().extra_repr()}, deform_groups={self.deform_groups}"


# -- deformable PS RoI pooling, as Deformable ConvNets (mmdet v1's DeformRoIPooling) --------------------

def deform_roi_pooling(data, rois, offset, spatial_scale, out_size, out_channels, no_trans, group_size=1,
                       part_size=None, sample_per_part=4, trans_std=0.0):
    """``numba_droi.deform_psroi_pool`` on tensors, with the signature of mmdet v1's
    ``deform_roi_pooling`` (Deformable ConvNets' ``DeformablePSROIPooling``): ``out_size`` bins per
    side, ``out_channels`` output channels, ``offset`` the ``(K, 2 * num_classes, part_size,
    part_size)`` part offsets (ignored, and may be None, when ``no_trans``). Differentiable in
    ``data`` and ``offset``."""
    return FUNCTIONS["deform_psroi_pool"](data, rois, None if no_trans else offset, spatial_scale,
                                          out_channels, group_size, out_size, part_size, sample_per_part,
                                          trans_std, bool(no_trans))


class DeformRoIPooling(nn.Module):
    """``deform_roi_pooling`` as a layer, as mmdet v1's ``DeformRoIPooling``: ``forward(data, rois,
    offset=None)``."""

    def __init__(self, spatial_scale, out_size, out_channels, no_trans, group_size=1, part_size=None,
                 sample_per_part=4, trans_std=0.0):
        super().__init__()
        self.spatial_scale, self.out_size, self.out_channels = spatial_scale, out_size, out_channels
        self.no_trans, self.group_size = no_trans, group_size
        self.part_size = out_size if part_size is None else part_size
        self.sample_per_part, self.trans_std = sample_per_part, trans_std

    def forward(self, data, rois, offset=None):
        return deform_roi_pooling(data, rois, offset, self.spatial_scale, self.out_size,
                                  self.out_channels, self.no_trans, self.group_size, self.part_size,
                                  self.sample_per_part, self.trans_std)

    def extra_repr(self):
        return (f"spatial_scale={self.spatial_scale}, out_size={self.out_size}, "
                f"out_channels={self.out_channels}, no_trans={self.no_trans}, "
                f"group_size={self.group_size}, part_size={self.part_size}, "
                f"sample_per_part={self.sample_per_part}, trans_std={self.trans_std}")


# -- multi-scale deformable attention, as mmcv --------------------------------------------------------------

class ROIAlignRotated(nn.Module):
    """Detectron2's ``ROIAlignRotated(output_size, spatial_scale, sampling_ratio)(input, rois)``: rois
    ``(K, 6) = [batch_index, cx, cy, w, h, angle]`` with the angle in degrees (counter-clockwise),
    always aligned; ``roi_align_rotated`` of the angle in radians."""

    def __init__(self, output_size, spatial_scale, sampling_ratio):
        super().__init__()
        self.output_size, self.spatial_scale, self.sampling_ratio = output_size, spatial_scale, sampling_ratio

    def forward(self, input, rois):
        rois = _rois(rois, 6)
        radians = torch.cat([rois[:, :5], rois[:, 5:] * (math.pi / 180)], dim=1)
        return FUNCTIONS["roi_align_rotated"](input, radians, self.output_size, self.spatial_scale,
                                              self.sampling_ratio, aligned=True)

    def extra_repr(self):
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}")


# ops.infer_scales and ops.map_levels for TorchScript (which compiles neither NumPy nor np.errstate):
# the same formulas on torch's types; the scripted layer's tests hold them equal.

def _scripted_scales(heights: List[int],
                     image_shapes: List[Tuple[int, int]]) -> Tuple[List[float], int, int]:
    tallest = max([height for height, _ in image_shapes])
    scales = [2.0 ** float(torch.round(torch.log2(torch.tensor(height / tallest, dtype=torch.float32))))
              for height in heights]
    for i, scale in enumerate(scales):
        if scale != scales[0] / 2 ** i:
            raise ValueError("the features' inferred scales must halve from each level to the next")
    ends = torch.log2(torch.tensor([scales[0], scales[-1]], dtype=torch.float32))
    return scales, int(-float(ends[0])), int(-float(ends[1]))


def _scripted_levels(rois: Tensor, k_min: int, k_max: int, canonical_scale: float,
                     canonical_level: int) -> Tensor:
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    level = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_scale)
                        + torch.tensor(1e-6, dtype=area.dtype))
    level = torch.where(torch.isnan(level), torch.full_like(level, k_min - 1),
                        torch.clip(level, k_min, k_max))
    return level.to(torch.int32) - k_min


class MultiScaleRoIAlign(nn.Module):
    """torchvision's ``MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio, *,
    canonical_scale=224, canonical_level=4)`` on our ``roi_align``: ``forward(x, boxes, image_shapes)``
    pools each box of ``boxes`` (a list of ``(L_i, 4)`` tensors, one per image, or a ``(K, 5)`` tensor)
    from the level of ``x`` (a dict of features) that its size maps to (``numba_droi.map_levels``), at
    the scale inferred from the level's height and the largest of ``image_shapes``."""

    def __init__(self, featmap_names, output_size, sampling_ratio, *, canonical_scale=224, canonical_level=4):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = _pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale, self.canonical_level = float(canonical_scale), canonical_level

    def forward(self, x: Dict[str, Tensor], boxes: Union[Tensor, List[Tensor]],
                image_shapes: List[Tuple[int, int]]) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        rois = _as_rois(boxes, 5)
        if torch.jit.is_scripting():
            scales, k_min, k_max = _scripted_scales([f.shape[-2] for f in features], image_shapes)
            level = _scripted_levels(rois, k_min, k_max, self.canonical_scale, self.canonical_level)
        else:
            with _torch_errors():
                scales, k_min, k_max = ops.infer_scales([f.shape for f in features], image_shapes)
            level = ops.map_levels(rois, k_min, k_max, self.canonical_scale, self.canonical_level, xp=torch)
        result = torch.zeros([rois.shape[0], features[0].shape[1], self.output_size[0], self.output_size[1]],
                             dtype=features[0].dtype, device=features[0].device)
        for index, feature in enumerate(features):
            chosen = torch.where(level == index)[0]
            result = result.index_put((chosen,), roi_align(  # noqa: F821 (one of FUNCTIONS)
                feature, rois[chosen], self.output_size, scales[index], self.sampling_ratio).to(result.dtype))
        return result

    def extra_repr(self):
        return (f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}")


def multi_scale_deformable_attn(value, value_spatial_shapes, value_level_start_index, sampling_locations,
                                attention_weights, im2col_step=64):
    """``numba_droi.ms_deform_attn`` on tensors with the arguments of mmcv's
    ``MultiScaleDeformableAttnFunction`` (``im2col_step`` is accepted and has no effect);
    differentiable in value, sampling_locations and attention_weights."""
    return FUNCTIONS["ms_deform_attn"](value, value_spatial_shapes, value_level_start_index,
                                       sampling_locations, attention_weights)


def ms_deform_attn_grid_sample(value, spatial_shapes, sampling_locations, attention_weights):
    """The same attention in plain PyTorch, level by level with ``torch.nn.functional.grid_sample``
    (``padding_mode="zeros"``, ``align_corners=False``): the formulation that Deformable DETR and mmcv
    ship as their fallback, here as the peer our operator is tested and measured against. It builds a
    ``(N*M, D, Lq, L*P)`` tensor of samples."""
    images, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [int(height) * int(width) for height, width in spatial_shapes]
    grids = 2 * sampling_locations - 1
    samples = []
    for level, ((height, width), rows) in enumerate(zip(spatial_shapes.tolist(), value.split(sizes, dim=1))):
        maps = rows.flatten(2).transpose(1, 2).reshape(images * heads, channels, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N*M, Lq, P, 2)
        samples.append(torch.nn.functional.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros",
                                                       align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(images * heads, 1, queries, levels * points)
    output = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(images, heads * channels, queries).transpose(1, 2)


def dcnv3_grid_sample(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                      dilation_w, group, group_channels, offset_scale=1.0, remove_center=False):
    """``dcnv3`` in plain PyTorch with ``torch.nn.functional.grid_sample`` (``padding_mode="zeros"``,
    ``align_corners=False``) on the zero-padded input: the formulation of InternImage's
    ``dcnv3_core_pytorch``, here the peer our operator is tested and measured against. (InternImage's
    pads the rows by ``pad_w`` and the columns by ``pad_h``; here each axis is padded by its own, as its
    CUDA kernel reads them.) It builds an ``(N*group, group_channels, Ho*Wo, K)`` tensor of samples."""
    from .ops.dcnv3_dcnv4 import geometry
    shape = geometry(input.shape, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                     dilation_w, group, group_channels, offset_scale, remove_center)
    images, (out_h, out_w), points = input.shape[0], shape.output, shape.points
    padded = torch.nn.functional.pad(input, [0, 0, pad_w, pad_w, pad_h, pad_h])
    height, width = padded.shape[1:3]
    centre_y, centre_x = dilation_h * (kernel_h - 1) // 2, dilation_w * (kernel_w - 1) // 2
    like = dict(dtype=input.dtype, device=input.device)
    reference_x = (centre_x + 0.5 + torch.arange(out_w, **like) * stride_w) / width
    reference_y = (centre_y + 0.5 + torch.arange(out_h, **like) * stride_h) / height
    taps = torch.tensor(shape.taps(), **like).reshape(-1, 2)
    grid_x = (taps[:, 0] * dilation_w - centre_x) / width
    grid_y = (taps[:, 1] * dilation_h - centre_y) / height
    offset = offset.view(images, out_h, out_w, group, points, 2)
    x = reference_x[:, None, None] + grid_x * offset_scale + offset[..., 0] * offset_scale / width
    y = reference_y[:, None, None, None] + grid_y * offset_scale + offset[..., 1] * offset_scale / height
    grids = (2 * torch.stack([x, y], -1) - 1).view(images, out_h * out_w, group, points, 2)
    grids = grids.transpose(1, 2).flatten(0, 1)  # (N*G, Ho*Wo, K, 2)
    maps = padded.view(images, height * width, group, group_channels).permute(0, 2, 3, 1)
    samples = torch.nn.functional.grid_sample(maps.reshape(images * group, group_channels, height, width),
                                              grids, mode="bilinear", padding_mode="zeros",
                                              align_corners=False)
    weights = mask.view(images, out_h * out_w, group, points).transpose(1, 2).reshape(
        images * group, 1, out_h * out_w, points)
    output = (samples * weights).sum(-1).view(images, group * group_channels, out_h * out_w)
    return output.transpose(1, 2).reshape(images, out_h, out_w, group * group_channels)


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention with its projections (Deformable DETR, Zhu et al., 2020,
    https://arxiv.org/abs/2010.04159), as ``mmcv.ops.MultiScaleDeformableAttention``: the same
    arguments, submodules (``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``, ``dropout``), parameter names and initialisation, so mmcv's checkpoints load;
    ``norm_cfg`` and ``init_cfg`` are accepted and unused.

    ``forward(query, key=None, value=None, identity=None, query_pos=None, key_padding_mask=None,
    reference_points=None, spatial_shapes=None, level_start_index=None)``: ``value`` defaults to
    ``query`` and ``identity`` to ``query`` (before ``query_pos`` is added to it); ``(num_query, bs,
    embed_dims)`` tensors unless ``batch_first``; ``reference_points`` ``(bs, num_query, num_levels,
    2)`` normalised ``(x, y)`` or ``(..., 4)`` boxes ``(cx, cy, w, h)``; returns ``dropout(output_proj(
    attention)) + identity``.
    """

    def __init__(self, embed_dims=256, num_heads=8, num_levels=4, num_points=4, im2col_step=64,
                 dropout=0.1, batch_first=False, norm_cfg=None, init_cfg=None, value_proj_ratio=1.0):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims must be divisible by num_heads, but got {embed_dims} and "
                             f"{num_heads}")
        self.norm_cfg, self.init_cfg = norm_cfg, init_cfg
        self.dropout = nn.Dropout(dropout)
        self.batch_first = batch_first
        self.im2col_step, self.embed_dims = im2col_step, embed_dims
        self.num_levels, self.num_heads, self.num_points = num_levels, num_heads, num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        value_dims = int(embed_dims * value_proj_ratio)
        self.value_proj = nn.Linear(embed_dims, value_dims)
        self.output_proj = nn.Linear(value_dims, embed_dims)
        self.init_weights()

    def init_weights(self):
        """Offsets: weight 0, bias the ring of directions of Deformable DETR; attention weights 0;
        the projections Glorot-uniform with bias 0."""
        from .nn import sampling_offset_ring
        nn.init.zeros_(self.sampling_offsets.weight)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(torch.from_numpy(sampling_offset_ring(
                self.num_heads, self.num_levels, self.num_points).ravel()))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(self, query, key=None, value=None, identity=None, query_pos=None, key_padding_mask=None,
                reference_points=None, spatial_shapes=None, level_start_index=None, **kwargs):
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query, value = query.permute(1, 0, 2), value.permute(1, 0, 2)
        batch, queries, _ = query.shape
        rows = value.shape[1]
        given = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
        if given != rows:
            raise ValueError(f"spatial_shapes give {given} rows, the value has {rows}")
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(batch, rows, self.num_heads, -1)
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points).softmax(-1)
        weights = weights.view(batch, queries, heads, levels, points)
        if reference_points.shape[-1] == 2:
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / normalizer[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"Last dim of reference_points must be 2 or 4, but get "
                             f"{reference_points.shape[-1]} instead.")
        output = multi_scale_deformable_attn(value, spatial_shapes, level_start_index,
                                             locations.to(value.dtype), weights.to(value.dtype))
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity



# -- DCNv3 and DCNv4, as InternImage and DCNv4 build them ---------------------------------------------------

class _Permute(nn.Module):
    def __init__(self, *axes):
        super().__init__()
        self.axes = axes

    def forward(self, input):
        return input.permute(*self.axes)


def _centre_feature_blend(output, projected, query, weight, bias, group):
    """InternImage's centre feature scale: ``output * (1 - s) + projected * s``, ``s = sigmoid(query @
    weight.T + bias)`` per group."""
    scale = torch.sigmoid(torch.nn.functional.linear(query, weight, bias))
    scale = scale[..., None].repeat_interleave(output.shape[-1] // group, -1).flatten(-2)
    return output * (1 - scale) + projected * scale


class DCNv3(nn.Module):
    """``numba_droi.nn.DCNv3`` in torch: InternImage's ``DCNv3`` module (Wang et al., CVPR 2023,
    https://arxiv.org/abs/2211.05778) with its arguments, submodules, parameter names and
    initialisation, so InternImage's checkpoints load; ``forward(input)`` on ``(N, H, W, channels)``
    channels-last tensors. Only ``act_layer="GELU"`` and ``norm_layer="LN"`` are built."""

    def __init__(self, channels=64, kernel_size=3, dw_kernel_size=None, stride=1, pad=1, dilation=1, group=4,
                 offset_scale=1.0, act_layer="GELU", norm_layer="LN", center_feature_scale=False,
                 remove_center=False):
        super().__init__()
        if act_layer != "GELU" or norm_layer != "LN":
            raise ValueError(f"act_layer must be 'GELU' and norm_layer 'LN', got {act_layer!r} and "
                             f"{norm_layer!r}")
        from .nn import _dcn_geometry
        points = _dcn_geometry(channels, kernel_size, group, remove_center)
        self.channels, self.kernel_size, self.stride, self.pad = channels, kernel_size, stride, pad
        self.dilation, self.group, self.group_channels = dilation, group, channels // group
        self.offset_scale, self.remove_center = offset_scale, bool(remove_center)
        self.center_feature_scale = center_feature_scale
        dw_kernel_size = kernel_size if dw_kernel_size is None else dw_kernel_size
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, dw_kernel_size, padding=(dw_kernel_size - 1) // 2, groups=channels),
            nn.Sequential(_Permute(0, 2, 3, 1), nn.LayerNorm(channels, eps=1e-6)), nn.GELU())
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self._reset_parameters()

    def _reset_parameters(self):
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for projection in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(self, input):
        images, height, width, _ = input.shape
        x = self.input_proj(input)
        query = self.dw_conv(input.permute(0, 3, 1, 2))
        offset = self.offset(query)
        mask = self.mask(query).reshape(images, height, width, self.group, -1).softmax(-1)
        k, s, p, d = self.kernel_size, self.stride, self.pad, self.dilation
        mask = mask.reshape(images, height, width, -1)
        output = FUNCTIONS["dcnv3"](x, offset, mask, k, k, s, s, p, p, d, d, self.group, self.group_channels,
                                    self.offset_scale, self.remove_center)
        if self.center_feature_scale:
            output = _centre_feature_blend(output, x, query, self.center_feature_scale_proj_weight,
                                           self.center_feature_scale_proj_bias, self.group)
        return self.output_proj(output)


class DCNv4(nn.Module):
    """``numba_droi.nn.DCNv4`` in torch: the ``DCNv4`` module (Xiong et al., CVPR 2024,
    https://arxiv.org/abs/2401.06197) with its arguments, submodules, parameter names and
    initialisation, so its checkpoints load; ``forward(input, shape=None)`` on ``(N, L, channels)``
    tokens of an ``(H, W)`` map (default square)."""

    def __init__(self, channels=64, kernel_size=3, stride=1, pad=1, dilation=1, group=4, offset_scale=1.0,
                 dw_kernel_size=None, center_feature_scale=False, remove_center=False, output_bias=True,
                 without_pointwise=False, **kwargs):
        super().__init__()
        from .nn import _dcn_geometry
        points = _dcn_geometry(channels, kernel_size, group, remove_center)
        self.channels, self.kernel_size, self.stride, self.pad = channels, kernel_size, stride, pad
        self.dilation, self.group, self.group_channels = dilation, group, channels // group
        self.offset_scale, self.remove_center = offset_scale, bool(remove_center)
        self.center_feature_scale, self.without_pointwise = center_feature_scale, without_pointwise
        self.dw_kernel_size = dw_kernel_size
        if dw_kernel_size is not None:
            self.offset_mask_dw = nn.Conv2d(channels, channels, dw_kernel_size,
                                            padding=(dw_kernel_size - 1) // 2, groups=channels)
        self.offset_mask = nn.Linear(channels, int(math.ceil(3 * group * points / 8) * 8))
        if not without_pointwise:
            self.value_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self._reset_parameters()

    def _reset_parameters(self):
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        if not self.without_pointwise:
            nn.init.xavier_uniform_(self.value_proj.weight)
            nn.init.zeros_(self.value_proj.bias)
            nn.init.xavier_uniform_(self.output_proj.weight)
            if self.output_proj.bias is not None:
                nn.init.zeros_(self.output_proj.bias)

    def forward(self, input, shape=None):
        images, tokens, channels = input.shape
        height, width = (math.isqrt(tokens),) * 2 if shape is None else shape
        x = input if self.without_pointwise else self.value_proj(input)
        x = x.reshape(images, height, width, -1)
        query = input
        if self.dw_kernel_size is not None:
            planes = input.view(images, height, width, channels).permute(0, 3, 1, 2)
            query = self.offset_mask_dw(planes).permute(0, 2, 3, 1).reshape(images, tokens, channels)
        offset_mask = self.offset_mask(query).reshape(images, height, width, -1)
        k, s, p, d = self.kernel_size, self.stride, self.pad, self.dilation
        output = FUNCTIONS["dcnv4"](x, offset_mask, k, k, s, s, p, p, d, d, self.group, self.group_channels,
                                    self.offset_scale, self.remove_center)
        if self.center_feature_scale:
            output = _centre_feature_blend(output, x, output, self.center_feature_scale_proj_weight,
                                           self.center_feature_scale_proj_bias, self.group)
        output = output.reshape(images, tokens, channels)
        return output if self.without_pointwise else self.output_proj(output)


# -- torchvision's own operators on our kernels ----------------------------------------------------------

def _on_our_kernels(compute, *tensors):
    """``compute(*arrays)`` on our arrays viewing ``tensors`` (half ones in float32), on torch's threads
    and stream, with our errors as torch's; float results as tensors of the first tensor's dtype, integer
    ones as int64 (torchvision's argmax)."""
    _follow_torch_threads(tensors[0])
    with _stream(tensors[0]), _torch_errors():
        results = compute(*(_array(t.float() if t.dtype in HALF_DTYPES else t) for t in tensors))
    single = not isinstance(results, tuple)
    results = [_tensor(_backend.as_array(r)) for r in ((results,) if single else results)]
    results = [r.to(tensors[0].dtype) if r.is_floating_point() else r.to(torch.int64) for r in results]
    return results[0] if single else tuple(results)


def _channel_mapping(output):
    """torchvision's ``channel_mapping`` of a position-sensitive output: the input channel each element
    reads, ``(c*PH + ph)*PW + pw``."""
    _, channels, pooled_h, pooled_w = output.shape
    index = torch.arange(channels * pooled_h * pooled_w, device=output.device).reshape(channels, pooled_h,
                                                                                         pooled_w)
    return index.expand(output.shape).contiguous()


def _tv_roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return _on_our_kernels(lambda x, r: ops.roi_align(x, r, (pooled_height, pooled_width), spatial_scale,
                                                      sampling_ratio, aligned), input, rois)


def _tv_roi_align_backward(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                           height, width, sampling_ratio, aligned):
    return _on_our_kernels(lambda g, r: ops.roi_align_backward(g, r, (batch_size, channels, height, width),
                                                               spatial_scale, sampling_ratio, aligned),
                           grad, rois)


def _tv_roi_pool(input, rois, spatial_scale, pooled_height, pooled_width):
    return _on_our_kernels(lambda x, r: ops.roi_pool_with_argmax(x, r, (pooled_height, pooled_width),
                                                                 spatial_scale), input, rois)


def _tv_roi_pool_backward(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size,
                          channels, height, width):
    return _on_our_kernels(lambda g, r, a: ops.roi_pool_backward(g, r, a, (batch_size, channels, height,
                                                                           width)), grad, rois, argmax)


def _tv_ps_roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    output = _on_our_kernels(lambda x, r: ops.ps_roi_align(x, r, (pooled_height, pooled_width),
                                                           spatial_scale, sampling_ratio), input, rois)
    return output, _channel_mapping(output)


def _tv_ps_roi_align_backward(grad, rois, channel_mapping, spatial_scale, pooled_height, pooled_width,
                              sampling_ratio, batch_size, channels, height, width):
    return _on_our_kernels(lambda g, r: ops.ps_roi_align_backward(g, r, (batch_size, channels, height, width),
                                                                  spatial_scale, sampling_ratio), grad, rois)


def _tv_ps_roi_pool(input, rois, spatial_scale, pooled_height, pooled_width):
    output = _on_our_kernels(lambda x, r: ops.ps_roi_pool(x, r, (pooled_height, pooled_width), spatial_scale),
                             input, rois)
    return output, _channel_mapping(output)


def _tv_ps_roi_pool_backward(grad, rois, channel_mapping, spatial_scale, pooled_height, pooled_width,
                             batch_size, channels, height, width):
    return _on_our_kernels(lambda g, r: ops.ps_roi_pool_backward(g, r, (batch_size, channels, height, width),
                                                                 spatial_scale), grad, rois)


def _tv_deform_conv2d(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dilation_h,
                      dilation_w, groups, offset_groups, use_mask):
    # (the groups are read from the shapes of the weight and the offset, as torchvision checks them)
    return _on_our_kernels(lambda x, w, o, m, b: ops.deform_conv2d(
        x, o, w, b, (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w), m if use_mask else None),
        input, weight, offset, mask, bias)


def _tv_deform_conv2d_backward(grad, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                               dilation_h, dilation_w, groups, offset_groups, use_mask):
    def compute(g, x, w, o, m):
        grads = ops.deform_conv2d_backward(g, x, o, w, (stride_h, stride_w), (pad_h, pad_w),
                                           (dilation_h, dilation_w), m if use_mask else None)
        grad_input, grad_offset, grad_weight, grad_bias, grad_mask = grads
        xp = _backend.array_module(g)
        grad_mask = grad_mask if use_mask else xp.zeros(m.shape, g.dtype)
        return grad_input, grad_weight, grad_offset, grad_mask, grad_bias
    return _on_our_kernels(compute, grad, input, weight, offset, mask)


_TORCHVISION_KERNELS = {
    "roi_align": _tv_roi_align, "_roi_align_backward": _tv_roi_align_backward,
    "roi_pool": _tv_roi_pool, "_roi_pool_backward": _tv_roi_pool_backward,
    "ps_roi_align": _tv_ps_roi_align, "_ps_roi_align_backward": _tv_ps_roi_align_backward,
    "ps_roi_pool": _tv_ps_roi_pool, "_ps_roi_pool_backward": _tv_ps_roi_pool_backward,
    "deform_conv2d": _tv_deform_conv2d, "_deform_conv2d_backward": _tv_deform_conv2d_backward,
}
_SERVING = []  # the registrations in force (a Library registers until it is destroyed or collected)


class use_for_torchvision:
    """Serve torchvision's own operators (``torchvision::roi_align``, ``roi_pool``, ``ps_roi_align``,
    ``ps_roi_pool``, ``deform_conv2d`` and their backwards) with our kernels, on the CPU (and on CUDA
    where CuPy is installed): every code path that reaches them, ``torchvision.ops.*``,
    ``MultiScaleRoIAlign``, the detection models' heads, scripted and compiled models, then runs on
    them; torchvision's autograd formulas stay and call our backwards. A plain call serves until
    ``restore()``; as a context manager, until the block ends::

        with numba_droi.torch.use_for_torchvision():
            losses = model(images, targets)

    Leaving restores torchvision's kernels. torchvision must be imported (its operators defined)."""

    def __init__(self):
        import torchvision  # noqa: F401  (defines the operators we serve)
        self._library = torch.library.Library("torchvision", "IMPL")
        keys = ["CPU"] + (["CUDA"] if _backend.cupy is not None and torch.cuda.is_available() else [])
        for name, kernel in _TORCHVISION_KERNELS.items():
            for key in keys:
                self._library.impl(name, kernel, key)
        _SERVING.append(self)

    def restore(self):
        """torchvision's kernels again."""
        if self in _SERVING:
            _SERVING.remove(self)
            self._library._destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
