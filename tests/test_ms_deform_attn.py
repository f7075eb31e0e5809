"""ms_deform_attn, what is specific to it: values derived by hand (x before y, the half-pixel shift, zero
padding), equal to the grid_sample formulation that Deformable DETR and mmcv ship (with torch), its
argument checks, the module with the paper's projections and initialisation (nn.MSDeformAttn and the
torch adapter's mmcv-compatible MultiScaleDeformableAttention), and a few training steps. What every
operator is tested for: tests/test_operators.py."""
import math

import numpy as np
import pytest

import numba_droi
from numba_droi import _backend, functional, nn, optim, registry
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck
from reference.ms_deform_attn import ms_deform_attn_backward as reference_backward

SHAPES, STARTS = np.array([[2, 3], [1, 2]]), np.array([0, 6])


def single_point(value, location, weight=1.0):
    """One query, one head, one level of ``value`` (H, W), one point at ``location`` ``(x, y)``."""
    height, width = value.shape
    return numba_droi.ms_deform_attn(value.reshape(1, height * width, 1, 1), np.array([[height, width]]),
                                     np.array([0]), np.array(location, float).reshape(1, 1, 1, 1, 1, 2),
                                     np.full((1, 1, 1, 1, 1), weight))[0, 0, 0]


def test_values_derived_by_hand(on):
    """A 2x3 map: location (x, y) samples pixel (y * 2 - 0.5, x * 3 - 0.5); corners outside count 0."""
    plane = np.arange(6.0).reshape(2, 3)  # value 3 * y + x
    with on:
        results = [on.numpy(single_point(on.array(plane), location, 2.0)) for location in
                   [(0.5 / 3, 0.25), (1.5 / 3, 0.5), (2.5 / 3, 0.75), (1.0, 0.25), (1.5 / 3, 0.0),
                    (-1 / 3, 0.25), (1.5, 0.5)]]
    expected = [2 * 0.0,                      # pixel (0, 0) exactly
                2 * (0.5 * 1 + 0.5 * 4),      # between rows 0 and 1 of column 1
                2 * 5.0,                      # pixel (1, 2)
                2 * 0.5 * 2,                  # x = 2.5: half of column 2, half of the padding
                2 * 0.5 * 1,                  # y = -0.5: half of row 0 (column 1), half of the padding
                0.0,                          # x = -1.5: outside the support
                0.0]                          # x = 4: outside
    np.testing.assert_allclose(results, expected, rtol=1e-14, atol=1e-14)


def test_non_finite_locations_sample_nothing(on):
    """A NaN, infinite or huge location adds 0 (and reads nothing outside the maps: the simulator
    raises on any out-of-range index); its gradients are 0."""
    plane = np.arange(6.0).reshape(2, 3)
    with on:
        for location in [(np.nan, 0.5), (0.5, np.inf), (-np.inf, 0.5), (1e30, 0.5), (0.5, -1e30)]:
            assert on.numpy(single_point(on.array(plane), location, 2.0)) == 0.0
        arrays = dict(value=on.array(plane.reshape(1, 6, 1, 1)), spatial_shapes=on.array(np.array([[2, 3]])),
                      level_start_index=on.array(np.array([0])),
                      sampling_locations=on.array(np.array([np.nan, 0.5]).reshape(1, 1, 1, 1, 1, 2)),
                      attention_weights=on.array(np.ones((1, 1, 1, 1, 1))))
        grads = numba_droi.ms_deform_attn_backward(on.array(np.ones((1, 1, 1))), **arrays)
    assert all(not on.numpy(grad).any() for grad in grads)


def test_x_comes_before_y_in_the_locations():
    plane = np.arange(6.0).reshape(2, 3)
    # x = 1.5 / 3 -> column 1, y = 0.25 -> row 0: value 1 (with x and y swapped it would be row 0.5)
    assert single_point(plane, (1.5 / 3, 0.25)) == 1.0


