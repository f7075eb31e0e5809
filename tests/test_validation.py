"""Bad arguments, for every operator: a ValueError or TypeError naming the argument and the bad value,
raised before any kernel launch; rois of another float dtype are cast to the features' dtype."""
import numpy as np
import pytest

from numba_droi import _backend
from operators import NAMES, OPERATORS, ROI_NAMES, make_case


class FakeDeviceArray:
    """A GPU array as ``_backend`` recognises one; any use beyond that check fails the test."""
    __cuda_array_interface__ = {"shape": (1,), "typestr": "<f8", "data": (0, False), "version": 3}

    def __getattr__(self, name):
        raise AssertionError(f"a GPU array was used ({name}) before the mixed kinds were refused")


@pytest.fixture
def no_launch(monkeypatch):
    def fail(*args):
        raise AssertionError("a kernel ran before the arguments were checked")
    monkeypatch.setattr(_backend, "run", fail)
    monkeypatch.setattr(_backend, "launch", fail)


def case_of(name):
    return make_case(name, np.random.default_rng(0), kinds=(0, 1))


OPTIONAL_ARRAYS = {"deform_roi_pool": ["offset", "mask"], "deform_psroi_pool": ["trans"],
                   "deform_conv2d": ["offset", "weight", "bias", "mask"]}


@pytest.mark.parametrize("name, key", [(name, "rois") for name in ROI_NAMES]
                         + [(name, key) for name, keys in OPTIONAL_ARRAYS.items() for key in keys])
def test_a_gpu_array_beside_numpy_features_is_refused_naming_it(no_launch, name, key):
    case = case_of(name)
    case[key] = FakeDeviceArray()
    with pytest.raises(TypeError, match=f"{key} on GPU"):
        OPERATORS[name].forward(case, lambda a: a)


@pytest.mark.parametrize("name", ROI_NAMES)
@pytest.mark.parametrize("batch_index, shown", [(2, "2.0"), (-1, "-1.0"), (np.nan, "nan"), (np.inf, "inf")])
def test_a_batch_index_outside_the_batch_is_refused_naming_the_row(no_launch, name, batch_index, shown):
    case = case_of(name)
    case["rois"][1, 0] = batch_index
    with pytest.raises(ValueError, match=rf"rois\[1, 0\] = {shown} is not a batch index in \[0, 2\)"):
        OPERATORS[name].forward(case, np.asarray)
    grad = np.zeros(OPERATORS[name].reference_forward(case_of(name)).shape)
    with pytest.raises(ValueError, match=rf"rois\[1, 0\] = {shown}"):
        OPERATORS[name].backward(case, grad, np.asarray)


WRONG_DTYPES = [("input", np.int32, "input must be float32 or float64"),
                ("input", np.float16, "input must be float32 or float64"),
                ("rois", np.int64, "rois must be a floating array"),
                ("offset", np.int64, "offset must be a floating array"),
                ("trans", np.int64, "trans must be a floating array"),
                ("mask", np.int64, "mask must be a floating array"),
                ("weight", np.int64, "weight must be a floating array")]


@pytest.mark.parametrize("name, key, dtype, words", [
    (name, *wrong) for name in NAMES for wrong in WRONG_DTYPES if case_of(name).get(wrong[0]) is not None])
def test_a_wrong_dtype_is_refused_naming_the_argument(no_launch, name, key, dtype, words):
    case = case_of(name)
    case[key] = case[key].astype(dtype)
    with pytest.raises(TypeError, match=words):
        OPERATORS[name].forward(case, np.asarray)


@pytest.mark.parametrize("name", NAMES)
def test_a_wrong_number_of_dimensions_is_refused_naming_the_argument(no_launch, name):
    case = case_of(name)
    case["input"] = case["input"][0]
    with pytest.raises(ValueError, match="input must have 4 dimensions"):
        OPERATORS[name].forward(case, np.asarray)


@pytest.mark.parametrize("name, key, words", [
    ("ps_roi_pool", "input", r"input.shape\[1\] = 7 must be a multiple of PH\*PW"),
    ("ps_roi_align", "input", r"input.shape\[1\] = 7 must be a multiple of PH\*PW"),
    ("deform_psroi_pool", "input", r"input.shape\[1\] = 7 must be output_dim \* group_size\*\*2"),
    ("deform_conv2d", "input", r"weight.shape\[1\] = 2 must divide the 7 input channels"),
])
def test_channel_counts_that_do_not_divide_are_refused(no_launch, name, key, words):
    case = case_of(name)
    case[key] = case[key][:, :1].repeat(7, axis=1)
    with pytest.raises(ValueError, match=words):
        OPERATORS[name].forward(case, np.asarray)


@pytest.mark.parametrize("name", ROI_NAMES)
@pytest.mark.parametrize("features, boxes", [(np.float64, np.float32), (np.float32, np.float64),
                                             (np.float32, np.float16)])
def test_rois_of_another_float_dtype_are_cast_to_the_features_dtype(cpu, name, features, boxes):
    case = case_of(name)
    case = {k: v.astype(features) if isinstance(v, np.ndarray) else v for k, v in case.items()}
    given = dict(case, rois=case["rois"].astype(boxes))
    cast = dict(case, rois=given["rois"].astype(features))
    output = OPERATORS[name].forward(given, np.asarray)
    assert output.dtype == features
    np.testing.assert_array_equal(output, OPERATORS[name].forward(cast, np.asarray))
