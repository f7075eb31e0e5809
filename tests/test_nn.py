"""numba_droi.nn: parameter discovery, train/eval, state_dict round trips through numpy.savez, the
layers against functional, and the RoIAlign module forward and backward on both targets."""
import numpy as np
import pytest

import numba_droi
from numba_droi import _backend, optim
from numba_droi import functional as F
from numba_droi import nn
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck

ROIS = np.array([[0, 0.6, 1.3, 4.2, 5.1], [1, 2.2, 0.4, 6.3, 3.7], [0, 1.1, 2.5, 5.6, 6.3]])


class Block(nn.Module):
    """A module written the way users write one: no super().__init__(), a plain attribute, a
    parameter shared with a child, a sub-module and a Parameter of its own."""

    def __init__(self, rng):
        self.name = "block"
        self.fc = nn.Linear(3, 4, rng=rng, dtype=np.float64)
        self.act = nn.ReLU()
        self.scale = nn.Parameter(np.full(4, 2.0))
        self.tied = self.fc.weight

    def forward(self, x):
        return self.act(self.fc(x)) * self.scale


def test_linear_initialisation_is_pytorchs_and_reproducible():
    layer = nn.Linear(200, 300, rng=0)
    bound = 1 / np.sqrt(200)
    assert layer.weight.shape == (300, 200) and layer.bias.shape == (300,)
    assert layer.weight.dtype == np.float32 and layer.weight.requires_grad and layer.weight.is_leaf
    for values in (layer.weight.data, layer.bias.data):
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.95 * bound
    assert np.isclose(layer.weight.data.std(), bound / np.sqrt(3), rtol=0.02)  # uniform's std
    same, other = nn.Linear(200, 300, rng=0), nn.Linear(200, 300, rng=1)
    np.testing.assert_array_equal(same.weight.data, layer.weight.data)
    assert not np.array_equal(other.weight.data, layer.weight.data)
    generator = np.random.default_rng(5)
    assert nn.Linear(2, 3, rng=generator, dtype=np.float64).weight.dtype == np.float64
    assert nn.Linear(2, 3, bias=False).bias is None


def test_linear_module_is_functional_linear_and_its_gradients_check():
    layer = nn.Linear(3, 2, rng=0, dtype=np.float64)
    x = Tensor(np.random.default_rng(1).standard_normal((4, 3)), requires_grad=True)
    np.testing.assert_array_equal(layer(x).data, F.linear(x, layer.weight, layer.bias).data)
    assert gradcheck(lambda x, w, b: F.linear(x, w, b), [x, layer.weight, layer.bias])

    def through_the_module(x, w, b):
        layer.weight, layer.bias = w, b
        return layer(x)
    assert gradcheck(through_the_module, [x, layer.weight, layer.bias])


def test_parameters_are_found_in_assignment_order_each_once():
    block = Block(rng=0)
    names = [name for name, _ in block.named_parameters()]
    assert names == ["fc.weight", "fc.bias", "scale"]  # "tied" is fc.weight again
    model = nn.Sequential(block, nn.Linear(4, 2, rng=1, bias=False))
    assert [name for name, _ in model.named_parameters()] == [
        "0.fc.weight", "0.fc.bias", "0.scale", "1.weight"]
    assert [type(m).__name__ for m in model.modules()] == ["Sequential", "Block", "Linear", "ReLU",
                                                          "Linear"]
    assert all(p.requires_grad for p in model.parameters())


def test_backward_reaches_every_parameter_and_zero_grad_clears_them():
    model = nn.Sequential(Block(rng=0), nn.Linear(4, 2, rng=1, dtype=np.float64))
    x = np.random.default_rng(2).uniform(0.5, 1, (5, 3))
    F.sum(model(x)).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_train_and_eval_reach_every_module():
    model = nn.Sequential(Block(rng=0), nn.ReLU())
    assert model.training and model[0].fc.training
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_state_dict_round_trips_through_numpy_savez(tmp_path):
    model = nn.Sequential(nn.Linear(3, 5, rng=0), nn.ReLU(), nn.Linear(5, 2, rng=1))
    path = tmp_path / "model.npz"
    np.savez(path, **model.state_dict())
    copy = nn.Sequential(nn.Linear(3, 5, rng=7), nn.ReLU(), nn.Linear(5, 2, rng=8))
    weight_before = copy[0].weight
    with np.load(path) as saved:
        copy.load_state_dict(saved)
    x = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(copy(x).data, model(x).data)
    assert copy[0].weight is weight_before  # loaded in place: optimizers keep their references
    assert copy[0].weight.dtype == np.float32


def test_state_dict_holds_numpy_copies_and_loading_keeps_the_dtype():
    layer = nn.Linear(2, 2, rng=0)
    state = layer.state_dict()
    state["weight"][...] = 0
    assert np.abs(layer.weight.data).min() > 0
    layer.load_state_dict({"weight": np.ones((2, 2)), "bias": np.zeros(2)})
    assert layer.weight.dtype == np.float32
    np.testing.assert_array_equal(layer.weight.data, np.ones((2, 2)))


def test_load_state_dict_rejects_mismatches():
    layer = nn.Linear(2, 3, rng=0)
    before = layer.state_dict()
    with pytest.raises(ValueError, match=r"missing \['bias'\], unexpected \['weights'\]"):
        layer.load_state_dict({"weight": np.ones((3, 2)), "weights": np.ones((3, 2))})
    with pytest.raises(ValueError, match=r"state\['bias'\] has shape \(2,\), the parameter \(3,\)"):
        layer.load_state_dict({"weight": np.ones((3, 2)), "bias": np.ones(2)})
    for name, value in layer.state_dict().items():  # a failed load changes nothing
        np.testing.assert_array_equal(value, before[name])