def grid_sample_case(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return registry.BY_NAME["ms_deform_attn"].example(rng, dtype, batch=2, channels=3, height=7, width=9,
                                                      heads=2, levels=3, points=2, queries=4, spread=0.3)


@pytest.mark.parametrize("seed", range(3))
def test_equals_the_grid_sample_formulation_forward_and_backward(seed):
    torch = pytest.importorskip("torch")
    from numba_droi.torch import ms_deform_attn_grid_sample
    example = grid_sample_case(seed)
    a = example.arrays
    tensors = {name: torch.tensor(a[name], requires_grad=True)
               for name in ("value", "sampling_locations", "attention_weights")}
    expected = ms_deform_attn_grid_sample(tensors["value"], torch.tensor(a["spatial_shapes"]),
                                          tensors["sampling_locations"], tensors["attention_weights"])
    grad_output = np.random.default_rng(seed + 10).standard_normal(tuple(expected.shape))
    expected.backward(torch.tensor(grad_output))
    output = numba_droi.ms_deform_attn(**a)
    grads = numba_droi.ms_deform_attn_backward(grad_output, **a)
    np.testing.assert_allclose(output, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    for name, grad in zip(("value", "sampling_locations", "attention_weights"), grads):
        np.testing.assert_allclose(grad, tensors[name].grad.numpy(), rtol=1e-10, atol=1e-10, err_msg=name)


# -- argument checks ----------------------------------------------------------------------------------

def good(**changes):
    example = registry.BY_NAME["ms_deform_attn"].example(np.random.default_rng(0), batch=1, height=2,
                                                         width=3, heads=1, levels=2, points=1, queries=1)
    return dict(example.arrays, **changes)


@pytest.mark.parametrize("changes, words", [
    (dict(spatial_shapes=np.array([[2, 3], [2, 2]])),
     r"give sum\(H\*W\) = 10 rows, but value.shape\[1\] = 8"),
    (dict(spatial_shapes=np.array([[2, 3], [-1, -2]])), "spatial_shapes must be non-negative"),
    (dict(spatial_shapes=np.array([2, 3, 1, 2])), r"spatial_shapes must have shape \(L, 2\)"),
    (dict(level_start_index=np.array([0, 5])),
     r"level_start_index must be the start rows of the levels, \[0, 6\]"),
    (dict(level_start_index=np.array([0])), "level_start_index must be the start rows"),
    (dict(sampling_locations=np.zeros((1, 1, 1, 3, 1, 2))),
     r"sampling_locations must have shape \(N, Lq, M, L, P, 2\) = \(1, 1, 1, 2, 1, 2\)"),
    (dict(attention_weights=np.zeros((1, 1, 2, 2, 1))),
     r"attention_weights must have shape \(N, Lq, M, L, P\) = \(1, 1, 1, 2, 1\)"),
    (dict(value=np.zeros((1, 8, 1))), r"value must have 4 dimensions \(N, S, M, D\)"),
])
def test_bad_arguments_are_named(no_launch, changes, words):
    with pytest.raises(ValueError, match=words):
        numba_droi.ms_deform_attn(**good(**changes))


def test_more_rows_than_32_bit_indices_hold_are_refused_before_any_copy(no_launch):
    value = np.broadcast_to(np.zeros(1, np.float32), (1, 2 ** 30 + 1, 1, 1))  # no memory behind it
    with pytest.raises(ValueError, match=r"value.shape\[1\] = 1073741825 must be at most 2\*\*30"):
        numba_droi.ms_deform_attn(value, np.array([[1, 2 ** 30 + 1]]), np.array([0]),
                                  np.zeros((1, 1, 1, 1, 1, 2), np.float32),
                                  np.zeros((1, 1, 1, 1, 1), np.float32))


def test_only_the_wanted_gradients_are_computed(cpu):
    grad_output = np.ones((1, 1, 2))
    grad_value, grad_locations, grad_weights = numba_droi.ms_deform_attn_backward(
        grad_output, **good(), wanted=("attention_weights",))
    assert grad_value is None and grad_locations is None and grad_weights.any()


@pytest.mark.parametrize("channels", [5, 21])  # the cpu path's loop, and a block of 16 channels before it
@pytest.mark.parametrize("wanted", [("value",), ("sampling_locations", "attention_weights"),
                                    ("value", "attention_weights"), None])
def test_each_set_of_wanted_gradients_equals_the_reference(cpu, wanted, channels):
    """The backward computes the value gradient alone, the point gradients alone or all in one pass:
    each equals the reference's gradients, samples outside the maps and on their borders included."""
    rng = np.random.default_rng(64)
    arrays = registry.BY_NAME["ms_deform_attn"].example(rng, channels=channels, spread=0.3).arrays
    locations = arrays["sampling_locations"]
    locations[0, 0, 0, 0, :, 0] = [0.0, 1.0]  # x = -0.5 and W - 0.5: the border band
    grad_output = rng.standard_normal((2, 3, 2 * channels))
    got = numba_droi.ms_deform_attn_backward(grad_output, **arrays, wanted=wanted)
    expected = reference_backward(grad_output, *arrays.values())
    names = ("value", "sampling_locations", "attention_weights")
    for name, grad, want in zip(names, got, expected):
        if wanted is None or name in wanted:
            np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-12, err_msg=name)
        else:
            assert grad is None, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_cpu_path_with_blocks_of_channels_equals_the_cuda_kernels(dtype):
    """21 channels a head, a block of 16 and 5 more: the forward bit for bit, the gradients to
    rounding."""
    arrays = registry.BY_NAME["ms_deform_attn"].example(np.random.default_rng(65), channels=21,
                                                        spread=0.3).arrays
    arrays = {name: a.astype(dtype) if a.dtype.kind == "f" else a for name, a in arrays.items()}
    grad_output = np.random.default_rng(66).standard_normal((2, 3, 2 * 21)).astype(dtype)

    def both():
        return numba_droi.ms_deform_attn(**arrays), numba_droi.ms_deform_attn_backward(grad_output, **arrays)
    fast = both()
    with _backend.cuda_kernels_on_cpu():
        kernels = both()
    np.testing.assert_array_equal(fast[0], kernels[0])
    for got, want in zip(fast[1], kernels[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


# -- the module ----------------------------------------------------------------------------------------

def module_case(rng, batch=2, d_model=8, queries=5, sizes=((4, 5), (2, 3))):
    shapes = np.array(sizes)
    starts = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]])
    rows = int((shapes[:, 0] * shapes[:, 1]).sum())
    return (rng.standard_normal((batch, queries, d_model)),
            rng.uniform(0.1, 0.9, (batch, queries, len(sizes), 2)),
            rng.standard_normal((batch, rows, d_model)), shapes, starts)


