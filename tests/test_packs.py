"""The deformable RoI pooling modules of numba_droi.nn: DeformRoIPool and DeformPSRoIPool against the
functional operators on both targets; DeformRoIPoolPack and ModulatedDeformRoIPoolPack equal to the
plain operator at their zero initialisation, their parameters' gradients by finite differences, the
same on both targets, state_dict round trips; and offsets learned back through deform_roi_pool."""
import numpy as np
import pytest

import numba_droi
from numba_droi import functional as F
from numba_droi import nn, optim
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck

ROIS = np.array([[0, 0.6, 1.3, 4.2, 5.1], [1, 2.2, 0.4, 6.3, 3.7], [0, 1.1, 2.5, 5.6, 6.3]])
PACKS = [nn.DeformRoIPoolPack, nn.ModulatedDeformRoIPoolPack]


def features(seed=0, shape=(2, 2, 7, 8)):
    return np.random.default_rng(seed).standard_normal(shape)


def test_deform_roi_pool_module_forward_and_backward(on):
    module = nn.DeformRoIPool((2, 3), spatial_scale=0.9, sampling_ratio=2, gamma=0.2)
    rng = np.random.default_rng(1)
    offset, mask = rng.standard_normal((3, 2, 2, 3)), rng.uniform(0, 1, (3, 1, 2, 3))
    with on:
        x, rois = Tensor(on.array(features()), requires_grad=True), on.array(ROIS)
        offset_t, mask_t = (Tensor(on.array(a), requires_grad=True) for a in (offset, mask))
        output = module(x, rois, offset_t, mask_t)
        grad_output = rng.standard_normal(output.shape)
        output.backward(on.array(grad_output))
        expected = numba_droi.deform_roi_pool(on.array(features()), rois, on.array(offset), (2, 3), 0.9,
                                              2, 0.2, on.array(mask))
        expected_grads = numba_droi.deform_roi_pool_backward(
            on.array(grad_output), on.array(features()), rois, on.array(offset), 0.9, 2, 0.2,
            on.array(mask))
        plain = module(on.array(features()), rois)
        aligned = numba_droi.roi_align(on.array(features()), rois, (2, 3), 0.9, 2, True)
    np.testing.assert_array_equal(on.numpy(output.data), on.numpy(expected))
    for tensor, expected_grad in zip((x, offset_t, mask_t), expected_grads):
        np.testing.assert_array_equal(on.numpy(tensor.grad), on.numpy(expected_grad))
    np.testing.assert_allclose(on.numpy(plain.data), on.numpy(aligned), rtol=1e-12, atol=1e-14)
    assert module.output_size == (2, 3) and "gamma=0.2" in repr(module)


def test_deform_psroi_pool_module_forward_and_backward(on):
    options = dict(spatial_scale=0.8, output_dim=2, group_size=2, pooled_size=2, part_size=2,
                   sample_per_part=2, trans_std=0.1)
    module = nn.DeformPSRoIPool(**options)
    rng = np.random.default_rng(2)
    input, trans = features(3, (2, 8, 7, 8)), rng.standard_normal((3, 2, 2, 2))
    with on:
        x, rois = Tensor(on.array(input), requires_grad=True), on.array(ROIS)
        trans_t = Tensor(on.array(trans), requires_grad=True)
        output = module(x, rois, trans_t)
        grad_output = rng.standard_normal(output.shape)
        output.backward(on.array(grad_output))
        expected = numba_droi.deform_psroi_pool(on.array(input), rois, on.array(trans), **options)
        expected_input, expected_trans = numba_droi.deform_psroi_pool_backward(
            on.array(grad_output), on.array(input), rois, on.array(trans),
            *(options[k] for k in ("spatial_scale", "group_size", "part_size", "sample_per_part",
                                   "trans_std")), False)
        no_trans = nn.DeformPSRoIPool(**options, no_trans=True)(on.array(input), rois)
        expected_no_trans = numba_droi.deform_psroi_pool(on.array(input), rois, None, **options,
                                                         no_trans=True)
    np.testing.assert_array_equal(on.numpy(output.data), on.numpy(expected))
    np.testing.assert_array_equal(on.numpy(x.grad), on.numpy(expected_input))
    np.testing.assert_array_equal(on.numpy(trans_t.grad), on.numpy(expected_trans))
    np.testing.assert_array_equal(on.numpy(no_trans.data), on.numpy(expected_no_trans))


def pack(cls, seed=0, output_size=2, channels=2, fc=4, **options):
    return cls(output_size, channels, fc, rng=seed, dtype=np.float64, **options)


def perturb(module, seed=5, scale=0.5):
    """Give the zero-initialised last FCs random values, so every path of the pack carries gradient."""
    rng = np.random.default_rng(seed)
    for name, parameter in module.named_parameters():
        if not np.any(parameter.data):
            parameter.data[...] = rng.uniform(-scale, scale, parameter.shape)
    return module


