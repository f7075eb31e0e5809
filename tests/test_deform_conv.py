"""deform_conv2d, what is specific to it: a modulated convolution without offsets, the offset gradient near
the border, an ordinary convolution at zero offsets, the im2col pieces on their own, chunks of images,
bad offsets, its argument checks, and torchvision when installed. What every operator is tested for:
tests/test_operators.py."""
import contextlib

import numpy as np
import pytest

import numba_droi
from numba_droi import functional, ops, registry
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck
from numba_droi.ops import deform_conv as deform_ops
from reference.deform_conv import deform_conv2d as reference_forward
from reference.deform_conv import deform_conv2d_backward as reference_backward

GRAD_NAMES = ("grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask")


def output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


def random_case(rng, max_size=7, max_channels=4, use_offset=None, use_mask=None, kink_free=False):
    """Arrays and options of a random deform_conv2d call: weight and offset groups, strides,
    paddings, dilations; offsets that take samples across and outside the border. ``kink_free``
    keeps every sample off integer coordinates (where B2 has kinks) for finite differences."""
    groups, offset_groups = (int(v) for v in rng.choice([1, 2], 2))
    channels = groups * offset_groups * int(rng.integers(1, max(max_channels // 2, 1) + 1))
    out_channels = groups * int(rng.integers(1, 3))
    kernel = tuple(int(v) for v in rng.integers(1, 4, 2))
    stride, padding, dilation = (tuple(int(v) for v in rng.integers(low, high, 2))
                                 for low, high in ((1, 3), (0, 3), (1, 3)))
    batch = int(rng.integers(1, 3))
    size = [int(v) for v in rng.integers(1, max_size + 1, 2)]
    for axis in range(2):  # at least one output pixel
        size[axis] = max(size[axis], dilation[axis] * (kernel[axis] - 1) + 1 - 2 * padding[axis])
    out = tuple(output_size(size[a], kernel[a], stride[a], padding[a], dilation[a]) for a in range(2))
    taps = kernel[0] * kernel[1]
    input = rng.standard_normal((batch, channels, *size))
    weight = rng.standard_normal((out_channels, channels // groups, *kernel))
    offset_shape = (batch, 2 * offset_groups * taps, *out)
    if kink_free:
        offset = rng.integers(-2, 3, offset_shape) + rng.uniform(0.1, 0.9, offset_shape)
    else:
        offset = rng.uniform(-2.5, 2.5, offset_shape)
    mask = rng.uniform(-0.5, 1.5, (batch, offset_groups * taps, *out))
    bias = rng.standard_normal(out_channels)
    use_offset = bool(rng.integers(0, 4)) if use_offset is None else use_offset  # mostly with offsets
    use_mask = bool(rng.integers(2)) if use_mask is None else use_mask
    if not use_offset and not use_mask:
        mask = None if offset_groups == 1 else mask  # offset groups from the mask alone
    arrays = dict(input=input, offset=offset if use_offset else None, weight=weight,
                  bias=bias if rng.integers(2) else None, mask=mask if use_mask or not use_offset else None)
    return arrays, dict(stride=stride, padding=padding, dilation=dilation)


def call_ours(on, arrays, options, grad_output=None):
    with on:
        put = {k: None if v is None else on.array(v) for k, v in arrays.items()}
        output = numba_droi.deform_conv2d(put["input"], put["offset"], put["weight"], put["bias"],
                                          mask=put["mask"], **options)
        if grad_output is None:
            return on.numpy(output)
        grads = numba_droi.deform_conv2d_backward(on.array(grad_output), put["input"], put["offset"],
                                                  put["weight"], mask=put["mask"], **options)
    return on.numpy(output), [None if g is None else on.numpy(g) for g in grads]


def check_against_reference(on, arrays, options, rtol=1e-12):
    expected = reference_forward(arrays["input"], arrays["offset"], arrays["weight"], arrays["bias"],
                                 mask=arrays["mask"], **options)
    grad_output = np.random.default_rng(1).standard_normal(expected.shape)
    output, grads = call_ours(on, arrays, options, grad_output)
    np.testing.assert_allclose(output, expected, rtol=rtol, atol=rtol)
    expected_grads = reference_backward(grad_output, arrays["input"], arrays["offset"],
                                        arrays["weight"], mask=arrays["mask"], **options)
    for name, grad, expected_grad in zip(GRAD_NAMES, grads, expected_grads):
        assert (grad is None) == (expected_grad is None), name
        if grad is not None:
            np.testing.assert_allclose(grad, expected_grad, rtol=rtol, atol=rtol, err_msg=name)


# -- gradients by finite differences --------------------------------------------------------------

def gradcheck_case(on, arrays, options):
    names = [k for k in ("input", "offset", "weight", "bias", "mask") if arrays[k] is not None]
    with on:
        tensors = [Tensor(on.array(arrays[k]), requires_grad=True) for k in names]

        def call(*ts):
            given = dict(zip(names, ts))
            return functional.deform_conv2d(given["input"], given.get("offset"), given["weight"],
                                            given.get("bias"), mask=given.get("mask"), **options)
        return gradcheck(call, tensors)


def test_gradcheck_of_a_modulated_convolution_without_offsets(cpu):
    arrays, options = random_case(np.random.default_rng(7), max_size=5, max_channels=2,
                                  use_offset=False, use_mask=True)
    assert gradcheck_case(cpu, arrays, options)


@pytest.mark.parametrize("coordinate", [-1.01, -0.99, -0.3, 3.6, 3.99, 4.01])
@pytest.mark.parametrize("axis", [0, 1])
def test_offset_gradient_is_the_derivative_near_the_border(cpu, coordinate, axis):
    """Samples just inside and just outside the support (-1, H) of rule B2, on either axis."""
    rng = np.random.default_rng(8)
    input = rng.standard_normal((1, 2, 4, 4))
    base = 2 * np.arange(2)  # stride 2: output pixel o samples at 2*o + offset
    offset = np.zeros((1, 2, 2, 2))
    positions = coordinate + rng.uniform(-0.001, 0.001, (2, 2))
    offset[0, axis] = positions - (base[:, None] if axis == 0 else base[None, :])
    offset[0, 1 - axis] = rng.uniform(0.1, 0.9, (2, 2))
    arrays = dict(input=input, offset=offset, weight=rng.standard_normal((1, 2, 1, 1)), bias=None,
                  mask=rng.uniform(0.5, 1.5, (1, 1, 2, 2)))
    assert gradcheck_case(cpu, arrays, dict(stride=2, padding=0, dilation=1))


def test_offset_gradient_at_minus_one_is_the_left_derivative(cpu):
    """At ``y = -1`` exactly the forward is 0 to the left and rises to the right: we give the left
    derivative, 0, as on the rest of the outside (torchvision gives the right one there)."""
    rng = np.random.default_rng(9)
    input = rng.standard_normal((1, 1, 4, 4))
    weight = np.ones((1, 1, 1, 1))
    step = 1e-7
    for axis in (0, 1):
        offset = np.full((1, 2, 4, 4), 0.25)
        offset[0, axis, 0, 0] = -1.0  # the sample of output pixel (0, 0) at y (or x) = -1 exactly
        moved = offset.copy()
        moved[0, axis, 0, 0] -= step
        left = (numba_droi.deform_conv2d(input, offset, weight)
                - numba_droi.deform_conv2d(input, moved, weight))[0, 0, 0, 0] / step
        grad = numba_droi.deform_conv2d_backward(np.ones((1, 1, 4, 4)), input, offset, weight)[1]
        assert grad[0, axis, 0, 0] == 0 and left == 0
        moved[0, axis, 0, 0] += 2 * step  # and the right derivative is not 0
        assert numba_droi.deform_conv2d(input, moved, weight)[0, 0, 0, 0] != 0


@pytest.mark.filterwarnings("ignore:gradcheck. .* random directions")
def test_gradcheck_of_a_larger_case_by_directions(cpu):
    rng = np.random.default_rng(5)
    arrays, options = random_case(rng, max_size=12, max_channels=6, use_offset=True, use_mask=True,
                                  kink_free=True)
    names = ("input", "offset", "weight", "mask")
    tensors = [Tensor(arrays[k], requires_grad=True) for k in names]
    assert gradcheck(lambda x, o, w, m: functional.deform_conv2d(x, o, w, mask=m, **options), tensors,
                     max_full_size=100)


# -- an ordinary convolution and the pieces on their own ------------------------------------------

def ordinary_convolution(input, weight, bias, stride, padding, dilation):
    """Zero padding, strided and dilated slices, one einsum per weight group."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    kh, kw = weight.shape[2:]
    padded = np.pad(input, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out_h = output_size(input.shape[2], kh, sh, ph, dh)
    out_w = output_size(input.shape[3], kw, sw, pw, dw)
    patches = np.stack([np.stack([padded[:, :, i * dh:i * dh + sh * (out_h - 1) + 1:sh,
                                         j * dw:j * dw + sw * (out_w - 1) + 1:sw]
                                  for j in range(kw)], 2) for i in range(kh)], 2)  # n c i j y x
    groups = input.shape[1] // weight.shape[1]
    per_in, per_out = weight.shape[1], weight.shape[0] // groups
    out = np.concatenate([np.einsum("ncijyx,ocij->noyx", patches[:, g * per_in:(g + 1) * per_in],
                                    weight[g * per_out:(g + 1) * per_out]) for g in range(groups)], 1)
    return out if bias is None else out + bias[None, :, None, None]


@pytest.mark.parametrize("seed", range(6))
def test_zero_offsets_give_an_ordinary_convolution(on, seed):
    arrays, options = random_case(np.random.default_rng(400 + seed), max_size=6, max_channels=2,
                                  use_offset=True, use_mask=False)
    arrays["offset"] = np.zeros_like(arrays["offset"])
    expected = ordinary_convolution(arrays["input"], arrays["weight"], arrays["bias"], **options)
    np.testing.assert_allclose(call_ours(on, arrays, options), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(call_ours(on, dict(arrays, offset=None), options), expected,
                               rtol=1e-12, atol=1e-12)


def test_im2col_col2im_and_grouped_matmul_on_their_own(on):
    rng = np.random.default_rng(12)
    arrays, options = random_case(rng, max_size=6, max_channels=2, use_offset=True, use_mask=True)
    input, offset, weight, mask = (arrays[k] for k in ("input", "offset", "weight", "mask"))
    kernel = weight.shape[2:]
    with on:
        columns = ops.im2col(on.array(input), kernel, offset=on.array(offset), mask=on.array(mask),
                             **options)
        grad_columns = rng.standard_normal(columns.shape)
        grad_input = ops.col2im(on.array(grad_columns), input.shape, kernel, offset=on.array(offset),
                                mask=on.array(mask), **options)
        output = ops.grouped_matmul(on.array(weight), columns)
        plain = ops.im2col(on.array(input), kernel, **options)
        zero = ops.im2col(on.array(input), kernel, offset=on.array(np.zeros_like(offset)), **options)
    columns, grad_input, output = on.numpy(columns), on.numpy(grad_input), on.numpy(output)
    assert columns.shape == (input.shape[0], input.shape[1] * kernel[0] * kernel[1]) + offset.shape[2:]
    # col2im is the adjoint of im2col: <grad_columns, im2col(x)> = <col2im(grad_columns), x>
    np.testing.assert_allclose(np.vdot(grad_columns, columns), np.vdot(grad_input, input), rtol=1e-12)
    np.testing.assert_allclose(output, reference_forward(input, offset, weight, mask=mask, **options),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(on.numpy(plain), on.numpy(zero))


def test_chunks_give_the_same_result(cpu, monkeypatch):
    arrays, options = random_case(np.random.default_rng(13), max_size=6, use_offset=True,
                                  use_mask=True)
    arrays = dict(arrays, input=np.concatenate([arrays["input"]] * 3),
                  offset=np.concatenate([arrays["offset"]] * 3), mask=np.concatenate([arrays["mask"]] * 3))
    grad = np.random.default_rng(0).standard_normal(call_ours(cpu, arrays, options).shape)
    whole, whole_grads = call_ours(cpu, arrays, options, grad)
    monkeypatch.setattr(deform_ops, "COLUMN_BUFFER_ELEMENTS", 1)  # one image per chunk
    chunked, chunked_grads = call_ours(cpu, arrays, options, grad)
    np.testing.assert_allclose(chunked, whole, rtol=1e-13, atol=1e-13)
    for name, a, b in zip(GRAD_NAMES, chunked_grads, whole_grads):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("by_planes", [False, True], ids=["channels-last", "planes"])
@pytest.mark.parametrize("seed", range(6))
def test_either_cpu_backward_matches_the_reference(cpu, monkeypatch, by_planes, seed):
    """The cpu backward on channels-last columns and on the planes (chosen by the shapes): both equal
    the reference, with weight and offset groups, strides, paddings and dilations."""
    monkeypatch.setattr(deform_ops, "CHANNELS_LAST_SAMPLES", 0)  # channels-last whatever the shapes
    arrays, options = random_case(np.random.default_rng(40 + seed), use_offset=True if seed % 3 else None)
    with deform_ops.backward_by_planes() if by_planes else contextlib.nullcontext():
        check_against_reference(cpu, arrays, options)


def test_both_cpu_backwards_agree_at_the_benchmark_size():
    # The benchmark case (2x64x64x64) runs the channels-last backward, which the operator tests hold
    # against the cuda kernels there; the planes' one (chosen at few pixels per output channel) equals
    # it to rounding at that size too.
    example = registry.DEFORM_CONV2D.benchmark(np.random.default_rng(3))[0]
    a = example.arrays
    mask = np.random.default_rng(4).uniform(0.2, 1.5, (2, 9, 64, 64)).astype(np.float32)
    grad = np.random.default_rng(5).standard_normal((2, 64, 64, 64)).astype(np.float32)
    def backward():
        return numba_droi.deform_conv2d_backward(grad, a["input"], a["offset"], a["weight"], mask=mask,
                                                 **example.options)
    channels_last = backward()
    with deform_ops.backward_by_planes():
        planes = backward()
    for name, got, want in zip(GRAD_NAMES, planes, channels_last):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=name)


@pytest.mark.parametrize("channels, groups, offset_groups", [(41, 1, 1), (48, 2, 3)])
def test_many_channels_per_group_match_the_reference(cpu, monkeypatch, channels, groups, offset_groups):
    # The channels-last backward takes a sample's channels in runs within a weight group, 16 at a
    # time as vectors and the rest one by one: runs of 16, 16 and 9 channels; and offset groups of
    # 16 that fall within a weight group of 24 or across two.
    monkeypatch.setattr(deform_ops, "CHANNELS_LAST_SAMPLES", 0)
    rng = np.random.default_rng(17)
    arrays = dict(input=rng.standard_normal((2, channels, 5, 6)),
                  offset=rng.uniform(-2.5, 2.5, (2, 18 * offset_groups, 5, 6)),
                  weight=rng.standard_normal((2 * groups, channels // groups, 3, 3)), bias=None,
                  mask=rng.uniform(-0.5, 1.5, (2, 9 * offset_groups, 5, 6)))
    check_against_reference(cpu, arrays, dict(stride=1, padding=1, dilation=1))


# -- the cuda kernels' bodies compiled for the cpu, at a realistic size ----------------------------

# -- edge cases ------------------------------------------------------------------------------------

def test_nan_and_inf_offsets_give_zero_samples_and_read_nothing_outside(on):
    """The simulator raises on any out-of-range index, so this also checks the bounds on cuda."""
    rng = np.random.default_rng(15)
    input = rng.standard_normal((1, 2, 4, 5))
    offset = rng.uniform(-1, 1, (1, 18, 4, 5))
    offset[0, 0, 1, 1], offset[0, 3, 2, 2], offset[0, 4, 0, 0] = np.nan, np.inf, -np.inf
    arrays = dict(input=input, offset=offset, weight=rng.standard_normal((2, 2, 3, 3)), bias=None,
                  mask=rng.uniform(0, 1, (1, 9, 4, 5)))
    output, grads = call_ours(on, arrays, dict(stride=1, padding=1, dilation=1),
                              rng.standard_normal((1, 2, 4, 5)))
    assert np.all(np.isfinite(output)) and all(np.all(np.isfinite(g)) for g in grads if g is not None)
    finite = dict(arrays, offset=np.where(np.isfinite(offset), offset, -5.0))  # -5: outside, as NaN
    np.testing.assert_allclose(output, call_ours(on, finite, dict(stride=1, padding=1, dilation=1)),
                               rtol=1e-12, atol=1e-12)



def test_samples_outside_the_map_are_zero_whatever_the_features_hold(on):
    # Every sample lies far outside (the cpu's corners there read zeros of a bordered copy): the
    # output and the gradients are 0, although the features hold inf and NaN, the first pixel too.
    input = np.full((1, 2, 3, 4), np.inf)
    input[0, 1] = np.nan
    arrays = dict(input=input, offset=np.full((1, 18, 3, 4), 1e3), weight=np.ones((2, 2, 3, 3)), bias=None,
                  mask=np.full((1, 9, 3, 4), 0.5))
    output, grads = call_ours(on, arrays, dict(stride=1, padding=1, dilation=1), np.ones((1, 2, 3, 4)))
    assert np.array_equal(output, np.zeros((1, 2, 3, 4)))
    grad_input, grad_offset, grad_weight, _, grad_mask = grads  # (the bias's is grad_output's sum)
    assert all(np.array_equal(g, np.zeros_like(g)) for g in (grad_input, grad_offset, grad_weight, grad_mask))

# -- bad inputs: clear errors before any launch ----------------------------------------------------

X = np.zeros((2, 4, 6, 6))
W = np.zeros((6, 2, 3, 3))  # 2 weight groups
OFFSET = np.zeros((2, 36, 4, 4))  # 2 offset groups, no padding
MASK = np.zeros((2, 18, 4, 4))


@pytest.mark.parametrize("changes, error, words", [
    (dict(offset=OFFSET[:, :35]), ValueError, "offset.shape[1] = 35 must be 2 * offset_groups * kh * kw"),
    (dict(offset=np.zeros((2, 54, 4, 4))), ValueError, "offset.shape[1] = 54 gives 3 offset groups"),
    (dict(offset=OFFSET[:1]), ValueError, "offset must have shape (2, 36, 4, 4)"),
    (dict(offset=OFFSET[:, :, :3]), ValueError, "offset must have shape (2, 36, 4, 4)"),
    (dict(offset=OFFSET[0]), ValueError, "offset must have 4 dimensions"),
    (dict(mask=MASK[:, :9]), ValueError, "mask.shape[1] = 9 must be offset_groups * kh * kw = 2 * 9"),
    (dict(mask=MASK[:, :, 1:]), ValueError, "mask must have shape (2, 18, 4, 4)"),
    (dict(weight=np.zeros((6, 3, 3, 3))), ValueError, "weight.shape[1] = 3 must divide the 4 input channels"),
    (dict(weight=np.zeros((5, 2, 3, 3))), ValueError, "weight.shape[0] = 5 must be a multiple of groups = 2"),
    (dict(weight=np.zeros((6, 0, 3, 3))), ValueError, "weight.shape[1] = 0"),
    (dict(input=np.zeros((2, 0, 6, 6)), weight=np.zeros((0, 2, 3, 3))), ValueError,
     "weight.shape[1] = 2 must divide the 0 input channels"),
    (dict(weight=np.zeros((6, 2, 3))), ValueError, "weight must have 4 dimensions"),
    (dict(weight=np.zeros((6, 2, 7, 3))), ValueError, "the output would be empty"),
    (dict(bias=np.zeros(5)), ValueError, "bias must have shape (6,)"),
    (dict(input=X.astype(np.int64)), TypeError, "input must be float32 or float64"),
    (dict(offset=OFFSET.astype(np.int64)), TypeError, "offset must be a floating array"),
    (dict(stride=0), ValueError, "stride must be a positive int"),
    (dict(padding=-1), ValueError, "padding must be a non-negative int"),
    (dict(dilation=(1, 0)), ValueError, "dilation must be a positive int"),
])
def test_bad_arguments_are_named(no_launch, changes, error, words):
    arguments = dict(input=X, offset=OFFSET, weight=W, bias=None, stride=1, padding=0, dilation=1,
                     mask=MASK)
    arguments.update(changes)
    with pytest.raises(error) as raised:
        numba_droi.deform_conv2d(**arguments)
    assert words in str(raised.value)
    grad_output = np.zeros((2, 6, 4, 4))
    if "bias" not in changes:
        with pytest.raises(error) as raised:
            numba_droi.deform_conv2d_backward(grad_output, **{k: v for k, v in arguments.items()
                                                              if k != "bias"})
        assert words in str(raised.value)


def test_backward_checks_the_gradient_shape(no_launch):
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 6, 4, 4\)"):
        numba_droi.deform_conv2d_backward(np.zeros((2, 6, 4, 3)), X, OFFSET, W, mask=MASK)


def test_col2im_refuses_an_input_shape_that_is_not_ints(no_launch):
    with pytest.raises(TypeError, match=r"input_shape must be four ints"):
        numba_droi.col2im(np.zeros((2, 36, 4, 4)), (2, 4, 6.0, 6), 3)


def test_without_output_channels_every_gradient_is_zero(on):
    """C_out = 0: the output is empty, nothing reaches the input, offsets or mask."""
    rng = np.random.default_rng(3)
    x, offset, mask = (on.array(rng.standard_normal(a.shape)) for a in (X, OFFSET, MASK))
    weight = on.array(np.zeros((0, 2, 3, 3)))
    with on:
        assert numba_droi.deform_conv2d(x, offset, weight, mask=mask).shape == (2, 0, 4, 4)
        grads = numba_droi.deform_conv2d_backward(on.array(np.zeros((2, 0, 4, 4))), x, offset, weight,
                                                  mask=mask)
    for grad, like in zip(grads, (x, offset, weight, np.zeros(0), mask)):
        assert grad.shape == like.shape and not on.numpy(grad).any()


# -- torchvision -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_matches_torchvision_when_installed(cpu, seed):
    """Offsets drawn from a continuous distribution never put a sample at exactly -1, the one place
    where torchvision's offset gradient differs from the derivative (checked above)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    arrays, options = random_case(np.random.default_rng(500 + seed), use_offset=True,
                                  use_mask=bool(seed % 2))
    names = ("input", "offset", "weight", "bias", "mask")
    tensors = {k: None if arrays[k] is None else torch.tensor(arrays[k], requires_grad=True)
               for k in names}
    expected = torchvision.ops.deform_conv2d(*(tensors[k] for k in names[:4]), mask=tensors["mask"],
                                             **options)
    grad_output = np.random.default_rng(seed).standard_normal(tuple(expected.shape))
    expected.backward(torch.tensor(grad_output))
    output, grads = call_ours(cpu, arrays, options, grad_output)
    np.testing.assert_allclose(output, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    for name, grad in zip(("input", "offset", "weight", "bias", "mask"), grads):
        if tensors[name] is not None:
            np.testing.assert_allclose(grad, tensors[name].grad.numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=name)
