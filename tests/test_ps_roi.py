"""ps_roi_pool and ps_roi_align, what is specific to them: against reference/ at a larger map, the channel
mapping, the differences from torchvision that docs/operators.md chooses, non-finite boxes, their
argument checks, and torchvision when installed. What every operator is tested for:
tests/test_operators.py."""
import numpy as np
import pytest

import numba_droi
from numba_droi.registry import example_rois
import reference.ps_roi as reference

OPS = ["ps_roi_pool", "ps_roi_align"]


def forward(name):
    return getattr(numba_droi, name)


def backward(name):
    return getattr(numba_droi, name + "_backward")


def backward_options(options):
    return {k: v for k, v in options.items() if k != "output_size"}


def random_case(rng, name, max_size=11, max_boxes=5, max_channels=2):
    output_size = tuple(int(v) for v in rng.integers(1, 4, 2))
    batch = rng.integers(1, 3)
    channels = rng.integers(1, max_channels + 1) * output_size[0] * output_size[1]
    height, width = rng.integers(1, max_size + 1, 2)
    scale = float(rng.choice([1.0, 0.5, 0.25, 1.3]))
    features = rng.standard_normal((batch, channels, height, width))
    rois = example_rois(rng, rng.integers(0, 5, rng.integers(1, max_boxes + 1)), batch, height, width, scale)
    options = dict(output_size=output_size, spatial_scale=scale)
    if name == "ps_roi_align":
        options["sampling_ratio"] = int(rng.choice([-1, 0, 1, 2, 3]))
    return features, rois, options


