"""numba_droi.torch: every wrapper's output and gradients equal to our own operators (through
numba_droi.functional, which calls numba_droi.ops), torch.autograd.gradcheck of every function and
module in float64, memory shared with DLPack, torchvision's list-of-boxes form, the layers' parameters
initialised as the peers' (and the packs equal to the plain operator at their zero initialisation,
checked against torch's own conv2d), and a few SGD steps of a model using them."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typing import List  # noqa: E402

import numba_droi.torch as nt  # noqa: E402
from torch.autograd.gradcheck import GradcheckError  # noqa: E402
from numba_droi import functional as F  # noqa: E402
from numba_droi import ops, registry  # noqa: E402
from numba_droi.autograd import Tensor  # noqa: E402


def random(shape, seed, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, shape)


def away_from_integers(shape, seed):
    """Offsets in +-(0.1, 0.9): added to integer positions they keep clear of B2's kinks."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 0.9, shape) * rng.choice([-1.0, 1.0], shape)


FEATURES = np.random.default_rng(0).permutation(2 * 8 * 8 * 9).reshape(2, 8, 8, 9) / 100.0  # no ties
ROIS = np.array([[0, 1.3, 0.6, 13.1, 11.7], [1, 4.2, 2.5, 15.6, 14.1], [1, 0.4, 3.3, 9.8, 9.2]])
OUTPUT = 3
CONV_INPUT, CONV_WEIGHT, CONV_BIAS = random((2, 4, 5, 6), 1), random((6, 2, 3, 3), 2), random(6, 3)
CONV_OFFSET = away_from_integers((2, 2 * 2 * 9, 5, 3), 4)  # 2 offset groups; padding 1, stride (1, 2)
CONV_MASK = random((2, 2 * 9, 5, 3), 5, 0.5, 1.5)

def registry_case(operator):
    """``(ours through the adapter, ours through functional, differentiable arrays, the others)`` of
    the record's example. Arrays with elements that have no derivative (prroi_pool's boxes, whose batch
    column finite differences would move) count among the others: tests/test_prroi_pool.py checks their
    gradients."""
    example = operator.example(np.random.default_rng(0), batch=2, channels=2, height=8, width=9)
    differentiable = tuple(name for name in operator.wanted(example.arrays)
                           if name not in dict(operator.no_derivative))
    others = [name for name in operator.arrays if name not in differentiable]

    def call(function):
        def run(*arrays):  # the differentiable arrays, then the others
            given = dict(zip(differentiable + tuple(others), arrays))
            return function(*operator.positional(given, example.options))
        return run
    return (call(nt.FUNCTIONS[operator.name]), call(getattr(F, operator.name)),
            [example.arrays[name] for name in differentiable], [example.arrays[name] for name in others])


# name -> (torch wrapper, our differentiable operator on the same arguments, differentiable arguments,
#          the other array arguments): wrapper(*differentiable, *others)
CASES = {operator.name: registry_case(operator) for operator in registry.OPERATORS}
CASES.update({  # the peers' signatures
    "roi_align_adaptive": (lambda x, r: nt.roi_align(x, r, (2, 3), 0.5),
                           lambda x, r: F.roi_align(x, r, (2, 3), 0.5), [FEATURES], [ROIS]),
    "deform_roi_pooling": (
        lambda x, t, r: nt.deform_roi_pooling(x, r, t, 0.5, OUTPUT, 2, False, 2, 2, 2, 0.2),
        lambda x, t, r: F.deform_psroi_pool(x, r, t, 0.5, 2, 2, OUTPUT, 2, 2, 0.2),
        [FEATURES, random((3, 4, 2, 2), 8)], [ROIS]),  # two classes of part offsets
    "modulated_deform_conv2d": (
        lambda x, o, m, w, b: nt.modulated_deform_conv2d(x, o, m, w, b, (1, 2), 1, 1, 2, 2),
        lambda x, o, m, w, b: F.deform_conv2d(x, o, w, b, (1, 2), 1, 1, m),
        [CONV_INPUT, CONV_OFFSET, CONV_MASK, CONV_WEIGHT, CONV_BIAS], []),
})


