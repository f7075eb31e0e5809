"""Convolution layers and the remaining RoI modules of numba_droi.nn: functional.conv2d against a direct
NumPy convolution (and SciPy's correlate) on both targets, its gradients and argument checks;
functional.narrow/split; Conv2d, DeformConv2d, DeformConv2dPack and ModulatedDeformConv2dPack
(equal to the plain convolution at their zero initialisation, as mmcv's), DeformPSRoIPoolPack (plain
PS RoI pooling at its zero initialisation); RoIPool, PSRoIPool, PSRoIAlign; gradients of every
parameter by finite differences, both targets alike, state_dict round trips."""
import numpy as np
import pytest
from scipy import signal

import numba_droi
from numba_droi import functional as F
from numba_droi import nn
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck


def random(shape, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def direct_conv2d(input, weight, bias, stride, padding, dilation, groups):
    """The convolution sum written out per tap on the zero-padded input, in float64."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    n, c_in, h, w = input.shape
    c_out, c_group, kh, kw = weight.shape
    padded = np.pad(input, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, c_out, ho, wo))
    per_group = c_out // groups
    for o in range(c_out):
        channels = slice(o // per_group * c_group, (o // per_group + 1) * c_group)
        for i in range(kh):
            for j in range(kw):
                window = padded[:, channels, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                                j * dw:j * dw + sw * (wo - 1) + 1:sw]
                out[:, o] += np.einsum("nchw,c->nhw", window, weight[o, :, i, j])
    return out if bias is None else out + bias[:, None, None]


CONV_CASES = [  # stride, padding, dilation, groups
    ((1, 1), (0, 0), (1, 1), 1),
    ((2, 1), (1, 2), (1, 1), 2),
    ((1, 2), (2, 1), (2, 1), 1),
    ((2, 2), (1, 1), (1, 2), 4),
]


def test_the_direct_convolution_is_scipys_correlate():
    input, weight = random((1, 3, 6, 7)), random((2, 3, 3, 2), 1)
    expected = np.stack([sum(signal.correlate(input[0, c], weight[o, c], mode="valid") for c in range(3))
                         for o in range(2)])[None]
    np.testing.assert_allclose(direct_conv2d(input, weight, None, (1, 1), (0, 0), (1, 1), 1), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride, padding, dilation, groups", CONV_CASES)
def test_conv2d_is_the_direct_convolution(on, stride, padding, dilation, groups):
    input, weight, bias = random((2, 4, 6, 7)), random((4, 4 // groups, 3, 2), 1), random(4, 2)
    expected = direct_conv2d(input, weight, bias, stride, padding, dilation, groups)
    with on:
        output = F.conv2d(on.array(input), on.array(weight), on.array(bias), stride, padding, dilation,
                          groups)
        without_bias = F.conv2d(on.array(input), on.array(weight), None, stride, padding, dilation,
                                groups)
    np.testing.assert_allclose(on.numpy(output.data), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(on.numpy(without_bias.data), expected - bias[:, None, None], rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("stride, padding, dilation, groups", CONV_CASES[1:])
def test_conv2d_gradients_check(cpu, stride, padding, dilation, groups):
    input = Tensor(random((2, 4, 5, 6)), requires_grad=True)
    weight = Tensor(random((4, 4 // groups, 2, 3), 1), requires_grad=True)
    bias = Tensor(random(4, 2), requires_grad=True)
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups),
                     [input, weight, bias])


def test_conv2d_checks_groups():
    input, weight = random((1, 4, 5, 5)), random((2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"groups = 1 must equal input.shape\[1\] // weight.shape\[1\] "
                                         r"= 4 // 2"):
        F.conv2d(input, weight)
    with pytest.raises(ValueError, match=r"groups = 4 must equal"):
        F.conv2d(input, weight, groups=4)
    with pytest.raises(ValueError, match=r"weight.shape\[0\] = 3 must be a multiple of groups = 2"):
        F.conv2d(input, random((3, 2, 3, 3)), groups=2)
    with pytest.raises(TypeError, match=r"groups must be an int, got 2.0"):
        F.conv2d(input, weight, groups=2.0)
    with pytest.raises(ValueError, match=r"input and weight must be 4-d"):
        F.conv2d(input[0], weight, groups=2)


def test_split_and_narrow_are_differentiable():
    x = Tensor(random((2, 9, 3)), requires_grad=True)
    assert gradcheck(lambda x: F.split(x, (2, 3, 4), axis=1)[1] * F.split(x, (6, 3), 1)[1]
                     + F.narrow(x, 1, 4, 3), [x])
    assert gradcheck(lambda x: F.narrow(x, -1, 1, 2) * 3.0, [x])
    pieces = F.split(x, (5, 0, 4), axis=1)
    np.testing.assert_array_equal(pieces[0].data, x.data[:, :5])
    assert pieces[1].shape == (2, 0, 3)
    with pytest.raises(ValueError, match=r"sizes \[5, 5\] must be non-negative and add up to 9"):
        F.split(x, (5, 5), axis=1)
    with pytest.raises(ValueError, match=r"start = 2 and length = 8 must lie within the 9 elements"):
        F.narrow(x, 1, 2, 8)


def test_conv2d_module_initialises_as_pytorch_and_checks_its_input():
    module = nn.Conv2d(6, 4, (3, 2), stride=2, padding=1, groups=2, rng=0)
    bound = 1 / np.sqrt(3 * 3 * 2)
    assert module.weight.shape == (4, 3, 3, 2) and module.weight.dtype == np.float32
    for parameter in (module.weight, module.bias):
        assert np.all(np.abs(parameter.data) <= bound) and np.max(np.abs(parameter.data)) > 0.7 * bound
    x = random((1, 6, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(
        module(x).data, F.conv2d(x, module.weight, module.bias, 2, 1, 1, 2).data)
    assert nn.Conv2d(6, 4, 1, bias=False, rng=0).bias is None
    with pytest.raises(ValueError, match=r"in_channels = 6, H, W\), got shape \(1, 4, 5, 5\)"):
        module(x[:, :4])
    with pytest.raises(ValueError, match=r"groups = 4 must be positive and divide in_channels = 6"):
        nn.Conv2d(6, 4, 3, groups=4)


def test_deform_conv2d_module_is_the_operator(on):
    module = nn.DeformConv2d(4, 2, 3, padding=1, groups=2, rng=0, dtype=np.float64)
    input, offset, mask = random((1, 4, 4, 5)), random((1, 36, 4, 5), 1), random((1, 18, 4, 5), 2)
    # Deterministic: the cuda backward's atomic adds may otherwise sum in another order each run.
    with on, numba_droi.deterministic():
        x = Tensor(on.array(input), requires_grad=True)
        offset_t, mask_t = (Tensor(on.array(a), requires_grad=True) for a in (offset, mask))
        output = module(x, offset_t, mask_t)
        grad_output = random(output.shape, 3)
        output.backward(on.array(grad_output))
        arrays = [on.array(a) for a in (input, offset, module.weight.data)]
        expected = numba_droi.deform_conv2d(*arrays, on.array(module.bias.data), 1, 1, 1,
                                            on.array(mask))
        expected_grads = numba_droi.deform_conv2d_backward(on.array(grad_output), *arrays, 1, 1, 1,
                                                           on.array(mask))
    np.testing.assert_array_equal(on.numpy(output.data), on.numpy(expected))
    for tensor, index in ((x, 0), (offset_t, 1), (module.weight, 2), (module.bias, 3), (mask_t, 4)):
        np.testing.assert_array_equal(on.numpy(tensor.grad), on.numpy(expected_grads[index]))


CONV_PACKS = [nn.DeformConv2dPack, nn.ModulatedDeformConv2dPack]


def conv_pack(cls, seed=0, **options):
    options = dict(dict(kernel_size=(2, 3), stride=(1, 2), padding=1, dilation=(2, 1)), **options)
    return cls(2, 2, rng=seed, dtype=np.float64, **options)


def perturb(module, seed=5, scale=0.3):
    """Give the zero-initialised parameters random values, so every path carries gradient."""
    rng = np.random.default_rng(seed)
    for _, parameter in module.named_parameters():
        if not np.any(parameter.data):
            parameter.data[...] = rng.uniform(-scale, scale, parameter.shape)
    return module


@pytest.mark.parametrize("cls", CONV_PACKS)
def test_conv_packs_at_zero_init_are_the_plain_convolution(on, cls):
    module = conv_pack(cls, groups=2, deform_groups=2)
    zero = [name for name, p in module.named_parameters() if not np.any(p.data)]
    assert zero == ["conv_offset.weight", "conv_offset.bias"]
    taps = 2 * 3
    assert module.conv_offset.weight.shape == ((2 if cls is nn.DeformConv2dPack else 3) * 2 * taps, 2,
                                               2, 3)
    assert (module.bias is None) == (cls is nn.DeformConv2dPack)  # mmcv's defaults
    input = random((2, 2, 5, 6))
    with on:
        output = module(on.array(input))
    plain = direct_conv2d(input, module.weight.data, None, (1, 2), (1, 1), (2, 1), 2)
    if cls is nn.DeformConv2dPack:
        np.testing.assert_allclose(on.numpy(output.data), plain, rtol=1e-12, atol=1e-12)
    else:  # sigmoid(0) = 0.5 scales the samples, not the bias (as mmcv)
        np.testing.assert_allclose(on.numpy(output.data), 0.5 * plain + module.bias.data[:, None, None],
                                   rtol=1e-12, atol=1e-12)


def test_modulated_pack_reads_offsets_from_the_first_two_thirds_and_the_mask_from_the_last():
    module = perturb(conv_pack(nn.ModulatedDeformConv2dPack, deform_groups=2))
    input = random((1, 2, 5, 6))
    prediction = F.conv2d(input, module.conv_offset.weight, module.conv_offset.bias, (1, 2), 1,
                          (2, 1)).data
    offset, mask = prediction[:, :24], 1 / (1 + np.exp(-prediction[:, 24:]))
    expected = numba_droi.deform_conv2d(input, offset, module.weight.data, module.bias.data, (1, 2), 1,
                                        (2, 1), mask)
    np.testing.assert_allclose(module(input).data, expected, rtol=1e-12, atol=1e-13)


def through(module, *fixed):
    """``(fn, parameters)``: fn(x, *parameters) runs ``module(x, *fixed)`` with those parameters in
    place."""
    names = [name for name, _ in module.named_parameters()]

    def fn(x, *parameters):
        for name, parameter in zip(names, parameters):
            owner = module
            *path, attribute = name.split(".")
            for part in path:
                owner = getattr(owner, part)
            setattr(owner, attribute, parameter)
        return module(x, *fixed)
    return fn, [parameter for _, parameter in module.named_parameters()]


@pytest.mark.parametrize("cls", CONV_PACKS)
def test_conv_pack_gradients_check_on_cpu(cpu, cls):
    module = perturb(conv_pack(cls, bias=True))
    x = Tensor(random((1, 2, 4, 5)), requires_grad=True)
    fn, parameters = through(module)
    assert gradcheck(fn, [x] + parameters)


@pytest.mark.parametrize("cls", CONV_PACKS)
def test_conv_pack_is_the_same_on_both_targets(cuda, cpu, cls):
    results = []
    for on in (cpu, cuda):
        module = perturb(conv_pack(cls))
        x = Tensor(on.array(random((1, 2, 4, 5))), requires_grad=True)
        with on:
            output = module(x)
            output.backward(on.array(random(output.shape, 1)))
        results.append([on.numpy(output.data), on.numpy(x.grad)] +
                       [on.numpy(p.grad) for p in module.parameters()])
    for on_cpu, on_cuda in zip(*results):
        np.testing.assert_allclose(on_cuda, on_cpu, rtol=1e-12, atol=1e-13)


ROIS = np.array([[0, 0.6, 1.3, 9.2, 10.1], [1, 2.2, 0.4, 12.3, 7.7], [0, 3.1, 4.5, 11.6, 12.3]])
PS_OPTIONS = dict(spatial_scale=0.5, output_dim=2, group_size=2, pooled_size=2, sample_per_part=2,
                  trans_std=0.2)


def ps_pack(seed=0, in_channels=3, offset_classes=2):
    return nn.DeformPSRoIPoolPack(in_channels, **PS_OPTIONS, offset_classes=offset_classes, rng=seed,
                                  dtype=np.float64)


def test_psroi_pack_at_zero_init_is_plain_ps_pooling(on):
    module = ps_pack()
    assert [name for name, p in module.named_parameters() if not np.any(p.data)] == \
        ["offset_conv.weight", "offset_conv.bias"]
    assert module.offset_conv.weight.shape == (2 * 2 * 4, 3, 1, 1)
    input, features = random((2, 8, 7, 8)), random((2, 3, 7, 8), 1)
    with on:
        output = module(on.array(input), on.array(ROIS), on.array(features))
        expected = numba_droi.deform_psroi_pool(on.array(input), on.array(ROIS), None, **PS_OPTIONS,
                                                no_trans=True)
    np.testing.assert_array_equal(on.numpy(output.data), on.numpy(expected))


def test_psroi_pack_moves_by_the_pooled_offset_map():
    module = perturb(ps_pack())
    input, features = random((2, 8, 7, 8)), random((2, 3, 7, 8), 1)
    offset_map = F.conv2d(features, module.offset_conv.weight, module.offset_conv.bias).data
    trans = numba_droi.deform_psroi_pool(offset_map, ROIS, None, 0.5, 4, 2, 2, 2, 2, no_trans=True)
    expected = numba_droi.deform_psroi_pool(input, ROIS, trans, **PS_OPTIONS)
    np.testing.assert_allclose(module(input, ROIS, features).data, expected, rtol=1e-12, atol=1e-13)
    assert not np.allclose(expected, numba_droi.deform_psroi_pool(input, ROIS, None, **PS_OPTIONS,
                                                                  no_trans=True))


def test_psroi_pack_gradients_check_on_cpu(cpu):
    module = perturb(ps_pack(in_channels=8, offset_classes=1), scale=0.5)
    x = Tensor(random((1, 8, 5, 6)), requires_grad=True)  # feeds the offsets and the pooling
    fn, parameters = through(module, ROIS[[0, 2]])
    assert gradcheck(fn, [x] + parameters)


def test_psroi_pack_is_the_same_on_both_targets(cuda, cpu):
    results = []
    for on in (cpu, cuda):
        module = perturb(ps_pack())
        x, f = (Tensor(on.array(random(shape, seed)), requires_grad=True)
                for shape, seed in (((2, 8, 7, 8), 0), ((2, 3, 7, 8), 1)))
        with on:
            output = module(x, on.array(ROIS), f)
            output.backward(on.array(random(output.shape, 2)))
        results.append([on.numpy(a) for a in [output.data, x.grad, f.grad] +
                        [p.grad for p in module.parameters()]])
    for on_cpu, on_cuda in zip(*results):
        np.testing.assert_allclose(on_cuda, on_cpu, rtol=1e-12, atol=1e-13)


def test_psroi_pack_checks_offset_classes():
    with pytest.raises(ValueError, match=r"offset_classes = 3 must divide output_dim = 2"):
        ps_pack(offset_classes=3)


@pytest.mark.parametrize("make, inputs", [
    (lambda seed: perturb(nn.ModulatedDeformConv2dPack(2, 3, 3, padding=1, rng=seed)),
     lambda: (random((1, 2, 5, 5)).astype(np.float32),)),
    (lambda seed: perturb(nn.DeformConv2dPack(2, 3, 3, padding=1, deform_groups=2, rng=seed)),
     lambda: (random((1, 2, 5, 5)).astype(np.float32),)),
    (lambda seed: perturb(nn.DeformPSRoIPoolPack(8, **PS_OPTIONS, rng=seed)),
     lambda: (random((2, 8, 7, 8)).astype(np.float32), ROIS)),
], ids=["ModulatedDeformConv2dPack", "DeformConv2dPack", "DeformPSRoIPoolPack"])
def test_state_dict_round_trips(tmp_path, make, inputs):
    module = make(0)
    path = tmp_path / "module.npz"
    np.savez(path, **module.state_dict())
    copy = make(9)
    with np.load(path) as saved:
        copy.load_state_dict(saved)
    assert all(p.dtype == np.float32 for p in copy.parameters())
    np.testing.assert_array_equal(copy(*inputs()).data, module(*inputs()).data)


POOLING_MODULES = [
    (nn.RoIPool((2, 3), 0.9), "roi_pool", (2, 2, 7, 8)),
    (nn.PSRoIPool((2, 3), 0.9), "ps_roi_pool", (2, 12, 7, 8)),
    (nn.PSRoIAlign((2, 3), 0.9, 2), "ps_roi_align", (2, 12, 7, 8)),
]


@pytest.mark.parametrize("module, operator, shape", POOLING_MODULES,
                         ids=["RoIPool", "PSRoIPool", "PSRoIAlign"])
def test_pooling_modules_are_their_operators(on, module, operator, shape):
    """Each module is its functional operator; its input gradient checks by finite differences on the
    cpu target (random features: no max-pool ties) and is the same on the cuda target."""
    options = {k: v for k, v in vars(module).items() if k != "training"}
    grads = {}
    for target in (on,) if on.name == "cpu" else (on, type(on)("cpu")):
        with target:
            x = Tensor(target.array(random(shape, 5)), requires_grad=True)
            output = module(x, target.array(ROIS[:2]))
            expected = getattr(numba_droi, operator)(target.array(random(shape, 5)),
                                                     target.array(ROIS[:2]), **options)
            np.testing.assert_array_equal(target.numpy(output.data), target.numpy(expected))
            output.backward(target.array(random(output.shape, 6)))
            grads[target.name] = target.numpy(x.grad)
    if on.name == "cpu":
        assert gradcheck(lambda x: module(x, ROIS[:2]), [Tensor(random(shape, 5), requires_grad=True)])
    else:
        np.testing.assert_allclose(grads["cuda"], grads["cpu"], rtol=1e-12, atol=1e-13)
    assert repr(module).startswith(type(module).__name__ + "(output_size=(2, 3)")


@pytest.mark.parametrize("stride, padding, dilation, groups", CONV_CASES)
def test_conv2d_matches_torch_as_torchvision_peer(cpu, stride, padding, dilation, groups):
    torch = pytest.importorskip("torch")
    input, weight, bias = random((2, 4, 6, 7)), random((4, 4 // groups, 3, 2), 1), random(4, 2)
    expected = torch.nn.functional.conv2d(*(torch.from_numpy(a) for a in (input, weight, bias)),
                                          stride=stride, padding=padding, dilation=dilation,
                                          groups=groups).numpy()
    output = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    np.testing.assert_allclose(output.data, expected, rtol=1e-12, atol=1e-12)
