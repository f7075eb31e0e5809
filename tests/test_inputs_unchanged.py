"""No operator and no backward (atomic or deterministic) modifies its inputs, on either target."""
import numpy as np
import pytest

import numba_droi
from operators import NAMES, OPERATORS, make_case


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_not_modified(on, name, dtype):
    case = make_case(name, np.random.default_rng(0), batch=2, height=4, width=5, kinds=(0, 1, 2, 3, 4),
                     channels=1)
    case = {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in case.items()}
    originals = {k: v.copy() for k, v in case.items() if isinstance(v, np.ndarray)}
    with on:
        arrays = {k: on.array(v.copy()) for k, v in originals.items()}  # what the operator is given
        given = dict(case, **arrays)
        output = OPERATORS[name].forward(given, lambda a: a)
        grad_output = on.array(np.random.default_rng(1).standard_normal(output.shape).astype(dtype))
        grad_copy = on.numpy(grad_output).copy()
        for mode in (False, True):
            with numba_droi.deterministic(mode):
                OPERATORS[name].backward(given, grad_output, lambda a: a)
    for key, original in originals.items():
        np.testing.assert_array_equal(on.numpy(arrays[key]), original, err_msg=key)
    np.testing.assert_array_equal(on.numpy(grad_output), grad_copy, err_msg="grad_output")