def gradcheck(function, inputs):
    """torch's gradcheck in fast mode: the backward's ``v^T J u`` against finite differences of the
    forward along a random ``u`` (a few evaluations instead of one per input element)."""
    return torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def tensors(arrays, requires_grad):
    return [torch.tensor(a, requires_grad=requires_grad) for a in arrays]


@pytest.mark.parametrize("name", CASES)
def test_outputs_and_gradients_equal_ours(name):
    wrapper, ours, differentiable, others = CASES[name]
    inputs = tensors(differentiable, True)
    output = wrapper(*inputs, *tensors(others, False))
    grad_output = random(output.shape, 9)
    output.backward(torch.tensor(grad_output))

    our_inputs = [Tensor(a.copy(), requires_grad=True) for a in differentiable]
    our_output = ours(*our_inputs, *others)
    our_output.backward(grad_output)

    assert output.dtype == torch.float64
    np.testing.assert_array_equal(output.detach().numpy(), our_output.data)
    for index, (tensor, our) in enumerate(zip(inputs, our_inputs)):
        np.testing.assert_array_equal(tensor.grad.numpy(), our.grad, err_msg=f"argument {index}")


@pytest.mark.parametrize("name", CASES)
def test_gradcheck(name):
    wrapper, _, differentiable, others = CASES[name]
    fixed = tensors(others, False)
    assert gradcheck(lambda *inputs: wrapper(*inputs, *fixed), tensors(differentiable, True))


def test_full_gradcheck_on_a_small_case():
    """Every element's finite difference (not a random projection), on a small deform_roi_pool."""
    x, offset, mask = (torch.tensor(a[:1, :2, :5, :5].copy() if a is FEATURES else a[:1], requires_grad=True)
                       for a in (FEATURES, random((3, 2, 2, 2), 6), random((3, 1, 2, 2), 7, 0.5, 1.5)))
    rois = torch.tensor([[0, 0.6, 1.3, 7.7, 8.4]])
    assert torch.autograd.gradcheck(lambda *a: nt.deform_roi_pool(a[0], rois, a[1], 2, 0.5, 2, 0.1, a[2]),
                                    (x, offset, mask), eps=1e-6, atol=1e-6)


def test_gradcheck_detects_a_wrong_backward(monkeypatch):
    roi_align_backward = ops.roi_align_backward
    monkeypatch.setattr(ops, "roi_align_backward", lambda *a, **k: 1.01 * roi_align_backward(*a, **k))
    wrapper, _, differentiable, others = CASES["roi_align"]
    with pytest.raises(GradcheckError):
        gradcheck(lambda x: wrapper(x, *tensors(others, False)), tensors(differentiable, True))


def test_gradient_only_where_asked():
    x, offset = tensors([FEATURES, random((3, 2, OUTPUT, OUTPUT), 6)], False)
    x.requires_grad_(True)
    nt.deform_roi_pool(x, torch.tensor(ROIS), offset, OUTPUT, 0.5, 2).sum().backward()
    assert x.grad is not None and offset.grad is None


def test_list_of_boxes_per_image_as_torchvision():
    x, rois = torch.tensor(FEATURES), torch.tensor(ROIS)
    boxes = [rois[rois[:, 0] == n, 1:] for n in range(2)]
    for function in (nt.roi_align, nt.roi_pool, nt.ps_roi_pool, nt.ps_roi_align):
        expected = function(x, rois[torch.argsort(rois[:, 0], stable=True)], 2, 0.5)
        torch.testing.assert_close(function(x, boxes, 2, 0.5), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="boxes"):
        nt.roi_align(x, rois[:, 1:], 2)
    with pytest.raises(ValueError, match="boxes"):
        nt.roi_align(x, [rois], 2)