def test_the_module_is_initialised_as_deformable_detr():
    layer = nn.MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, rng=0)
    assert [name for name, _ in layer.named_parameters()] == [
        "sampling_offsets.weight", "sampling_offsets.bias", "attention_weights.weight",
        "attention_weights.bias",
        "value_proj.weight", "value_proj.bias", "output_proj.weight", "output_proj.bias"]
    ring = layer.sampling_offsets.bias.data.reshape(4, 3, 2, 2)
    np.testing.assert_allclose(ring[:, 0, 0], [[1, 0], [0, 1], [-1, 0], [0, -1]], atol=1e-6)  # 4 directions
    np.testing.assert_allclose(ring[:, 2, 1], 2 * ring[:, 0, 0])  # every level; point i at i + 1
    assert not layer.sampling_offsets.weight.data.any() and not layer.attention_weights.weight.data.any()
    bound = math.sqrt(6 / 32)
    assert 0.8 * bound < np.abs(layer.value_proj.weight.data).max() <= bound
    assert not layer.value_proj.bias.data.any()


def test_the_module_at_its_initialisation_averages_a_ring_of_samples(cpu):
    """Zero attention logits: every point weighs 1 / (levels * points); the offsets are the ring."""
    rng = np.random.default_rng(1)
    query, reference, flat, shapes, starts = module_case(rng)
    layer = nn.MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=3, rng=2, dtype=np.float64)
    output = layer(query, reference, flat, shapes, starts).data
    value = (flat @ layer.value_proj.weight.data.T).reshape(2, -1, 2, 4)
    ring = layer.sampling_offsets.bias.data.reshape(2, 2, 3, 2)
    normalizer = np.stack([shapes[:, 1], shapes[:, 0]], -1)[None, None, None, :, None, :]
    locations = reference[:, :, None, :, None, :] + ring[None, None] / normalizer
    weights = np.full((2, 5, 2, 2, 3), 1 / 6)
    attended = numba_droi.ms_deform_attn(value, shapes, starts, locations, weights)
    expected = attended @ layer.output_proj.weight.data.T
    np.testing.assert_allclose(output, expected, rtol=1e-12, atol=1e-12)


def test_the_module_with_boxes_and_a_padding_mask(cpu):
    rng = np.random.default_rng(3)
    query, reference, flat, shapes, starts = module_case(rng)
    boxes = np.concatenate([reference, rng.uniform(0.1, 0.5, reference.shape)], -1)
    layer = nn.MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=3, rng=4, dtype=np.float64)
    layer.sampling_offsets.weight.data[...] = rng.standard_normal(layer.sampling_offsets.weight.shape) * 0.1
    mask = np.zeros(flat.shape[:2], bool)
    mask[:, -6:] = True  # the second level is padding
    masked = layer(query, boxes, flat, shapes, starts, mask).data
    changed = flat.copy()
    changed[:, -6:] = 99.0  # what padding holds does not matter
    np.testing.assert_allclose(layer(query, boxes, changed, shapes, starts, mask).data, masked, rtol=1e-12)
    assert not np.allclose(layer(query, boxes, changed, shapes, starts).data, masked)
    with pytest.raises(ValueError, match="reference_points' last axis must have 2"):
        layer(query, boxes[..., :3], flat, shapes, starts)