def test_to_numpy_keeps_the_values():
    layer = nn.Linear(2, 3, rng=0)
    before = layer.state_dict()
    assert layer.to(np) is layer
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_sequential():
    first, second = nn.Flatten(), nn.Linear(6, 2, rng=0)
    model = nn.Sequential(first, second)
    assert len(model) == 2 and model[0] is first and model[-1] is second and list(model) == [first, second]
    assert model(np.ones((4, 2, 3), np.float32)).shape == (4, 2)
    with pytest.raises(TypeError, match="got function at position 1"):
        nn.Sequential(first, F.relu)


def test_activation_and_flatten_modules():
    x = Tensor(np.linspace(-2, 2, 24).reshape(2, 3, 4))
    np.testing.assert_array_equal(nn.ReLU()(x).data, F.relu(x).data)
    np.testing.assert_array_equal(nn.Sigmoid()(x).data, F.sigmoid(x).data)
    assert nn.Flatten()(x).shape == (2, 12) and nn.Flatten(0)(x).shape == (24,)


def features(seed=0, shape=(2, 2, 7, 8)):
    return np.random.default_rng(seed).standard_normal(shape)


def test_roi_align_module_forward_and_backward(on):
    module = nn.RoIAlign((2, 3), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    with on:
        x = Tensor(on.array(features()), requires_grad=True)
        rois = on.array(ROIS)
        output = module(x, rois)
        grad_output = np.random.default_rng(1).standard_normal(output.shape)
        output.backward(on.array(grad_output))
        expected = numba_droi.roi_align(on.array(features()), rois, (2, 3), 1.0, 2, True)
        expected_grad = numba_droi.roi_align_backward(on.array(grad_output), rois, x.shape, 1.0, 2, True)
    np.testing.assert_array_equal(on.numpy(output.data), on.numpy(expected))
    np.testing.assert_array_equal(on.numpy(x.grad), on.numpy(expected_grad))


def roi_head(dtype=np.float64):
    return nn.Sequential(nn.RoIAlign(2, 1.0, 2, True), nn.Flatten(), nn.Linear(8, 6, rng=0, dtype=dtype),
                         nn.ReLU(), nn.Linear(6, 3, rng=1, dtype=dtype))


def test_roi_head_gradients_check_on_cpu(cpu):
    head = roi_head()
    x = Tensor(features(), requires_grad=True)
    first, second = head[2], head[4]

    def through_the_head(x, w1, b1, w2, b2):
        first.weight, first.bias, second.weight, second.bias = w1, b1, w2, b2
        return head(x, ROIS)
    assert gradcheck(through_the_head, [x, first.weight, first.bias, second.weight, second.bias])


def test_roi_head_is_the_same_on_both_targets(cuda, cpu):
    results = []
    for on in (cpu, cuda):
        head = roi_head().to(_backend.cupy if on.gpu else np)
        x = Tensor(on.array(features()), requires_grad=True)
        with on:
            loss = F.softmax_cross_entropy(head(x, on.array(ROIS)), np.array([0, 2, 1]))
            loss.backward()
        results.append([on.numpy(loss.data), on.numpy(x.grad)] +
                       [on.numpy(p.grad) for p in head.parameters()])
    for on_cpu, on_cuda in zip(*results):
        np.testing.assert_allclose(on_cuda, on_cpu, rtol=1e-12, atol=1e-14)


def test_layers_losses_and_optimizers_run_on_cupy_as_on_numpy(cuda):
    if not cuda.gpu:
        pytest.skip("needs CuPy and a GPU (the simulator runs on NumPy arrays)")
    rng = np.random.default_rng(0)
    x, target = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 4))
    labels, offset = rng.integers(0, 4, 5), rng.standard_normal((1, 4))
    results = []
    for xp in (np, _backend.cupy):
        model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4, rng=1, dtype=np.float64), nn.Sigmoid())
        model.to(xp)
        optimizer = optim.Adam(model.parameters(), lr=0.1)
        for _ in range(2):
            optimizer.zero_grad()
            out = model(xp.asarray(x)) * 2 - xp.asarray(offset) / 3
            loss = (F.softmax_cross_entropy(F.relu(out) @ xp.eye(4), xp.asarray(labels))
                    + F.smooth_l1_loss(out, xp.asarray(target), 0.5) + F.mse_loss(F.mean(out, 1), xp.zeros(5))
                    + F.sum(F.reshape(out, (4, 5))) / 20)
            loss.backward()
            optimizer.step()
        results.append([loss.item()] + [_backend.to_numpy(v) for v in model.state_dict().values()])
    for on_numpy, on_cupy in zip(*results):
        np.testing.assert_allclose(on_cupy, on_numpy, rtol=1e-10)


def test_each_operators_layer_is_its_own_kind():
    """A PS RoI pool is not a max pool: every operator's layer derives from OperatorModule alone."""
    assert not isinstance(nn.PSRoIPool(2), nn.RoIPool)
    assert not isinstance(nn.PSRoIAlign(2), nn.RoIAlign)
    for layer in nn.MODULES.values():
        assert layer.__bases__ == (nn.OperatorModule,)
