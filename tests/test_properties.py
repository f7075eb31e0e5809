"""Property tests: every operator, forward and every gradient, against reference/ in float64, on both
targets (cuda simulated), for structures hypothesis draws: shapes, scales, sampling ratios, group and
part sizes, boxes inside, across and outside the map, degenerate and reversed. Values (features, box
jitter, offsets) come from an rng seeded by the draw, so that samples do not sit on bilinear kinks.

Few examples by default (tests/conftest.py); ``HYPOTHESIS_PROFILE=slow`` runs many more."""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import numba_droi  # noqa: E402
from numba_droi import _backend  # noqa: E402
from conftest import On  # noqa: E402
from operators import BOX_KINDS, NAMES, make_case, reference, run  # noqa: E402

# the simulator runs a Python thread per CUDA thread: fewer and smaller cases there
CUDA_EXAMPLES = max(2, settings().max_examples // 2)


@st.composite
def structures(draw, name, small):
    """Keyword arguments of ``make_case`` for operator ``name``."""
    side = 5 if small else 9
    s = dict(seed=draw(st.integers(0, 2 ** 32 - 1)), batch=draw(st.integers(1, 2)),
             height=draw(st.integers(1, side)), width=draw(st.integers(1, side)),
             channels=draw(st.integers(1, 2)),
             kinds=draw(st.lists(st.sampled_from(BOX_KINDS), min_size=0, max_size=3 if small else 5)),
             scale=draw(st.sampled_from([1.0, 0.5, 0.25, 1.3])),
             pooled=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
             sampling_ratio=draw(st.sampled_from([-1, 0, 1, 2, 3])), aligned=draw(st.booleans()))
    if name == "deform_roi_pool":
        s.update(gamma=draw(st.sampled_from([0.1, 0.5, 1.0])), with_offset=draw(st.booleans()),
                 with_mask=draw(st.booleans()))
    if name == "deform_psroi_pool":
        pooled = draw(st.integers(1, 3))
        s.update(pooled=(pooled, pooled), group_size=draw(st.integers(1, 3)),
                 part_size=draw(st.sampled_from([None, 1, 2, 3])),
                 sample_per_part=draw(st.integers(1, 3)), trans_std=draw(st.sampled_from([0.0, 0.1, 0.5])),
                 no_trans=draw(st.booleans()), classes=draw(st.integers(1, 2)))
        s["channels"] = 1 if small else s["channels"]
    if name == "deform_conv2d":
        kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        # at least one output pixel
        s["height"] = max(s["height"], dilation[0] * (kernel[0] - 1) + 1 - 2 * padding[0])
        s["width"] = max(s["width"], dilation[1] * (kernel[1] - 1) + 1 - 2 * padding[1])
        s.update(kernel=kernel, padding=padding, dilation=dilation,
                 stride=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
                 weight_groups=draw(st.integers(1, 2)), offset_groups=draw(st.integers(1, 2)),
                 with_offset=draw(st.booleans()), with_mask=draw(st.booleans()),
                 with_bias=draw(st.booleans()), offset_scale=draw(st.sampled_from([0.5, 2.0, 6.0])),
                 channels=1, batch=1 if small else s["batch"])
    return s


def check(name, structure, on, deterministic=False):
    seed = structure.pop("seed")
    case = make_case(name, np.random.default_rng(seed), **structure)
    with numba_droi.deterministic(deterministic):
        output, grads, grad_output = run(name, case, on, grad_seed=seed + 1)
    expected, expected_grads = reference(name, case, grad_output)
    np.testing.assert_allclose(output, expected, rtol=1e-12, atol=1e-12)
    assert len(grads) == len(expected_grads)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_matches_the_reference_on_cpu(name, data):
    check(name, data.draw(structures(name, small=False)), On("cpu"))


@pytest.mark.skipif("cuda" not in _backend.available_targets(), reason="no GPU and no CUDA simulator")
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=CUDA_EXAMPLES)
@given(data=st.data())
def test_matches_the_reference_on_cuda(name, data):
    """Atomic and deterministic backwards alike."""
    check(name, data.draw(structures(name, small=True)), On("cuda"),
          deterministic=data.draw(st.booleans()))