def test_the_module_gradients_check(cpu):
    rng = np.random.default_rng(5)
    query, reference, flat, shapes, starts = module_case(rng, batch=1, d_model=4, queries=2)
    layer = nn.MSDeformAttn(d_model=4, n_levels=2, n_heads=2, n_points=2, rng=6, dtype=np.float64)
    for parameter in layer.parameters():  # every parameter active (the offsets' weight starts at 0)
        parameter.data[...] += rng.uniform(-0.2, 0.2, parameter.shape)
    inputs = [Tensor(query, requires_grad=True), Tensor(reference, requires_grad=True),
              Tensor(flat, requires_grad=True)]
    assert gradcheck(lambda q, r, f: layer(q, r, f, shapes, starts), inputs)
    names = [name for name, _ in layer.named_parameters()]

    def with_parameters(*tensors):  # the layer computing with the checked tensors as its parameters
        for name, tensor in zip(names, tensors):
            module, attribute = name.split(".")
            setattr(getattr(layer, module), attribute, tensor)
        return layer(query, reference, flat, shapes, starts)
    assert gradcheck(with_parameters, [Tensor(p.data, requires_grad=True) for p in layer.parameters()])


def test_a_few_training_steps_lower_the_loss(cpu):
    """Queries learn to read where a blob sits: the loss of a small detector head falls."""
    rng = np.random.default_rng(7)
    shapes, starts = np.array([[8, 8], [4, 4]]), np.array([0, 64])
    layer = nn.MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2, rng=8)
    head = nn.Linear(8, 2, rng=9)
    parameters = layer.parameters() + head.parameters()
    optimizer = optim.Adam(parameters, lr=3e-2)
    query = rng.standard_normal((1, 8)).astype(np.float32)
    losses = []
    for _ in range(30):
        flat = rng.standard_normal((4, 80, 8)).astype(np.float32) * 0.1
        labels = rng.integers(0, 2, 4)
        flat[labels == 1, :, 0] += 1.0  # class 1: a bright first channel
        optimizer.zero_grad()
        out = layer(np.broadcast_to(query, (4, 1, 8)), np.full((4, 1, 2, 2), 0.5, np.float32), flat, shapes,
                    starts)
        loss = functional.softmax_cross_entropy(head(functional.reshape(out, (4, 8))), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


# -- the torch adapter's mmcv module -------------------------------------------------------------------

def test_the_torch_module_is_mmcvs_and_equals_its_grid_sample_formulation():
    torch = pytest.importorskip("torch")
    import numba_droi.torch as nt
    torch.manual_seed(0)
    layer = nt.MultiScaleDeformableAttention(embed_dims=8, num_heads=2, num_levels=2, num_points=3,
                                             dropout=0.0).double()
    assert sorted(layer.state_dict()) == sorted(
        f"{module}.{kind}"
        for module in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
        for kind in ("weight", "bias"))
    np.testing.assert_allclose(layer.sampling_offsets.bias.detach().numpy().reshape(2, 2, 3, 2)[:, 0, 0],
                               [[1, 0], [-1, 0]], atol=1e-6)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(torch.rand_like(parameter) * 0.2 - 0.1)
    rng = np.random.default_rng(11)
    query, reference, flat, shapes, starts = (torch.tensor(a) for a in module_case(rng))
    query.requires_grad_(True)
    flat.requires_grad_(True)
    arguments = dict(query=query.transpose(0, 1), value=flat.transpose(0, 1), reference_points=reference,
                     spatial_shapes=shapes, level_start_index=starts)
    ours = layer(**arguments)
    grads = torch.autograd.grad(ours.sum(), [query, flat, *layer.parameters()])

    def peer(value, spatial_shapes, level_start_index, locations, weights):
        return nt.ms_deform_attn_grid_sample(value, spatial_shapes, locations, weights)
    original, nt.multi_scale_deformable_attn = nt.multi_scale_deformable_attn, peer
    try:
        theirs = layer(**arguments)
    finally:
        nt.multi_scale_deformable_attn = original
    their_grads = torch.autograd.grad(theirs.sum(), [query, flat, *layer.parameters()])
    assert ours.shape == (5, 2, 8)  # (num_query, bs, embed_dims): batch_first=False
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    for mine, their in zip(grads, their_grads):
        torch.testing.assert_close(mine, their, rtol=1e-9, atol=1e-9)