def test_memory_is_shared_both_ways(monkeypatch):
    """The operator reads the tensor's own memory and the result tensor is the operator's array."""
    seen, roi_align = {}, ops.roi_align

    def spy(input, rois, **options):
        seen["input"], seen["output"] = input, roi_align(input, rois, **options)
        return seen["output"]

    monkeypatch.setattr(ops, "roi_align", spy)
    x = torch.tensor(FEATURES, requires_grad=True)
    output = nt.roi_align(x, torch.tensor(ROIS), OUTPUT, 0.5)
    assert np.shares_memory(seen["input"], x.detach().numpy())
    assert output.data_ptr() == seen["output"].ctypes.data
    seen["output"][0, 0, 0, 0] = 123.0
    assert output[0, 0, 0, 0].item() == 123.0


def test_float32_and_non_contiguous_inputs():
    x = torch.tensor(FEATURES, dtype=torch.float32).transpose(2, 3).contiguous().transpose(2, 3)
    assert not x.is_contiguous()
    output = nt.roi_align(x, torch.tensor(ROIS, dtype=torch.float32), OUTPUT, 0.5, 2)
    assert output.dtype == torch.float32
    np.testing.assert_array_equal(output.numpy(), ops.roi_align(FEATURES.astype(np.float32),
                                                                ROIS.astype(np.float32), OUTPUT, 0.5, 2))


def test_on_both_targets(on):
    """CPU tensors on the cuda target (simulated without a GPU) give what the cpu target gives."""
    x = torch.tensor(FEATURES[:1, :4, :5, :6], requires_grad=True)
    rois = torch.tensor([[0, 0.7, 1.2, 4.6, 3.9]])
    with on:
        output = nt.roi_align(x, rois, 2, 1.0, 2, True)
        output.backward(torch.ones_like(output))
    expected = torch.tensor(ops.roi_align(FEATURES[:1, :4, :5, :6], rois.numpy(), 2, 1.0, 2, True))
    torch.testing.assert_close(output.detach(), expected, rtol=1e-12, atol=1e-12)
    assert x.grad.abs().sum() > 0


# -- modules ------------------------------------------------------------------------------------------

def randomise(module, seed):
    """Every parameter random (away from zero: no pack starts at its kinks), in float64."""
    module.double()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.tensor(rng.uniform(0.05, 0.3, parameter.shape)
                                         * rng.choice([-1.0, 1.0], parameter.shape)))
    return module


# name -> (module, its array arguments: the differentiable ones, then the boxes if any); a module with
# an offset takes (input, rois, offset)
def registry_module(operator):
    example = operator.example(np.random.default_rng(0), batch=2, channels=2, height=8, width=9)
    differentiable = tuple(name for name in operator.wanted(example.arrays)
                           if name not in dict(operator.no_derivative))
    return (lambda: nt.MODULES[operator.name](**example.options),
            [example.arrays[name] for name in differentiable],
            [example.arrays[name] for name in operator.arrays if name not in differentiable])


MODULES = {cls.__name__: registry_module(cls.operator) for cls in nt.MODULES.values()}
MODULES.update({  # written by hand
    "DeformRoIPoolPack": (lambda: nt.DeformRoIPoolPack(2, 8, 6, 0.5, 2), [FEATURES], [ROIS]),
    "ModulatedDeformRoIPoolPack": (lambda: nt.ModulatedDeformRoIPoolPack(2, 8, 6, 0.5, 2), [FEATURES],
                                   [ROIS]),
    "DeformRoIPooling": (lambda: nt.DeformRoIPooling(0.5, OUTPUT, 2, False, 2, 2, 2, 0.2),
                         [FEATURES, random((3, 2, 2, 2), 8)], [ROIS]),
    "DeformConv2d": (lambda: nt.DeformConv2d(4, 6, 3, (1, 2), 1, groups=2),
                     [CONV_INPUT, CONV_OFFSET, CONV_MASK], []),
    "ModulatedDeformConv2d": (lambda: nt.ModulatedDeformConv2d(4, 6, 3, (1, 2), 1, groups=2,
                                                               deform_groups=2),
                              [CONV_INPUT, CONV_OFFSET, CONV_MASK], []),
    "DeformConv2dPack": (lambda: nt.DeformConv2dPack(4, 6, 3, 1, 1, groups=2, deform_groups=2),
                         [CONV_INPUT[:, :, :4, :4]], []),
    "ModulatedDeformConv2dPack": (lambda: nt.ModulatedDeformConv2dPack(4, 6, 3, 1, 1, groups=2,
                                                                       deform_groups=2),
                                  [CONV_INPUT[:, :, :4, :4]], []),
})


