"""Bad arguments that only some operators can get, and casts: a ValueError naming the argument and the
bad value, raised before any kernel launch; rois of another float dtype are cast to the features'
dtype. (The checks every operator makes: tests/test_operators.py.)"""
import numpy as np
import pytest

from numba_droi import ops, registry

ROI_OPERATORS = pytest.mark.parametrize(
    "operator", [operator for operator in registry.OPERATORS if "rois" in operator.arrays],
    ids=lambda operator: operator.name)


@pytest.mark.parametrize("name, words", [
    ("ps_roi_pool", r"input.shape\[1\] = 7 must be a multiple of PH\*PW"),
    ("ps_roi_align", r"input.shape\[1\] = 7 must be a multiple of PH\*PW"),
    ("deform_psroi_pool", r"input.shape\[1\] = 7 must be output_dim \* group_size\*\*2"),
    ("deform_conv2d", r"weight.shape\[1\] = 2 must divide the 7 input channels"),
])
def test_channel_counts_that_do_not_divide_are_refused(no_launch, name, words):
    operator = registry.BY_NAME[name]
    example = operator.example(np.random.default_rng(0), boxes=(0, 1))
    arrays = dict(example.arrays, input=example.arrays["input"][:, :1].repeat(7, axis=1))
    with pytest.raises(ValueError, match=words):
        operator.call(ops, arrays, example.options)


@ROI_OPERATORS
@pytest.mark.parametrize("features, boxes", [(np.float64, np.float32), (np.float32, np.float64),
                                             (np.float32, np.float16)])
def test_rois_of_another_float_dtype_are_cast_to_the_features_dtype(cpu, operator, features, boxes):
    example = operator.example(np.random.default_rng(0), features, boxes=(0, 1))
    given = dict(example.arrays, rois=example.arrays["rois"].astype(boxes))
    cast = dict(example.arrays, rois=given["rois"].astype(features))
    output = operator.call(ops, given, example.options)
    assert output.dtype == features
    np.testing.assert_array_equal(output, operator.call(ops, cast, example.options))


@ROI_OPERATORS
def test_the_batch_index_is_read_from_the_rois_as_given(cpu, operator):
    """float64 rois with index 0.99999999 pool from image 0, though float32 features would round it to
    1; the caller's rois are left as they are."""
    example = operator.example(np.random.default_rng(1), np.float32, boxes=(0, 0))
    rois = example.arrays["rois"].astype(np.float64)
    rois[:, 0] = [0.99999999, 1.5]
    given = rois.copy()
    output = operator.call(ops, dict(example.arrays, rois=rois), example.options)
    exact = dict(example.arrays, rois=np.concatenate([[[0], [1]], rois[:, 1:]], 1).astype(np.float32))
    np.testing.assert_array_equal(output, operator.call(ops, exact, example.options))
    np.testing.assert_array_equal(rois, given)
