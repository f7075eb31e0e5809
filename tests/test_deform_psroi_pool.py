"""deform_psroi_pool, what is specific to it: more output channels than a cpu block against reference/, a
value derived by hand, the trans gradient where B3 clamps, bad offsets and boxes, its argument checks,
and a trans gradient that does not depend on what its array held. What every operator is tested for:
tests/test_operators.py."""
import math

import numpy as np
import pytest

import numba_droi
from numba_droi import functional
from numba_droi.autograd import Tensor
from numba_droi.gradcheck import gradcheck
from numba_droi.kernels import deform_psroi_pool as kernels
from reference.deform_psroi_pool import _bins as reference_bins
from reference.deform_psroi_pool import deform_psroi_pool as reference_forward
from reference.deform_psroi_pool import deform_psroi_pool_backward as reference_backward


def random_case(rng, max_size=9, max_boxes=4, no_trans=None):
    """``(features, rois, trans, options)``."""
    group_size, pooled_size = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    output_dim = int(rng.choice([1, 2, 4]))
    classes = int(rng.choice([c for c in (1, 2, 4) if output_dim % c == 0]))
    part_size = int(rng.integers(1, 4))
    no_trans = bool(rng.random() < 0.2) if no_trans is None else no_trans
    batch, height, width = int(rng.integers(1, 3)), *(int(v) for v in rng.integers(1, max_size + 1, 2))
    scale = float(rng.choice([1.0, 0.5, 0.25]))
    features = rng.standard_normal((batch, output_dim * group_size ** 2, height, width))
    count = int(rng.integers(1, max_boxes + 1))
    low = rng.uniform(-0.4, 0.9, (count, 2)) * (width, height)
    size = rng.uniform(-0.2, 1.0, (count, 2)) * (width, height)
    rois = np.concatenate([rng.integers(0, batch, (count, 1)), low / scale, (low + size) / scale], 1)
    trans = None if no_trans else rng.standard_normal((count, 2 * classes, part_size, part_size))
    options = dict(spatial_scale=scale, output_dim=output_dim, group_size=group_size,
                   pooled_size=pooled_size, part_size=part_size,
                   sample_per_part=int(rng.integers(1, 4)), trans_std=float(rng.choice([0.1, 0.3])),
                   no_trans=no_trans)
    return features, rois, trans, options


def backward_options(options):
    return {k: v for k, v in options.items() if k not in ("output_dim", "pooled_size")}


def run_both(on, features, rois, trans, options, grad_output=None):
    def array(a):
        return None if a is None else on.array(a)
    with on:
        output = on.numpy(numba_droi.deform_psroi_pool(array(features), array(rois), array(trans),
                                                       **options))
        if grad_output is None:
            grad_output = np.random.default_rng(1).standard_normal(output.shape)
        grads = numba_droi.deform_psroi_pool_backward(array(grad_output), array(features), array(rois),
                                                      array(trans), **backward_options(options))
    return output, grad_output, [None if g is None else on.numpy(g) for g in grads]