@pytest.mark.parametrize("name", MODULES)
def test_module_gradcheck(name):
    """Gradients of the module's output with respect to its inputs and all its parameters."""
    make, differentiable, others = MODULES[name]
    module = randomise(make(), 10)
    names = [n for n, _ in module.named_parameters()]
    fixed = tensors(others, False)

    def run(*arguments):
        inputs, parameters = arguments[:len(differentiable)], arguments[len(differentiable):]
        inputs = (*inputs[:1], *fixed, *inputs[1:])  # (input, rois, offset) or (input, offset, mask)
        return torch.func.functional_call(module, dict(zip(names, parameters)), inputs)

    arguments = tensors(differentiable, True) + [p.detach().clone().requires_grad_(True)
                                                 for p in module.parameters()]
    assert gradcheck(run, arguments)


def test_conv_modules_initialised_as_the_peers():
    torch.manual_seed(0)
    layer = nt.DeformConv2d(4, 6, 3, groups=2)  # torchvision: Conv2d's init, bound 1/sqrt(fan_in)
    bound = 1 / np.sqrt(2 * 9)
    assert layer.weight.shape == (6, 2, 3, 3) and layer.bias.shape == (6,)
    assert 0.8 * bound < layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    layer = nt.ModulatedDeformConv2d(4, 6, 3, groups=2)  # mmcv: 1/sqrt(in_channels * kh * kw), bias 0
    bound = 1 / np.sqrt(4 * 9)
    assert 0.8 * bound < layer.weight.abs().max() <= bound and not layer.bias.any()
    layer = nt.DeformConv2dPack(4, 6, 3, groups=2)  # mmcv: Kaiming-uniform for ReLU, no bias
    bound = np.sqrt(6 / (2 * 9))
    assert 0.8 * bound < layer.weight.abs().max() <= bound and layer.bias is None
    assert sorted(layer.state_dict()) == ["conv_offset.bias", "conv_offset.weight", "weight"]
    assert layer.conv_offset.out_channels == 18 and not layer.conv_offset.weight.any()
    pack = nt.ModulatedDeformConv2dPack(4, 6, 3, deform_groups=2)
    assert pack.conv_offset.out_channels == 3 * 2 * 9 and not pack.conv_offset.weight.any()


@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 1, 1, 1), ((2, 1), (1, 2), (1, 2), 2)])
def test_conv_modules_are_torchs_convolution_without_offsets(stride, padding, dilation, groups):
    """DeformConv2d with zero offsets, and the packs at their zero initialisation, are plain
    convolutions (the modulated pack at half strength): torch's conv2d is the oracle."""
    x = torch.tensor(random((2, 4, 7, 8), 11))
    layer = nt.DeformConv2d(4, 6, 3, stride, padding, dilation, groups).double()
    expected = torch.nn.functional.conv2d(x, layer.weight, layer.bias, stride, padding, dilation, groups)
    offset = torch.zeros(2, 2 * 9, *expected.shape[2:], dtype=torch.float64)
    torch.testing.assert_close(layer(x, offset), expected, rtol=1e-12, atol=1e-12)
    pack = nt.DeformConv2dPack(4, 6, 3, stride, padding, dilation, groups, deform_groups=2).double()
    expected = torch.nn.functional.conv2d(x, pack.weight, None, stride, padding, dilation, groups)
    torch.testing.assert_close(pack(x), expected, rtol=1e-12, atol=1e-12)
    pack = nt.ModulatedDeformConv2dPack(4, 6, 3, stride, padding, dilation, groups).double()
    with torch.no_grad():
        pack.bias.uniform_()
    expected = torch.nn.functional.conv2d(x, pack.weight, None, stride, padding, dilation, groups)
    torch.testing.assert_close(pack(x), 0.5 * expected + pack.bias[:, None, None], rtol=1e-12, atol=1e-12)


