"""Property tests: every operator of the registry, forward and every gradient, against reference/ in
float64, on both targets (cuda simulated), for structures hypothesis draws: the sizes, the scale, boxes
inside, across and outside the map, degenerate and reversed, and every choice the record lists
(output sizes, sampling ratios, groups, parts, kernels...). Values (features, box jitter, offsets) come
from an rng seeded by the draw, so that samples do not sit on bilinear kinks.

Few examples by default (tests/conftest.py); ``HYPOTHESIS_PROFILE=slow`` runs many more."""
import importlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import numba_droi  # noqa: E402
from numba_droi import _backend, ops, registry  # noqa: E402

# the simulator runs a Python thread per CUDA thread: fewer and smaller cases there
CUDA_EXAMPLES = max(2, settings().max_examples // 2)
OPERATORS = pytest.mark.parametrize("operator", registry.OPERATORS, ids=lambda operator: operator.name)


@st.composite
def examples(draw, operator, small):
    """An example of ``operator``: ``(sizes and choices, seed)``."""
    side = 5 if small else 9
    sizes = dict(batch=draw(st.integers(1, 2)), height=draw(st.integers(1, side)),
                 width=draw(st.integers(1, side)), channels=1 if small else draw(st.integers(1, 2)),
                 boxes=tuple(draw(st.lists(st.sampled_from(registry.BOX_KINDS), min_size=0,
                                           max_size=3 if small else 5))),
                 scale=draw(st.sampled_from([1.0, 0.5, 0.25, 1.3])))
    choices = {name: draw(st.sampled_from(values)) for name, values in operator.choices.items()}
    return dict(sizes, **choices), draw(st.integers(0, 2 ** 32 - 1))


def check(operator, drawn, on):
    arguments, seed = drawn
    if "rois" not in operator.arrays:
        arguments = dict(arguments, boxes=None, batch=1 if on.name == "cuda" else arguments["batch"])
    example = operator.example(np.random.default_rng(seed), **arguments)
    with on:
        arrays = on.arrays(example.arrays)
        output = on.numpy(operator.call(ops, arrays, example.options))
        grad_output = np.random.default_rng(seed + 1).standard_normal(output.shape)
        grads = operator.vjp(ops, on.array(grad_output), arrays, example.options)
    reference = importlib.import_module(operator.reference)
    np.testing.assert_allclose(output, operator.call(reference, example.arrays, example.options),
                               rtol=1e-12, atol=1e-12)
    expected = operator.vjp(reference, grad_output, example.arrays, example.options)
    assert set(grads) == set(expected)
    for name, grad in grads.items():
        np.testing.assert_allclose(on.numpy(grad), expected[name], rtol=1e-11, atol=1e-11, err_msg=name)


@OPERATORS
@given(data=st.data())
def test_matches_the_reference_on_cpu(cpu, operator, data):
    check(operator, data.draw(examples(operator, small=False)), cpu)


@pytest.mark.skipif("cuda" not in _backend.available_targets(), reason="no GPU and no CUDA simulator")
@OPERATORS
@settings(max_examples=CUDA_EXAMPLES)
@given(data=st.data())
def test_matches_the_reference_on_cuda(cuda, operator, data):
    """Atomic and deterministic backwards alike."""
    with numba_droi.deterministic(data.draw(st.booleans())):
        check(operator, data.draw(examples(operator, small=True)), cuda)