@pytest.mark.parametrize("cls", PACKS)
def test_packs_at_zero_init_are_the_plain_operator(on, cls):
    module = pack(cls, output_size=(2, 3), spatial_scale=0.9, sampling_ratio=2)
    # mmcv's init: only the last FC of each branch is zero; the others are random
    zero = [name for name, p in module.named_parameters() if not np.any(p.data)]
    assert zero == (["offset_fc.4.weight", "offset_fc.4.bias"] +
                    (["mask_fc.2.weight", "mask_fc.2.bias"] if cls is nn.ModulatedDeformRoIPoolPack else []))
    with on:
        output = module(on.array(features()), on.array(ROIS))
        aligned = numba_droi.roi_align(on.array(features()), on.array(ROIS), (2, 3), 0.9, 2, True)
    scale = 0.5 if cls is nn.ModulatedDeformRoIPoolPack else 1.0  # sigmoid(0) = 0.5, as in mmcv
    np.testing.assert_allclose(on.numpy(output.data), scale * on.numpy(aligned), rtol=1e-12, atol=1e-14)


def named(module, name):
    for part in name.split("."):
        module = getattr(module, part)
    return module


def through_the_pack(module, rois):
    """``(fn, parameters)``: fn(input, *parameters) runs the pack with those parameters in place."""
    names = [name for name, _ in module.named_parameters()]

    def fn(input, *parameters):
        for name, parameter in zip(names, parameters):
            owner, _, attribute = name.rpartition(".")
            setattr(named(module, owner), attribute, parameter)
        return module(input, rois)
    return fn, [parameter for _, parameter in module.named_parameters()]


@pytest.mark.parametrize("cls", PACKS)
def test_pack_gradients_check_on_cpu(cpu, cls):
    module = perturb(pack(cls, sampling_ratio=2, gamma=0.3))
    x = Tensor(features(4, (2, 2, 6, 7)), requires_grad=True)
    fn, parameters = through_the_pack(module, ROIS[:2])
    assert gradcheck(fn, [x] + parameters)


@pytest.mark.parametrize("cls", PACKS)
def test_pack_is_the_same_on_both_targets(cuda, cpu, cls):
    results = []
    for on in (cpu, cuda):
        module = perturb(pack(cls, sampling_ratio=2, gamma=0.3))
        x = Tensor(on.array(features()), requires_grad=True)
        with on:
            output = module(x, on.array(ROIS))
            output.backward(on.array(np.random.default_rng(1).standard_normal(output.shape)))
        results.append([on.numpy(output.data), on.numpy(x.grad)] +
                       [on.numpy(p.grad) for p in module.parameters()])
    for on_cpu, on_cuda in zip(*results):
        np.testing.assert_allclose(on_cuda, on_cpu, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", PACKS)
def test_pack_state_dict_round_trips(cls, tmp_path):
    module = perturb(cls(2, 2, 4, rng=0))
    path = tmp_path / "pack.npz"
    np.savez(path, **module.state_dict())
    copy = cls(2, 2, 4, rng=9)
    with np.load(path) as saved:
        copy.load_state_dict(saved)
    x = features().astype(np.float32)
    assert copy.offset_fc[0].weight.dtype == np.float32
    np.testing.assert_array_equal(copy(x, ROIS).data, module(x, ROIS).data)


@pytest.mark.parametrize("cls", PACKS)
def test_pack_trains_and_takes_no_boxes(cls):
    module = perturb(pack(cls, sampling_ratio=2), scale=0.1)
    output = module(features(), ROIS[:0])
    assert output.shape == (0, 2, 2, 2)
    F.sum(module(features(), ROIS)).backward()
    assert all(p.grad is not None and np.all(np.isfinite(p.grad)) for p in module.parameters())


def test_pack_rejects_the_wrong_channel_count():
    with pytest.raises(ValueError, match=r"output_channels = 3 channels, got input of shape \(2, 2, 7, 8\)"):
        nn.DeformRoIPoolPack(2, 3, 4, rng=0)(features(), ROIS)


def texture(channels=4, size=32):
    """Smooth, different maps per channel: each bin's output pins down its two offsets."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    rng = np.random.default_rng(0)
    maps = []
    for channel in range(channels):
        fy, fx, phase = rng.uniform(0.15, 0.45, 3)
        maps.append(np.sin(fx * x + phase) * np.cos(fy * y) + 0.5 * np.sin(0.2 * (x + y) + channel))
    return np.stack(maps)[None]


def test_offsets_are_learned_back_through_deform_roi_pool(cpu):
    input = texture()
    rois = np.array([[0, 4, 5, 18, 17], [0, 10, 8, 26, 24], [0, 6, 12, 20, 27]], np.float64)
    options = dict(output_size=3, spatial_scale=1.0, sampling_ratio=2, gamma=0.1)
    hidden = np.random.default_rng(1).uniform(-1, 1, (3, 2, 3, 3))  # moves of up to ~1.6 pixels
    target = F.deform_roi_pool(input, rois, hidden, **options).data
    offset = Tensor(np.zeros_like(hidden), requires_grad=True)
    optimizer = optim.Adam([offset], lr=0.05)
    losses = []
    for step in range(150):
        if step == 100:
            optimizer.lr = 0.01
        optimizer.zero_grad()
        loss = F.mse_loss(F.deform_roi_pool(input, rois, offset, **options), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-3 * losses[0], (losses[0], losses[-1])
    np.testing.assert_allclose(offset.data, hidden, atol=0.02)


def test_a_bad_output_size_is_named_at_construction():
    with pytest.raises(ValueError, match=r"output_size must be a positive int .*, got \(2, 0\)"):
        nn.DeformRoIPoolPack((2, 0), 2, 4, rng=0)