def test_roi_packs_start_from_roi_align():
    x, rois = torch.tensor(FEATURES), torch.tensor(ROIS)
    plain = nt.roi_align(x, rois, 2, 0.5, 2, aligned=True)
    pack = nt.DeformRoIPoolPack(2, 8, 16, 0.5, 2).double()
    assert sorted(pack.state_dict())[:2] == ["offset_fc.0.bias", "offset_fc.0.weight"]
    assert not pack.offset_fc[4].weight.any() and pack.offset_fc[0].weight.any()
    torch.testing.assert_close(pack(x, rois), plain, rtol=1e-12, atol=1e-12)
    pack = nt.ModulatedDeformRoIPoolPack(2, 8, 16, 0.5, 2).double()
    assert not pack.mask_fc[2].weight.any()
    torch.testing.assert_close(pack(x, rois), 0.5 * plain, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="output_channels"):
        pack(x[:, :4], rois)


def test_deform_roi_pooling_without_offsets():
    x, rois = torch.tensor(FEATURES), torch.tensor(ROIS)
    layer = nt.DeformRoIPooling(0.5, OUTPUT, 2, no_trans=True, group_size=2, sample_per_part=2)
    expected = ops.deform_psroi_pool(FEATURES, ROIS, None, 0.5, 2, 2, OUTPUT, OUTPUT, 2, 0.0, True)
    np.testing.assert_array_equal(layer(x, rois).numpy(), expected)
    assert "no_trans=True" in repr(layer)


def test_modulated_deform_conv2d_checks_its_groups():
    x, offset, mask, weight = (torch.tensor(a) for a in (CONV_INPUT, CONV_OFFSET, CONV_MASK, CONV_WEIGHT))
    with pytest.raises(ValueError, match="deform_groups"):
        nt.modulated_deform_conv2d(x, offset, mask, weight, None, (1, 2), 1, 1, 2, 1)
    with pytest.raises(ValueError, match="groups"):
        nt.modulated_deform_conv2d(x, offset, mask, weight, None, (1, 2), 1, 1, 1, 2)


