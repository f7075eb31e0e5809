"""dcnv3 and dcnv4, what is specific to them: values derived by hand (the order of the points, x before
y, the window scaled by offset_scale), a grouped convolution where the offsets are zero, equal to the
grid_sample formulation of InternImage's dcnv3_core_pytorch (with torch), dcnv4 as dcnv3 on its
unpacked arrays, remove_center, the argument checks. What every operator is tested for:
tests/test_operators.py."""
import numpy as np
import pytest

import numba_droi
from numba_droi import registry
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck

BASIC = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1,
             group=1, group_channels=1)


def dcnv3(input, offset, mask, **options):
    return numba_droi.dcnv3(input, offset, mask, **dict(BASIC, **options))


def test_the_points_go_column_by_column_and_x_comes_first(on):
    """A 3x3 kernel's point ``k`` is column ``k // 3``, row ``k % 3``: with the mask one-hot at ``k``,
    the output is the input moved by ``(k // 3 - 1, k % 3 - 1)`` columns and rows; an offset ``(0.5,
    0)`` moves the sample half a column."""
    height, width = 4, 5
    plane = 10.0 * np.arange(height)[:, None] + np.arange(width)  # 10 * y + x
    image = plane.reshape(1, height, width, 1)
    with on:
        for k in range(9):
            mask = np.zeros((1, height, width, 9))
            mask[..., k] = 1
            output = on.numpy(dcnv3(on.array(image), on.array(np.zeros((1, height, width, 18))),
                                    on.array(mask)))[0, :, :, 0]
            column, row = k // 3 - 1, k % 3 - 1
            y, x = np.arange(1, height - 1), np.arange(1, width - 1)  # inside, away from the padding
            np.testing.assert_array_equal(output[1:-1, 1:-1], plane[np.ix_(y + row, x + column)])
        offset = np.zeros((1, height, width, 18))
        offset[..., 2 * 4] = 0.5  # point 4, the centre: x
        mask = np.zeros((1, height, width, 9))
        mask[..., 4] = 1
        output = on.numpy(dcnv3(on.array(image), on.array(offset), on.array(mask)))[0, :, :, 0]
    np.testing.assert_allclose(output[:, :-1], plane[:, :-1] + 0.5, rtol=0, atol=1e-12)
    np.testing.assert_allclose(output[:, -1], 0.5 * plane[:, -1], rtol=0, atol=1e-12)  # half padding


@pytest.mark.parametrize("stride, padding, dilation, kernel", [
    ((1, 1), (1, 1), (1, 1), (3, 3)), ((2, 1), (0, 2), (1, 2), (3, 2)), ((1, 2), (2, 0), (2, 1), (2, 3)),
    ((1, 1), (0, 0), (1, 1), (1, 1))])