def check_against_reference(on, name, features, rois, options):
    with on:
        output = on.numpy(forward(name)(on.array(features), on.array(rois), **options))
        grad_output = np.random.default_rng(1).standard_normal(output.shape)
        grad_input = on.numpy(backward(name)(on.array(grad_output), on.array(rois), features.shape,
                                             **backward_options(options)))
    expected = getattr(reference, name)(features, rois, **options)
    np.testing.assert_allclose(output, expected, rtol=1e-12, atol=1e-12)
    expected_grad = getattr(reference, name + "_backward")(grad_output, rois, features.shape,
                                                           **backward_options(options))
    np.testing.assert_allclose(grad_input, expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", OPS)
def test_matches_reference_on_cpu_at_a_larger_size(cpu, name):
    rng = np.random.default_rng(7)
    features = rng.standard_normal((2, 2 * 9, 30, 41))
    options = dict(output_size=(3, 3), spatial_scale=0.25)
    if name == "ps_roi_align":
        options["sampling_ratio"] = -1
    rois = example_rois(rng, rng.integers(0, 5, 24), 2, 30, 41, 0.25)
    check_against_reference(cpu, name, features, rois, options)


@pytest.mark.parametrize("name", OPS)
def test_each_bin_reads_its_own_channel(on, name):
    """Input channel i is the constant i, so each non-empty bin returns the channel it read."""
    pooled_h, pooled_w, channels = 2, 3, 2
    features = np.broadcast_to(np.arange(channels * pooled_h * pooled_w, dtype=np.float64)[:, None, None],
                               (1, channels * pooled_h * pooled_w, 9, 10)).copy()
    with on:
        output = on.numpy(forward(name)(on.array(features), on.array([[0, 0.6, 1.2, 8.3, 7.9]]),
                                        (pooled_h, pooled_w)))
    for c, ph, pw in np.ndindex(channels, pooled_h, pooled_w):
        np.testing.assert_allclose(output[0, c, ph, pw], (c * pooled_h + ph) * pooled_w + pw, rtol=1e-14)


# -- gradients by finite differences --------------------------------------------------------------

# -- the cuda kernels' bodies compiled for the cpu, at a detection size ----------------------------

# -- where we differ from torchvision on purpose (docs/operators.md) -------------------------------

def test_ps_roi_pool_bins_reach_the_last_row_and_column(on):
    """Bins are clipped to [0, H] in the forward as in the backward; torchvision's forward clips to
    H-1 and never reads the last row or column."""
    features = np.random.default_rng(2).standard_normal((1, 4, 3, 3))
    with on:
        output = on.numpy(numba_droi.ps_roi_pool(on.array(features), on.array([[0, 0, 0, 3.0, 3]]), 2))
    # roi 3x3, bins of 1.5: bin 1 covers rows and columns floor(1.5)=1 .. ceil(3)=3, i.e. 1 and 2.
    np.testing.assert_allclose(output[0, 0, 1, 1], features[0, 3, 1:3, 1:3].mean(), rtol=1e-14)
    np.testing.assert_allclose(output[0, 0, 0, 0], features[0, 0, 0:2, 0:2].mean(), rtol=1e-14)


def test_torchvision_ps_roi_pool_forward_skips_the_last_row_and_column():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    features = np.random.default_rng(2).standard_normal((1, 4, 3, 3))
    box = torch.tensor([[0, 0, 0, 3.0, 3]], dtype=torch.float64)
    theirs = torchvision.ops.ps_roi_pool(torch.tensor(features), box, 2)
    np.testing.assert_allclose(theirs[0, 0, 1, 1].item(), features[0, 3, 1, 1], rtol=1e-14)


@pytest.mark.parametrize("box", [[0, 1, 2, 5, 2], [0, 1, 2, 1, 5]])  # zero height, zero width
def test_ps_roi_align_zero_size_box_gives_zero_not_nan(on, box):
    features = np.random.default_rng(2).standard_normal((1, 4, 6, 7))
    with on:
        output = on.numpy(numba_droi.ps_roi_align(on.array(features), on.array(np.array([box], float)), 2))
        grad = on.numpy(numba_droi.ps_roi_align_backward(on.array(np.ones(output.shape)),
                                                         on.array(np.array([box], float)), features.shape))
    assert not output.any() and not grad.any()


@pytest.mark.parametrize("box", [[0, 1, 2, 5, 2], [0, 1, 2, 1, 5]])
def test_torchvision_ps_roi_align_gives_nan_for_a_zero_size_box(box):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    features = np.random.default_rng(2).standard_normal((1, 4, 6, 7))
    theirs = torchvision.ops.ps_roi_align(torch.tensor(features), torch.tensor([box], dtype=torch.float64), 2)
    assert torch.isnan(theirs).all()


# -- edge cases ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OPS)
def test_nan_and_inf_boxes_give_zero_and_read_nothing_outside(on, name):
    """Non-finite boxes give 0; absurdly large finite ones stay finite. The simulator raises on any
    out-of-range index, so this also checks the bounds on cuda."""
    features = np.random.default_rng(0).standard_normal((1, 8, 5, 6))
    rois = np.array([[0, np.nan, 1, 3, 3], [0, 1, np.inf, 3, 3], [0, 1, 1, np.inf, 3],
                     [0, -np.inf, -np.inf, np.inf, np.inf], [0, -1e30, -1e30, 1e30, 1e30],
                     [0, 1, 1, 4, 3]])
    for sampling_ratio in ((-1, 2) if name == "ps_roi_align" else (None,)):
        options = {} if sampling_ratio is None else dict(sampling_ratio=sampling_ratio)
        # (an adaptive grid for the huge box would have ~1e30 samples per bin, as in torchvision)
        boxes = np.delete(rois, 4, 0) if sampling_ratio == -1 else rois
        with on:
            output = on.numpy(forward(name)(on.array(features), on.array(boxes), 2, **options))
            grad = on.numpy(backward(name)(on.array(np.ones(output.shape)), on.array(boxes),
                                           features.shape, **options))
        assert np.all(output[:4] == 0) and np.all(output[-1] != 0) and np.all(np.isfinite(output))
        assert np.all(np.isfinite(grad))
        np.testing.assert_allclose(grad, getattr(reference, name + "_backward")(
            np.ones(output.shape)[4:], boxes[4:], features.shape, **options), rtol=1e-12, atol=1e-12)


GOOD_ROIS = np.array([[0, 0, 0, 2, 2], [1, 1, 1, 3, 3.0]])


# -- bad inputs: clear errors before any launch ----------------------------------------------------

GOOD_FEATURES = np.zeros((2, 8, 4, 5))


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("features, rois, output_size, error, words", [
    (GOOD_FEATURES, GOOD_ROIS, 3, ValueError,
     "input.shape[1] = 8 must be a multiple of PH*PW = 3*3 = 9"),
    (GOOD_FEATURES, GOOD_ROIS, (1, 3), ValueError, "input.shape[1] = 8 must be a multiple of PH*PW"),
    (GOOD_FEATURES, GOOD_ROIS[:, :4], 2, ValueError, "rois must have shape (K, 5)"),
    (GOOD_FEATURES, np.array([[0, 0, 0, 2, 2], [2, 1, 1, 3, 3.0]]), 2, ValueError, "rois[1, 0] = 2.0"),
    (GOOD_FEATURES, np.array([[np.nan, 0, 0, 2, 2.0]]), 2, ValueError, "rois[0, 0] = nan"),
    (GOOD_FEATURES, GOOD_ROIS.astype(np.int64), 2, TypeError, "rois must be a floating array"),
    (GOOD_FEATURES.astype(np.float16), GOOD_ROIS, 2, TypeError, "input must be float32 or float64"),
    (GOOD_FEATURES[0], GOOD_ROIS, 2, ValueError, "input must have 4 dimensions"),
    (GOOD_FEATURES, GOOD_ROIS, (2, 2, 2), ValueError, "output_size"),
])
def test_bad_arguments_are_named(no_launch, name, features, rois, output_size, error, words):
    with pytest.raises(error) as raised:
        forward(name)(features, rois, output_size)
    assert words in str(raised.value)


@pytest.mark.parametrize("name", OPS)
def test_bad_options_are_named(no_launch, name):
    with pytest.raises(ValueError, match="spatial_scale must be a finite number, got nan"):
        forward(name)(GOOD_FEATURES, GOOD_ROIS, 2, spatial_scale=float("nan"))
    if name == "ps_roi_align":
        with pytest.raises(TypeError, match="sampling_ratio must be an int, got 1.5"):
            forward(name)(GOOD_FEATURES, GOOD_ROIS, 2, sampling_ratio=1.5)


@pytest.mark.parametrize("name", OPS)
def test_backward_checks_its_arguments(no_launch, name):
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 2, 2, 2\)"):
        backward(name)(np.zeros((2, 3, 2, 2)), GOOD_ROIS, GOOD_FEATURES.shape)
    with pytest.raises(ValueError, match=r"input_shape\[1\] = 8 must be a multiple of PH\*PW = 3\*1"):
        backward(name)(np.zeros((2, 2, 3, 1)), GOOD_ROIS, GOOD_FEATURES.shape)
    with pytest.raises(ValueError, match="input_shape"):
        backward(name)(np.zeros((2, 2, 2, 2)), GOOD_ROIS, (2, 8, 4))
    with pytest.raises(ValueError, match=r"rois\[1, 0\]"):
        backward(name)(np.zeros((2, 2, 2, 2)), GOOD_ROIS, (1, 8, 4, 5))