def test_a_model_with_our_layers_trains():
    """A few SGD steps on a deformable-convolution and RoI Align head reduce its loss (float32)."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"conv": nt.DeformConv2dPack(3, 8, 3, padding=1),
                                 "pool": nt.RoIAlign(3, 1.0, 2, aligned=True),
                                 "fc": torch.nn.Linear(8 * 3 * 3, 3)})
    features = torch.randn(2, 3, 12, 12)
    rois = torch.tensor([[0, 1, 1, 9, 9], [0, 4, 2, 11, 10], [1, 0, 3, 8, 11], [1, 3, 3, 11, 11]],
                        dtype=torch.float32)
    labels = torch.tensor([0, 1, 2, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        pooled = model["pool"](torch.relu(model["conv"](features)), rois)
        loss = torch.nn.functional.cross_entropy(model["fc"](pooled.flatten(1)), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert model["conv"].conv_offset.weight.grad.abs().sum() > 0  # the offsets learn too
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses


# -- as torch's own operators: half precision, autocast, threads, errors --------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", [operator.name for operator in registry.OPERATORS])
def test_half_precision_is_computed_in_float32_and_returned_in_its_dtype(name, dtype):
    """As torchvision's autocast kernels: the half tensors cast to float32, the result cast back to
    the features' dtype; the gradients reach the half tensors in their dtype."""
    wrapper, _, differentiable, others = CASES[name]
    halves = tensors([a.astype(np.float32) for a in differentiable], True)
    halves = [t.detach().to(dtype).requires_grad_() for t in halves]
    singles = [t.detach().float().requires_grad_() for t in halves]
    output = wrapper(*halves, *tensors(others, False))
    expected = wrapper(*singles, *tensors(others, False))
    assert output.dtype == dtype
    assert torch.equal(output, expected.to(dtype))
    grad = torch.rand(output.shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    output.backward(grad)
    expected.backward(grad.float())
    for half, single in zip(halves, singles):
        assert half.grad.dtype == dtype
        assert torch.equal(half.grad, single.grad.to(dtype))


def test_under_autocast_the_layers_run_on_the_bfloat16_features_of_the_layers_before():
    torch.manual_seed(0)
    conv, offsets = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(3, 18, 3, padding=1)
    deform = nt.DeformConv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 3, 10, 10)
    rois = torch.tensor([[0, 1, 1, 8, 8], [1, 2, 0, 9, 7]], dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = conv(x)
        deformed = deform(features, offsets(x))
        pooled = nt.roi_align(deformed, rois, 3, 1.0, 2, True)
    assert features.dtype == deformed.dtype == pooled.dtype == torch.bfloat16
    expected = nt.roi_align(deformed.float(), rois, 3, 1.0, 2, True).to(torch.bfloat16)
    assert torch.equal(pooled, expected)
    pooled.float().square().sum().backward()
    for parameter in (conv.weight, offsets.weight, deform.weight):
        assert parameter.grad.dtype == torch.float32
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0


def test_on_the_cpu_our_threads_are_torchs(monkeypatch):
    """``torch.set_num_threads(1)``: no helper thread; 2: one helper beside the calling thread."""
    from numba_droi import _backend
    helpers = []
    run = _backend._Helpers.run
    monkeypatch.setattr(_backend._Helpers, "run", lambda self, work, count: (helpers.append(count),
                                                                              run(self, work, count))[1])
    x = torch.tensor(FEATURES, requires_grad=True)
    rois = torch.tensor(np.repeat(ROIS, 4, axis=0))
    torch_threads, our_threads = torch.get_num_threads(), _backend.get_num_threads()
    try:
        for threads, expected in ((1, []), (2, [1, 1])):
            torch.set_num_threads(threads)
            helpers.clear()
            nt.roi_align(x, rois, OUTPUT, 0.5, 2).sum().backward()
            assert helpers[:2] == expected and set(helpers) <= set(expected)
    finally:
        torch.set_num_threads(torch_threads)
        _backend.set_num_threads(our_threads)


def test_bad_arguments_raise_runtime_errors_as_torchs_with_our_messages():
    x = torch.tensor(FEATURES)
    for call, kind, message in [
            (lambda: nt.roi_align(x, torch.zeros(3, 4), 2), ValueError, r"boxes must be a Tensor\[K, 5\]"),
            (lambda: nt.roi_align(x, torch.tensor([[2.0, 0, 0, 3, 3]]), 2), ValueError, "batch index"),
            (lambda: nt.roi_align(x.int(), torch.tensor(ROIS), 2), TypeError, "input must be float32"),
            (lambda: nt.deform_conv2d(x, torch.zeros(2, 5, 8, 9, dtype=torch.float64),
                                      torch.zeros(4, 8, 3, 3, dtype=torch.float64)), ValueError, "offset")]:
        with pytest.raises(RuntimeError, match=message) as caught:
            call()
        assert isinstance(caught.value, kind)


# -- custom operators: torch.compile, torch.export, fx ---------------------------------------------------

@pytest.mark.parametrize("name", [operator.name for operator in registry.OPERATORS])
def test_every_operator_is_a_custom_operator_that_passes_opcheck(name):
    """``torch.ops.numba_droi.<name>``: its schema, fake implementation (shapes under dynamic sizes
    too) and autograd registration checked by torch's own ``opcheck``."""
    operator = registry.BY_NAME[name]
    example = operator.example(np.random.default_rng(0), batch=2, channels=2, height=8, width=9)
    arrays = [None if example.arrays[n] is None else
              torch.tensor(example.arrays[n], requires_grad=n in operator.differentiable)
              for n in operator.arrays]
    options = repr({key: nt._plain(value) for key, value in operator.with_defaults(example.options).items()})
    assert getattr(torch.ops.numba_droi, name) is not None
    torch.library.opcheck(nt.CUSTOM_OPS[name], (*arrays, options))


class DetectorHead(torch.nn.Module):
    """A deformable convolution and RoI Align, the boxes in either of torchvision's forms."""

    def __init__(self):
        super().__init__()
        self.conv = nt.DeformConv2dPack(3, 4, 3, padding=1)
        self.pool = nt.RoIAlign(3, 1.0, 2, aligned=True)

    def forward(self, x, boxes):
        return self.pool(torch.relu(self.conv(x)), boxes).square().sum()


def head_inputs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    boxes = [torch.tensor([[1.0, 1, 8, 8]]), torch.tensor([[2.0, 0, 9, 7], [0.5, 3, 6, 9]])]
    return DetectorHead(), x, boxes


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("box_format", ["tensor", "list"])
def test_torch_compile_with_fullgraph_gives_eagers_numbers(backend, box_format):
    head, x, boxes = head_inputs()
    boxes = nt._rois(boxes) if box_format == "tensor" else boxes
    expected = head(x, boxes)
    expected_grads = torch.autograd.grad(expected, [x, head.conv.weight, head.conv.conv_offset.weight])
    torch._dynamo.reset()
    compiled = torch.compile(head, fullgraph=True, backend=backend)
    output = compiled(x, boxes)
    grads = torch.autograd.grad(output, [x, head.conv.weight, head.conv.conv_offset.weight])
    torch.testing.assert_close(output, expected, rtol=1e-6, atol=1e-6)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_torch_export_gives_a_program_that_runs():
    head, x, boxes = head_inputs()
    rois = nt._rois(boxes)
    program = torch.export.export(head, (x.detach(), rois))
    names = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"numba_droi.deform_conv2d.default", "numba_droi.roi_align.default"} <= names
    assert torch.equal(program.module()(x.detach(), rois), head(x.detach(), rois))