def test_zero_offsets_and_a_mask_constant_over_positions_are_a_grouped_convolution(stride, padding, dilation,
                                                                                   kernel):
    """``out[c] = sum_k mask[g, k] * input[c]`` at tap ``k``: a depth-wise convolution (zero padding)
    whose kernel is the group's mask, ``weight[c, 0, j, i] = mask[g(c), i*kh + j]``."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    group, channels, (kh, kw) = 2, 3, kernel
    image = rng.standard_normal((2, 7, 8, group * channels))
    weights = rng.standard_normal((group, kh * kw))
    options = dict(kernel_h=kh, kernel_w=kw, stride_h=stride[0], stride_w=stride[1], pad_h=padding[0],
                   pad_w=padding[1], dilation_h=dilation[0], dilation_w=dilation[1], group=group,
                   group_channels=channels)
    kernel_weight = np.repeat(weights.reshape(group, kw, kh).transpose(0, 2, 1), channels, axis=0)
    expected = torch.nn.functional.conv2d(torch.from_numpy(image).permute(0, 3, 1, 2),
                                          torch.from_numpy(kernel_weight[:, None]), stride=stride,
                                          padding=padding, dilation=dilation, groups=group * channels)
    out_h, out_w = expected.shape[2:]
    mask = np.broadcast_to(weights.reshape(1, 1, 1, -1), (2, out_h, out_w, group * kh * kw))
    output = numba_droi.dcnv3(image, np.zeros((2, out_h, out_w, 2 * group * kh * kw)), mask, **options)
    np.testing.assert_allclose(output, expected.permute(0, 2, 3, 1).numpy(), rtol=1e-13, atol=1e-13)


def test_offset_scale_scales_the_window_about_its_centre():
    """With zero offsets, a 3x3 window of ``offset_scale`` 2 (padding 1) samples where a 3x3 window of
    dilation 2 (padding 2) does."""
    rng = np.random.default_rng(1)
    image, mask = rng.standard_normal((1, 6, 7, 2)), rng.standard_normal((1, 6, 7, 18))
    offset = np.zeros((1, 6, 7, 36))
    scaled = dcnv3(image, offset, mask, group=2, offset_scale=2.0)
    dilated = dcnv3(image, offset, mask, group=2, pad_h=2, pad_w=2, dilation_h=2, dilation_w=2)
    np.testing.assert_allclose(scaled, dilated, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("operator", ["dcnv3", "dcnv4"])
def test_remove_center_is_the_full_kernel_with_a_zero_mask_at_the_centre(operator):
    rng = np.random.default_rng(2)
    image = rng.standard_normal((1, 5, 6, 4))
    offset, mask = rng.uniform(-2, 2, (1, 5, 6, 2, 8, 2)), rng.standard_normal((1, 5, 6, 2, 8))
    full_offset = np.insert(offset, 4, 0.0, axis=4)
    full_mask = np.insert(mask, 4, 0.0, axis=4)
    options = dict(BASIC, group=2, group_channels=2, offset_scale=1.5)

    def call(offset, mask, remove_center):
        if operator == "dcnv3":
            return numba_droi.dcnv3(image, offset.reshape(1, 5, 6, -1), mask.reshape(1, 5, 6, -1), **options,
                                    remove_center=remove_center)
        packed = registry.pack_offset_mask(offset.reshape(1, 5, 6, -1), mask.reshape(1, 5, 6, -1), 2)
        return numba_droi.dcnv4(image, packed, **options, remove_center=remove_center)

    np.testing.assert_allclose(call(offset, mask, True), call(full_offset, full_mask, False), rtol=1e-14,
                               atol=1e-14)


def test_dcnv4_is_dcnv3_on_its_unpacked_arrays_and_reads_nothing_past_them(on):
    rng = np.random.default_rng(3)
    example = registry.BY_NAME["dcnv3"].example(rng, group=3, height=5, width=6)
    a, options = example.arrays, example.options
    packed = registry.pack_offset_mask(a["offset"], a["mask"], 3, multiple=16)
    used = a["offset"].shape[3] + a["mask"].shape[3]
    assert packed.shape[3] > used
    packed[..., used:] = np.nan
    grad = rng.standard_normal((2, 5, 6, 6))
    with on:
        v3 = on.numpy(numba_droi.dcnv3(*map(on.array, (a["input"], a["offset"], a["mask"])), **options))
        v4 = on.numpy(numba_droi.dcnv4(on.array(a["input"]), on.array(packed), **options))
        arrays3 = [on.array(a[name]) for name in ("input", "offset", "mask")]
        grads3 = numba_droi.dcnv3_backward(on.array(grad), *arrays3, **options)
        grads4 = numba_droi.dcnv4_backward(on.array(grad), on.array(a["input"]), on.array(packed), **options)
    np.testing.assert_array_equal(v4, v3)
    # (the cuda input gradient adds atomically, in any order)
    np.testing.assert_allclose(on.numpy(grads4[0]), on.numpy(grads3[0]), rtol=1e-13, atol=1e-13)
    repacked = registry.pack_offset_mask(on.numpy(grads3[1]), on.numpy(grads3[2]), 3, multiple=16)
    np.testing.assert_array_equal(on.numpy(grads4[1]), repacked)  # 0 past the points' values


@pytest.mark.parametrize("choices", [
    dict(), dict(padding=(2, 0), stride=(2, 1), dilation=(1, 2)), dict(kernel=(2, 3), offset_scale=0.5),
    dict(remove_center=True, group=3), dict(kernel=(1, 1), padding=(0, 0))])
def test_equals_the_grid_sample_formulation_and_its_gradients(choices):
    """InternImage's pure-PyTorch formulation (``numba_droi.torch.dcnv3_grid_sample``), forward and
    torch's autograd through it, in float64."""
    torch = pytest.importorskip("torch")
    from numba_droi.torch import dcnv3_grid_sample
    example = registry.BY_NAME["dcnv3"].example(np.random.default_rng(4), channels=3, height=6, width=7,
                                                **choices)
    options = example.options
    tensors = {name: torch.from_numpy(a).requires_grad_() for name, a in example.arrays.items()}
    expected = dcnv3_grid_sample(tensors["input"], tensors["offset"], tensors["mask"], **options)
    output = numba_droi.dcnv3(**example.arrays, **options)
    np.testing.assert_allclose(output, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    grad = np.random.default_rng(5).standard_normal(output.shape)
    expected.backward(torch.from_numpy(grad))
    grads = numba_droi.dcnv3_backward(grad, **example.arrays, **options)
    for name, got in zip(("input", "offset", "mask"), grads):
        np.testing.assert_allclose(got, tensors[name].grad.numpy(), rtol=1e-11, atol=1e-11, err_msg=name)


def good(**changes):
    example = registry.BY_NAME["dcnv3"].example(np.random.default_rng(6), batch=1, height=5, width=6)
    return {**example.arrays, **example.options, **changes}


@pytest.mark.parametrize("changes, words", [
    (dict(group=3), "input.shape[3] = 4 must be group * group_channels = 3 * 2"),
    (dict(kernel_h=0), "kernel_h must be a positive int, got 0"),
    (dict(pad_w=-1), "pad_w must be a non-negative int, got -1"),
    (dict(stride_h=1.5), "stride_h must be a positive int, got 1.5"),
    (dict(offset_scale=float("nan")), "offset_scale must be a finite number"),
    (dict(remove_center=2), "remove_center must be a bool, got 2"),
    (dict(kernel_h=1, kernel_w=1, remove_center=True), "remove_center leaves no point of a 1x1 kernel"),
    (dict(offset=np.zeros((1, 5, 6, 35))), "offset must have shape (1, 5, 6, 36), got (1, 5, 6, 35)"),
    (dict(mask=np.zeros((1, 5, 6, 18), np.int64)), "mask must be a floating array, got int64"),
    (dict(mask=np.zeros((1, 5, 6, 17))), "mask must have shape (1, 5, 6, 18)"),
    (dict(input=np.zeros((1, 5, 6))), "input must have 4 dimensions (N, H, W, G*group_channels)"),
    (dict(kernel_h=9, pad_h=0), "the output would be empty"),
])
def test_bad_arguments_are_refused_naming_them(no_launch, changes, words):
    with pytest.raises((ValueError, TypeError)) as raised:
        numba_droi.dcnv3(**good(**changes))
    assert words in str(raised.value)


def test_a_short_offset_mask_is_refused_naming_its_length(no_launch):
    arrays = good()
    with pytest.raises(ValueError, match=r"offset_mask must have shape \(N, Ho, Wo, P\) = \(1, 5, 6\) \+ "
                                         r"\(P,\) with P >= 54, got \(1, 5, 6, 53\)"):
        numba_droi.dcnv4(arrays.pop("input"), np.zeros((1, 5, 6, 53)),
                         **{k: v for k, v in arrays.items() if k not in ("offset", "mask")})


# -- the layers ---------------------------------------------------------------------------------------------

INTERNIMAGE_KEYS = ["dw_conv.0.weight", "dw_conv.0.bias", "dw_conv.1.1.weight", "dw_conv.1.1.bias",
                    "offset.weight", "offset.bias", "mask.weight", "mask.bias", "input_proj.weight",
                    "input_proj.bias", "output_proj.weight", "output_proj.bias"]
DCNV4_KEYS = ["offset_mask_dw.weight", "offset_mask_dw.bias", "offset_mask.weight", "offset_mask.bias",
              "value_proj.weight", "value_proj.bias", "output_proj.weight", "output_proj.bias"]
CENTRE = ["center_feature_scale_proj_weight", "center_feature_scale_proj_bias"]


def layers(name, rng, **options):
    """Our layer ``name`` in float64 and the torch adapter's with the same parameters, all of them
    random (the offset and mask layers too, so that the samples move)."""
    torch = pytest.importorskip("torch")
    import numba_droi.torch as nt
    ours = getattr(numba_droi.nn, name)(rng=rng, dtype=np.float64, **options)
    for parameter in ours.parameters():
        parameter.data[...] = rng.standard_normal(parameter.data.shape) * 0.3
    theirs = getattr(nt, name)(**options).double()
    theirs.load_state_dict({key: torch.from_numpy(value) for key, value in ours.state_dict().items()})
    return ours, theirs


@pytest.mark.parametrize("name, options, shape", [
    ("DCNv3", dict(channels=8, group=2), (2, 5, 6, 8)),
    ("DCNv3", dict(channels=6, group=3, kernel_size=5, pad=2, dw_kernel_size=3, offset_scale=0.5,
                   center_feature_scale=True, remove_center=True), (1, 4, 5, 6)),
    ("DCNv4", dict(channels=8, group=2, dw_kernel_size=3), (2, 30, 8)),
    ("DCNv4", dict(channels=8, group=4, center_feature_scale=True, remove_center=True, output_bias=False),
     (1, 16, 8)),
    ("DCNv4", dict(channels=4, group=1, without_pointwise=True), (1, 9, 4))])
def test_the_layers_equal_the_torch_adapters_with_the_same_parameters(name, options, shape):
    """Outputs and every parameter's gradient; the torch layers are InternImage's and DCNv4's modules
    on our operators."""
    import torch
    rng = np.random.default_rng(7)
    ours, theirs = layers(name, rng, **options)
    input = rng.standard_normal(shape)
    size = dict(shape=(5, 6)) if len(shape) == 3 and shape[1] == 30 else {}
    output = ours(Tensor(input), **size)
    expected = theirs(torch.from_numpy(input), **size)
    np.testing.assert_allclose(output.data, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    grad = rng.standard_normal(output.shape)
    output.backward(grad)
    expected.backward(torch.from_numpy(grad))
    for key, parameter in theirs.named_parameters():
        np.testing.assert_allclose(dict(ours.named_parameters())[key].grad, parameter.grad.numpy(),
                                   rtol=1e-10, atol=1e-10, err_msg=key)


def test_parameter_names_and_shapes_are_internimages_and_dcnv4s():
    pytest.importorskip("torch")
    import numba_droi.torch as nt
    state = nt.DCNv3(channels=64, group=4).state_dict()
    assert list(state) == INTERNIMAGE_KEYS
    assert state["offset.weight"].shape == (72, 64) and state["mask.weight"].shape == (36, 64)
    assert state["dw_conv.0.weight"].shape == (64, 1, 3, 3)
    assert sorted(nt.DCNv3(channels=8, group=2, center_feature_scale=True).state_dict()) == sorted(
        INTERNIMAGE_KEYS + CENTRE)
    state = nt.DCNv4(channels=64, group=4, dw_kernel_size=3).state_dict()
    assert list(state) == DCNV4_KEYS
    assert state["offset_mask.weight"].shape == (112, 64)  # 4 * 9 * 3 = 108, rounded up to 8s
    centreless = nt.DCNv4(channels=64, group=4, remove_center=True).state_dict()
    assert centreless["offset_mask.weight"].shape == (96, 64)
    assert sorted(numba_droi.nn.DCNv3(channels=8, group=2).state_dict()) == sorted(INTERNIMAGE_KEYS)
    ours = numba_droi.nn.DCNv4(channels=8, group=2, dw_kernel_size=3).state_dict()
    assert sorted(ours) == sorted(DCNV4_KEYS)
    for module in (nt.DCNv3(), nt.DCNv4(), numba_droi.nn.DCNv3(), numba_droi.nn.DCNv4()):
        for key, value in module.state_dict().items():
            if key.startswith(("offset", "mask")) and not key.startswith("offset_mask_dw"):
                assert not np.asarray(value).any(), key  # zero-initialised


def test_at_initialisation_dcnv3_averages_its_window_and_dcnv4_gives_its_output_bias():
    """Zero offsets and masks: DCNv3's softmax gives each of the 9 points 1/9, so before the output
    projection the layer is a 3x3 mean of the projected input (zero padding); DCNv4's masks are 0."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    layer = numba_droi.nn.DCNv3(channels=4, group=2, rng=rng, dtype=np.float64)
    input = rng.standard_normal((1, 5, 6, 4))
    projected = input @ layer.input_proj.weight.data.T
    mean = torch.nn.functional.avg_pool2d(torch.from_numpy(projected).permute(0, 3, 1, 2), 3, 1, 1,
                                          count_include_pad=True).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(layer(input).data, mean @ layer.output_proj.weight.data.T, rtol=1e-12,
                               atol=1e-12)
    layer4 = numba_droi.nn.DCNv4(channels=16, group=1, rng=rng, dtype=np.float64)
    layer4.output_proj.bias.data[...] = np.arange(16)
    output = layer4(rng.standard_normal((2, 9, 16))).data
    np.testing.assert_array_equal(output, np.broadcast_to(np.arange(16.0), (2, 9, 16)))


@pytest.mark.parametrize("name", ["DCNv3", "DCNv4"])
def test_the_layers_input_gradients_match_finite_differences(name):
    rng = np.random.default_rng(9)
    layer = getattr(numba_droi.nn, name)(channels=4, group=2, rng=rng, dtype=np.float64,
                                         **({"dw_kernel_size": 3} if name == "DCNv4" else {}))
    for parameter in layer.parameters():
        parameter.data[...] = rng.standard_normal(parameter.data.shape) * 0.3
    shape = (1, 4, 5, 4) if name == "DCNv3" else (1, 16, 4)
    # (the parameters' gradients: against torch's autograd, above)
    assert gradcheck(layer, [Tensor(rng.standard_normal(shape), requires_grad=True)])