def check_against_reference(on, features, rois, trans, options):
    output, grad_output, (grad_input, grad_trans) = run_both(on, features, rois, trans, options)
    np.testing.assert_allclose(output, reference_forward(features, rois, trans, **options),
                               rtol=1e-12, atol=1e-12)
    expected_input, expected_trans = reference_backward(grad_output, features, rois, trans,
                                                        **backward_options(options))
    np.testing.assert_allclose(grad_input, expected_input, rtol=1e-12, atol=1e-12)
    if options["no_trans"]:
        assert grad_trans is None
    else:
        np.testing.assert_allclose(grad_trans, expected_trans, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("no_trans", [False, True])
def test_more_output_channels_than_a_cpu_block_match_reference(cpu, no_trans):
    # The cpu input gradient splits the output channels into blocks; here blocks span classes, and
    # the group grid differs from the bin grid.
    rng = np.random.default_rng(3)
    output_dim, group_size = 2 * kernels.CHANNEL_BLOCK + 8, 2
    features = rng.standard_normal((2, output_dim * group_size ** 2, 7, 8))
    low = rng.uniform(-0.4, 0.9, (5, 2)) * (8, 7)
    size = rng.uniform(0.2, 1.0, (5, 2)) * (8, 7)
    rois = np.concatenate([[[0], [1], [1], [0], [1]], 2 * low, 2 * (low + size)], 1)
    trans = None if no_trans else rng.standard_normal((5, 2 * 4, 2, 2))  # 4 classes of 10 channels
    options = dict(spatial_scale=0.5, output_dim=output_dim, group_size=group_size, pooled_size=3,
                   part_size=2, sample_per_part=2, trans_std=0.2, no_trans=no_trans)
    check_against_reference(cpu, features, rois, trans, options)



@pytest.mark.parametrize("no_trans", [False, True])
def test_boxes_in_several_cpu_chunks_match_reference(cpu, monkeypatch, no_trans):
    # The cpu input gradient tabulates the samples of BOX_CHUNK boxes at a time: 7 boxes in chunks of
    # 3 (the last one short) must give what one chunk gives.
    monkeypatch.setattr(kernels, "BOX_CHUNK", 3)
    features, rois, trans, options = random_case(np.random.default_rng(11), max_boxes=1, no_trans=no_trans)
    rng = np.random.default_rng(12)
    height, width = features.shape[2:]
    low = rng.uniform(-0.4, 0.9, (7, 2)) * (width, height)
    size = rng.uniform(0.2, 1.0, (7, 2)) * (width, height)
    scale = options["spatial_scale"]
    rois = np.concatenate([rng.integers(0, features.shape[0], (7, 1)), low / scale, (low + size) / scale], 1)
    if not no_trans:
        trans = rng.standard_normal((7,) + trans.shape[1:])
    check_against_reference(cpu, features, rois, trans, options)

def test_a_value_derived_by_hand(on):
    """A 5x5 arange map, box [1, 1, 2, 2]: start = 1 - 0.5, one bin of size 2, two samples per side at
    the sub-bin corners 0.5 and 1.5, each value 5y + x; trans moves x by 0.25 * 2 * 0.5 = 0.25."""
    features = np.arange(25.0).reshape(1, 1, 5, 5)
    rois = np.array([[0, 1.0, 1, 2, 2]])
    options = dict(spatial_scale=1.0, output_dim=1, group_size=1, pooled_size=1, sample_per_part=2,
                   trans_std=0.25)
    output, _, (grad_input, grad_trans) = run_both(on, features, rois, np.array([[[[0.5]], [[0.0]]]]),
                                                   options, grad_output=np.ones((1, 1, 1, 1)))
    samples = [(y, x + 0.25) for y in (0.5, 1.5) for x in (0.5, 1.5)]
    assert output[0, 0, 0, 0] == pytest.approx(np.mean([5 * y + x for y, x in samples]), abs=1e-12)
    assert grad_input.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(grad_trans.ravel(), [0.25 * 2 * 1, 0.25 * 2 * 5], rtol=1e-12)


# -- gradients by finite differences --------------------------------------------------------------

def distance_to_kinks(features, rois, trans, options):
    """Smallest distance of a sample coordinate to an integer (B3's kinks) or to B3's range ends,
    where a sample enters or leaves the mean."""
    height, width = features.shape[2:]
    distances = [1.0]
    for k, roi in enumerate(rois):
        for _, (_, points, _, _) in reference_bins(
                features.shape, roi, trans[k], options["spatial_scale"], options["output_dim"],
                options["group_size"], options["pooled_size"], options["part_size"],
                options["sample_per_part"], options["trans_std"], False).items():
            distances += [abs(v - round(v)) for point in points for v in point]
            distances += [abs(h - e) for h, _ in points for e in (-0.5, height - 0.5)]
            distances += [abs(w - e) for _, w in points for e in (-0.5, width - 0.5)]
    return min(distances)


def smooth_case(seed, **sizes):
    """The first random case with offsets from ``seed`` on whose samples keep 1e-3 off the kinks.
    (Samples outside B3's range are not in the list: moving a little, they stay out.)"""
    rng = np.random.default_rng(seed)
    while True:
        case = random_case(rng, no_trans=False, **sizes)
        if distance_to_kinks(*case) > 1e-3:
            return case


def check_gradients(features, rois, trans, options, on):
    inputs = [Tensor(on.array(a), requires_grad=True) for a in (features, trans)]
    boxes = on.array(rois)
    with on:
        assert gradcheck(lambda x, t: functional.deform_psroi_pool(x, boxes, t, **options), inputs)


def test_trans_gradient_is_zero_where_b3_clamps(cpu):
    """Samples with x in [-0.5, 0) are clamped to column 0: moving them in x changes nothing, and the
    finite differences agree (as MXNet, whose floor and ceil of the clamped x meet there)."""
    rng = np.random.default_rng(13)
    features = rng.standard_normal((1, 1, 6, 7))
    rois = np.array([[0, 0.0, 2, 0, 3]])  # x from -0.5, one pixel wide; y from 1.5
    trans = np.array([[[[0.3]], [[0.2]]]])  # x moves by 0.1 * 1 * 0.3 = 0.03
    options = dict(spatial_scale=1.0, output_dim=1, group_size=1, pooled_size=1, part_size=1,
                   sample_per_part=1, trans_std=0.1, no_trans=False)
    assert distance_to_kinks(features, rois, trans, options) > 1e-2
    t = Tensor(trans, requires_grad=True)
    assert gradcheck(lambda t: functional.deform_psroi_pool(features, rois, t, **options), [t])
    grad_trans = numba_droi.deform_psroi_pool_backward(np.ones((1, 1, 1, 1)), features, rois, trans,
                                                       **backward_options(options))[1]
    assert grad_trans[0, 0, 0, 0] == 0 and grad_trans[0, 1, 0, 0] != 0


# -- the cuda kernels' bodies compiled for the cpu, at the R-FCN size ------------------------------

# -- edge cases ------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the simulator
def test_huge_and_nan_offsets_and_boxes_give_zero_and_read_nothing_outside(on):
    """The simulator raises on any out-of-range index, so this also checks the bounds on cuda."""
    features = np.random.default_rng(0).standard_normal((1, 4, 5, 6))
    rois = np.array([[0, 1, 1, 4, 3.0]] * 5 + [[0, np.nan, 1, 4, 3], [0, 1, 1, np.inf, 3]])
    trans = np.zeros((7, 2, 1, 1))
    trans[0, 0], trans[1, 1], trans[2, 0], trans[3, 1] = 1e30, -1e30, np.nan, -np.inf
    options = dict(spatial_scale=1.0, output_dim=1, group_size=2, pooled_size=2, part_size=1,
                   sample_per_part=2, trans_std=0.1)
    for dtype in (np.float64, np.float32):
        output, _, grads = run_both(on, *(a.astype(dtype) for a in (features, rois, trans)), options,
                                    grad_output=np.ones((7, 1, 2, 2), dtype))
        assert not output[[0, 1, 2, 3, 5, 6]].any() and np.all(output[4] != 0)
        assert all(np.all(np.isfinite(g)) for g in grads)
        assert not grads[1][[0, 1, 2, 3, 5, 6]].any()


# -- bad inputs: clear errors before any launch ----------------------------------------------------

GOOD = dict(input=np.zeros((2, 8, 4, 5)), rois=np.array([[0, 0, 0, 2, 2], [1, 1, 1, 3, 3.0]]),
            trans=np.zeros((2, 4, 2, 2)), spatial_scale=1.0, output_dim=2, group_size=2, pooled_size=2)


@pytest.mark.parametrize("arguments, error, words", [
    (dict(output_dim=3), ValueError, "input.shape[1] = 8 must be output_dim * group_size**2 = 3 * 2**2"),
    (dict(group_size=1), ValueError, "input.shape[1] = 8 must be output_dim * group_size**2 = 2 * 1**2"),
    (dict(group_size=0), ValueError, "group_size must be a positive int, got 0"),
    (dict(pooled_size=2.0), TypeError, "pooled_size must be an int"),
    (dict(sample_per_part=0), ValueError, "sample_per_part must be a positive int"),
    (dict(rois=np.array([[0, 0, 0, 2, 2], [2, 1, 1, 3, 3.0]])), ValueError, "rois[1, 0] = 2.0"),
    (dict(trans=np.zeros((2, 3, 2, 2))), ValueError, "trans.shape[1] must be 2 * num_classes"),
    (dict(trans=np.zeros((2, 6, 2, 2))), ValueError, "num_classes dividing output_dim = 2"),
    (dict(trans=np.zeros((2, 2, 3, 3))), ValueError, "trans must have shape (2, 2, 2, 2), got (2, 2, 3, 3)"),
    (dict(trans=np.zeros((1, 2, 2, 2))), ValueError, "trans must have shape (2, 2, 2, 2)"),
    (dict(trans=np.zeros((2, 2, 2))), ValueError, "trans.shape[1] must be 2 * num_classes"),
    (dict(trans=None), ValueError, "trans must be given unless no_trans is True"),
    (dict(trans_std=math.inf), ValueError, "trans_std must be a finite number, got inf"),
])
def test_bad_arguments_are_named(no_launch, arguments, error, words):
    with pytest.raises(error) as raised:
        numba_droi.deform_psroi_pool(**(GOOD | arguments))
    assert words in str(raised.value)


def test_backward_checks_its_arguments(no_launch):
    grad = np.zeros((2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"input.shape\[1\] = 8 must be output_dim"):
        numba_droi.deform_psroi_pool_backward(np.zeros((2, 3, 2, 2)), GOOD["input"], GOOD["rois"],
                                              GOOD["trans"], 1.0, 2)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 2, 2, 2\)"):
        numba_droi.deform_psroi_pool_backward(np.zeros((2, 2, 2, 3)), GOOD["input"], GOOD["rois"],
                                              GOOD["trans"], 1.0, 2)
    with pytest.raises(ValueError, match="trans must have shape"):
        numba_droi.deform_psroi_pool_backward(grad, GOOD["input"], GOOD["rois"], GOOD["trans"], 1.0, 2,
                                              part_size=3)


def test_the_cpu_trans_gradient_writes_every_element_whatever_the_array_held():
    """As the cuda kernel does: the driver's result does not depend on a zero-filled gradient (parts
    shared by several bins, a box with a non-finite coordinate that takes no sample)."""
    rng = np.random.default_rng(5)
    features = rng.standard_normal((1, 2 * 4, 6, 7))
    rois = np.array([[0, 0.5, 1.0, 9.0, 8.0], [0, np.nan, 1, 3, 3], [0, 2.0, 0.5, 5.0, 9.5]])
    trans = rng.uniform(-1, 1, (3, 2, 2, 2))
    grad_output = rng.standard_normal((3, 2, 3, 3))
    arguments = (features, grad_output, rois, trans, 0.5, 0.2, 2, 2, 2)
    kernel = kernels.KERNELS["trans_grad"]["cpu"]
    zeroed, garbage = np.zeros(trans.shape), np.full(trans.shape, np.nan)
    kernel(*arguments, zeroed)
    kernel(*arguments, garbage)
    np.testing.assert_array_equal(garbage, zeroed)
    assert zeroed[0].any() and not zeroed[1].any()