def test_fx_symbolic_trace_of_a_module_and_of_a_function():
    head, x, boxes = head_inputs()
    rois = nt._rois(boxes)
    traced = torch.fx.symbolic_trace(head)
    assert torch.equal(traced(x, rois), head(x, rois))
    function = torch.fx.symbolic_trace(lambda x, rois: nt.ps_roi_align(x, rois, 2, 0.5, 2))
    features = torch.rand(2, 8, 6, 7)
    assert torch.equal(function(features, rois), nt.ps_roi_align(features, rois, 2, 0.5, 2))


# torch 2.13 deprecates TorchScript (in favour of torch.compile and torch.export, tested above); it still
# works, and models deployed with it still call it
SCRIPT_DEPRECATED = pytest.mark.filterwarnings("ignore:`torch.jit.script.*` is deprecated:DeprecationWarning")


def scripted_arguments(operator):
    """The record's example as the function takes it, positionally (optional arrays left out: None)."""
    example = operator.example(np.random.default_rng(0), batch=2, channels=2, height=8, width=9)
    arrays = {name: None if a is None else torch.tensor(a) for name, a in example.arrays.items()}
    return operator.positional(arrays, example.options)


@pytest.mark.parametrize("name", [operator.name for operator in registry.OPERATORS])
@SCRIPT_DEPRECATED
def test_torch_jit_script_of_every_function_gives_eagers_numbers(name):
    arguments = scripted_arguments(registry.BY_NAME[name])
    scripted = torch.jit.script(nt.FUNCTIONS[name])
    assert torch.equal(scripted(*arguments), nt.FUNCTIONS[name](*arguments))