# -- torchvision, where docs/operators.md says we match it -----------------------------------------

@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("seed", range(10))
def test_matches_torchvision_when_installed(cpu, name, seed):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    features, rois, options = random_case(np.random.default_rng(300 + seed), name)
    x = torch.tensor(features, requires_grad=True)
    expected = getattr(torchvision.ops, name)(x, torch.tensor(rois), **options)
    grad_output = np.random.default_rng(seed).standard_normal(tuple(expected.shape))
    expected.backward(torch.tensor(grad_output))
    output = forward(name)(features, rois, **options)
    if name == "ps_roi_pool":
        # torchvision's forward clips bins to H-1 (its backward to H, as we do in both): on a map with
        # one more row and column, which it never reads, its forward is ours.
        padded = torch.tensor(np.pad(features, ((0, 0), (0, 0), (0, 1), (0, 1))))
        expected = torchvision.ops.ps_roi_pool(padded, torch.tensor(rois), **options)
    elif options["sampling_ratio"] <= 0:  # where torchvision gives NaN for an empty grid, we give 0
        expected = torch.nan_to_num(expected, nan=0.0)
    np.testing.assert_allclose(output, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backward(name)(grad_output, rois, features.shape,
                                              **backward_options(options)),
                               x.grad.numpy(), rtol=1e-12, atol=1e-12)