@pytest.mark.parametrize("name", list(nt.MODULES))
@SCRIPT_DEPRECATED
def test_torch_jit_script_of_every_layer_gives_eagers_numbers(name):
    operator = registry.BY_NAME[name]
    example = operator.example(np.random.default_rng(0), batch=2, channels=2, height=8, width=9)
    layer = nt.MODULES[name](**example.options)
    arrays = [None if example.arrays[n] is None else torch.tensor(example.arrays[n]) for n in operator.arrays]
    assert torch.equal(torch.jit.script(layer)(*arrays), layer(*arrays))


class ScriptableHead(torch.nn.Module):
    """torchvision's deformable convolution and RoI Align layers, the boxes as a list per image."""

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Conv2d(3, 18, 3, padding=1)
        self.conv = nt.DeformConv2d(3, 4, 3, padding=1)
        self.pool = nt.RoIAlign(3, 1, 2, aligned=True)  # (an int scale: kept as a float)

    def forward(self, x, boxes: List[torch.Tensor]):
        return self.pool(torch.relu(self.conv(x, self.offset(x))), boxes).square().sum()


@SCRIPT_DEPRECATED
def test_torch_jit_script_of_a_model_saves_loads_and_differentiates(tmp_path):
    _, x, boxes = head_inputs()
    torch.manual_seed(1)
    head = ScriptableHead()
    path = str(tmp_path / "head.pt")
    torch.jit.script(head).save(path)
    loaded = torch.jit.load(path)
    expected = head(x, boxes)
    expected_grads = torch.autograd.grad(expected, [x, head.conv.weight])
    output = loaded(x, boxes)
    grads = torch.autograd.grad(output, [x, loaded.conv.weight])
    assert torch.equal(output, expected)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


@SCRIPT_DEPRECATED
def test_torch_jit_script_of_functions_with_either_box_format():
    _, x, boxes = head_inputs()
    rois = nt._rois(boxes)

    def pooled(x, per_image: List[torch.Tensor], rois):
        aligned = nt.roi_align(x, per_image, [2, 3], 0.5, 2, True) + nt.roi_align(x, rois, (2, 3), 0.5)
        return aligned + nt.roi_pool(x, rois, 2).sum() + nt.ps_roi_align(x.repeat(1, 4, 1, 1), rois, 2).sum()

    assert torch.equal(torch.jit.script(pooled)(x, boxes, rois), pooled(x, boxes, rois))


def test_torch_jit_trace_of_a_model_runs_on_other_inputs():
    head, x, boxes = head_inputs()
    rois = nt._rois(boxes)
    traced = torch.jit.trace(head, (x.detach(), rois))
    other_x, other_rois = torch.randn(1, 3, 8, 9), torch.tensor([[0, 1.0, 1.5, 6.5, 7.0]])
    assert torch.equal(traced(other_x, other_rois), head(other_x, other_rois))


def test_roi_pools_backward_uses_the_argmax_its_forward_kept(monkeypatch):
    calls = []
    with_argmax = ops.roi_pool_with_argmax

    def counted(*args, **kwargs):
        calls.append(1)
        return with_argmax(*args, **kwargs)
    monkeypatch.setattr(ops, "roi_pool_with_argmax", counted)
    x = torch.tensor(FEATURES, requires_grad=True)
    nt.roi_pool(x, torch.tensor(ROIS), OUTPUT, 0.5).sum().backward()
    assert len(calls) == 1
    expected = ops.roi_pool_backward(np.ones((3, 8, OUTPUT, OUTPUT)), ROIS,
                                     ops.roi_pool_with_argmax(FEATURES, ROIS, OUTPUT, 0.5)[1], FEATURES.shape)
    np.testing.assert_array_equal(x.grad.numpy(), expected)
