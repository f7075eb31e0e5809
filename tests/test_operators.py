"""Every operator of the registry through one tester: its forward and gradients against reference/ (float64
tight, float32 relative), its gradients against finite differences, the cuda kernels' own source run on
the cpu at a detection size against the cpu fast path, empty inputs, non-contiguous inputs, inputs left
unchanged, determinism, and bad arguments refused before any kernel runs. A new operator is tested here
by its record alone; its own test file keeps what is specific to it (published values, peer parity,
deliberate differences)."""
import importlib
import inspect

import numpy as np
import pytest

import numba_droi
from numba_droi import _backend, demo, kernels, nn, ops, registry
from numba_droi.autograd import Tensor

OPERATORS = pytest.mark.parametrize("operator", registry.OPERATORS, ids=lambda operator: operator.name)
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])


def reference_of(operator):
    return importlib.import_module(operator.reference)


def cast(example, dtype):
    """``example`` with its floating arrays in ``dtype``."""
    return registry.Example({name: a.astype(dtype) if a is not None and a.dtype.kind == "f" else a
                             for name, a in example.arrays.items()}, example.options)


def results(operator, example, on, grad_seed=1, grad_output=None):
    """``(output, {name: gradient}, grad_output)`` of ``example`` on target ``on``, as NumPy arrays,
    for a random ``grad_output`` unless one is given."""
    with on:
        arrays = on.arrays(example.arrays)
        output = on.numpy(operator.call(ops, arrays, example.options))
        if grad_output is None:
            grad_output = np.random.default_rng(grad_seed).standard_normal(output.shape).astype(output.dtype)
        grads = operator.vjp(ops, on.array(grad_output), arrays, example.options)
    return output, {name: on.numpy(g) for name, g in grads.items()}, grad_output


def expected(operator, example, grad_output):
    """``(output, {name: gradient})`` of reference/ in float64."""
    reference = reference_of(operator)
    arrays = cast(example, np.float64).arrays
    output = operator.call(reference, arrays, example.options)
    return output, operator.vjp(reference, grad_output.astype(np.float64), arrays, example.options)


def assert_close(got, want, tolerance):
    output, grads = got
    want_output, want_grads = want
    np.testing.assert_allclose(output, want_output, rtol=tolerance, atol=tolerance)
    assert set(grads) == set(want_grads)
    for name in grads:
        np.testing.assert_allclose(grads[name], want_grads[name], rtol=tolerance, atol=tolerance,
                                   err_msg=name)


def assert_equal(got, want):
    output, grads = got
    np.testing.assert_array_equal(output, want[0])
    assert set(grads) == set(want[1])
    for name in grads:
        np.testing.assert_array_equal(grads[name], want[1][name], err_msg=name)


# -- against reference/ --------------------------------------------------------------------------------

@OPERATORS
@pytest.mark.parametrize("seed", range(4))
def test_matches_the_reference_on_cpu(cpu, operator, seed):
    example = operator.example(np.random.default_rng(seed))
    output, grads, grad_output = results(operator, example, cpu)
    assert_close((output, grads), expected(operator, example, grad_output), 1e-11)


@OPERATORS
def test_matches_the_reference_on_cuda(cuda, operator):
    """Simulated without a GPU: atomic and deterministic backwards."""
    example = operator.example(np.random.default_rng(10), batch=1, channels=1, boxes=(0, 1, 3))
    output, grads, grad_output = results(operator, example, cuda)
    want = expected(operator, example, grad_output)
    assert_close((output, grads), want, 1e-11)
    with numba_droi.deterministic():
        assert_close(results(operator, example, cuda, grad_output=grad_output)[:2], want, 1e-11)


@OPERATORS
def test_float32_matches_the_float64_reference(on, operator):
    example = cast(operator.example(np.random.default_rng(20), batch=1, channels=1), np.float32)
    output, grads, grad_output = results(operator, example, on)
    assert output.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    assert_close((output, grads), expected(operator, example, grad_output), 1e-4)


@OPERATORS
@pytest.mark.parametrize("sizes", [dict(boxes=()), dict(batch=0, boxes=()), dict(height=0), dict(width=0)],
                         ids=["no boxes", "no images", "no rows", "no columns"])
def test_empty_inputs_give_empty_or_zero_results(on, operator, sizes):
    if "boxes" in sizes and "rois" not in operator.arrays:
        sizes = dict(sizes, boxes=None)
    example = operator.example(np.random.default_rng(30), **sizes)
    output, grads, grad_output = results(operator, example, on)
    want_output, want_grads = expected(operator, example, grad_output)
    assert output.shape == want_output.shape
    assert_close((output, grads), (want_output, want_grads), 1e-12)


# -- gradients by finite differences ----------------------------------------------------------------------

def check_gradients(operator, example, on):
    with on:
        assert demo.gradcheck_example(operator, example, on.array)


@OPERATORS
@pytest.mark.parametrize("seed", range(3))
def test_gradients_match_finite_differences_on_cpu(cpu, operator, seed):
    """Boxes of every kind: inside, across the border (samples in the border bands), outside,
    degenerate and reversed."""
    check_gradients(operator, operator.example(np.random.default_rng(40 + seed), batch=1, height=7,
                                               width=8), cpu)


@OPERATORS
def test_gradients_match_finite_differences_on_cuda(cuda, operator):
    check_gradients(operator, operator.example(np.random.default_rng(50), batch=1, channels=1,
                                               boxes=(0, 1)), cuda)


@OPERATORS
def test_the_differentiable_operator_gives_the_array_backward(on, operator):
    example = operator.example(np.random.default_rng(60), batch=1, channels=1)
    arrays, call = demo.example_call(operator, example, on.array)
    with on:
        tensors = [Tensor(on.array(a), requires_grad=True) for a in arrays]
        output = call(*tensors)
        grad_output = np.random.default_rng(61).standard_normal(output.shape)
        output.backward(on.array(grad_output))
        want = operator.vjp(ops, on.array(grad_output), on.arrays(example.arrays), example.options)
    assert tuple(want) == operator.wanted(example.arrays) != ()
    for tensor, name in zip(tensors, want):
        np.testing.assert_array_equal(on.numpy(tensor.grad), on.numpy(want[name]), err_msg=name)


@OPERATORS
def test_only_the_gradients_asked_for_are_computed(cpu, operator, monkeypatch):
    """The differentiable operator passes ``needs_input_grad`` down: with only the first array
    requiring a gradient, the others get none and no kernel computes theirs."""
    example = operator.example(np.random.default_rng(62), batch=1, channels=1)
    arrays, call = demo.example_call(operator, example)
    first = Tensor(arrays[0], requires_grad=True)
    output = call(first, *arrays[1:])  # the other differentiable arrays as plain arrays
    everything, only_first = [], []
    run = _backend.run
    monkeypatch.setattr(_backend, "run", lambda target, kernel, *args: (only_first.append(kernel),
                                                                        run(target, kernel, *args)))
    output.backward(np.ones(output.shape))
    monkeypatch.setattr(_backend, "run", lambda target, kernel, *args: (everything.append(kernel),
                                                                        run(target, kernel, *args)))
    call(*(Tensor(a, requires_grad=True) for a in arrays)).backward(np.ones(output.shape))
    assert first.grad is not None
    if len(arrays) > 1:
        assert len(only_first) < len(everything), (only_first, everything)


# -- the cuda kernels' own source on the cpu ----------------------------------------------------------------

@OPERATORS
@DTYPES
def test_cuda_kernels_on_cpu_equal_the_cpu_fast_path_at_a_detection_size(operator, dtype):
    """The operator's benchmark case: the forward bit for bit, the gradients (other sums in other
    orders) to rounding; the deterministic cuda backwards too."""
    example = cast(operator.benchmark(np.random.default_rng(70))[0], dtype)
    fast = results(operator, example, _Cpu())
    with _backend.cuda_kernels_on_cpu():
        kernels_on_cpu = results(operator, example, _Cpu(), grad_output=fast[2])
        with numba_droi.deterministic():
            deterministic = results(operator, example, _Cpu(), grad_output=fast[2])
    tolerance = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_array_equal(kernels_on_cpu[0], fast[0])
    assert_close(kernels_on_cpu[:2], fast[:2], tolerance)
    assert_close(deterministic[:2], fast[:2], tolerance)


@OPERATORS
@pytest.mark.parametrize("seed", range(2))
def test_cuda_kernels_on_cpu_match_the_reference(operator, seed):
    example = operator.example(np.random.default_rng(80 + seed))
    with _backend.cuda_kernels_on_cpu():
        output, grads, grad_output = results(operator, example, _Cpu())
        with numba_droi.deterministic():
            again = results(operator, example, _Cpu(), grad_output=grad_output)
    want = expected(operator, example, grad_output)
    assert_close((output, grads), want, 1e-11)
    assert_close(again[:2], want, 1e-11)


@OPERATORS
def test_every_cuda_kernel_of_the_record_runs(operator, monkeypatch):
    """Forward and backward, atomic and deterministic, launch exactly the record's cuda kernels."""
    launched = set()
    launch = _backend.launch
    monkeypatch.setattr(_backend, "launch", lambda kernel, *args: (launched.add(kernel.__name__),
                                                                  launch(kernel, *args)))
    example = operator.example(np.random.default_rng(90), batch=1, channels=1)
    with _backend.cuda_kernels_on_cpu():
        results(operator, example, _Cpu())
        with numba_droi.deterministic():
            results(operator, example, _Cpu())
    assert launched == operator.cuda_kernels


def test_every_cuda_kernel_belongs_to_an_operator():
    """(dcnv3 and dcnv4 run ms_deform_attn's kernels: a kernel may belong to several.)"""
    kernels.import_all()
    names = {kernel for operator in registry.OPERATORS for kernel in operator.cuda_kernels}
    assert names == set(_backend.CUDA_KERNELS)


class _Cpu:
    """The cpu target as ``results`` takes it (NumPy arrays, no target switch): inside
    ``cuda_kernels_on_cpu`` NumPy arrays run on the cuda kernels."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    array = staticmethod(np.asarray)
    numpy = staticmethod(np.asarray)

    def arrays(self, arrays):
        return dict(arrays)


# -- determinism ----------------------------------------------------------------------------------------

def crowded(operator, dtype=np.float64, seed=100):
    """Overlapping boxes, all in image 0 but the last (many adds into the same gradient elements)."""
    rng = np.random.default_rng(seed)
    example = operator.example(rng, dtype, boxes=(0, 1) * 3)
    if "rois" in example.arrays:
        rois = example.arrays["rois"]
        rois[:, 0] = 0
        rois[-1, 0] = 1
    return example


@OPERATORS
@DTYPES
def test_on_cuda_the_deterministic_backward_repeats_bitwise_and_equals_the_atomic_one(cuda, cpu, operator,
                                                                                      dtype):
    example = crowded(operator, dtype)
    _, atomic, grad_output = results(operator, example, cuda)
    with numba_droi.deterministic():
        first = results(operator, example, cuda, grad_output=grad_output)[1]
        second = results(operator, example, cuda, grad_output=grad_output)[1]
    on_cpu = results(operator, example, cpu, grad_output=grad_output)[1]
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    assert set(first) == set(second) == set(atomic) == set(on_cpu) != set()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        np.testing.assert_allclose(first[name], atomic[name], rtol=tolerance, atol=tolerance, err_msg=name)
        np.testing.assert_allclose(first[name], on_cpu[name], rtol=tolerance, atol=tolerance, err_msg=name)


@OPERATORS
@DTYPES
def test_on_cpu_repeated_backwards_are_bitwise_equal(cpu, operator, dtype):
    rng = np.random.default_rng(2)
    example = operator.example(rng, dtype, batch=2, height=23, width=19, channels=8,
                               boxes=tuple(rng.integers(0, 2, 40)))
    _, first, grad_output = results(operator, example, cpu)
    for _ in range(2):
        again = results(operator, example, cpu, grad_output=grad_output)[1]
        assert set(again) == set(first) != set()
        for name in first:
            np.testing.assert_array_equal(first[name], again[name], err_msg=name)


@OPERATORS
def test_on_cpu_the_results_do_not_depend_on_the_number_of_threads(cpu, operator, monkeypatch):
    """Each parallel iteration owns the elements it writes: one thread and five (other slices of the
    iterations) give the same bits."""
    rng = np.random.default_rng(3)
    example = operator.example(rng, batch=2, height=23, width=19, channels=8,
                               boxes=tuple(rng.integers(0, 2, 40)))
    monkeypatch.setattr(_backend, "_threads", 1)
    output, grads, grad_output = results(operator, example, cpu)
    monkeypatch.setattr(_backend, "_threads", 5)
    again, grads_again, _ = results(operator, example, cpu, grad_output=grad_output)
    np.testing.assert_array_equal(output, again)
    assert set(grads) == set(grads_again) != set()
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads_again[name], err_msg=name)


# -- inputs: non-contiguous, unchanged -----------------------------------------------------------------

def strided(array):
    """``array``'s values in a non-contiguous view (every other element of a wider array)."""
    wider = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype) if array.ndim else None
    if wider is None or not array.size:
        return array
    wider[..., ::2] = array
    return wider[..., ::2]


@OPERATORS
def test_non_contiguous_inputs_give_what_contiguous_ones_give(cpu, operator):
    example = operator.example(np.random.default_rng(110))
    contiguous = results(operator, example, cpu)
    views = {name: None if a is None else strided(a) for name, a in example.arrays.items()}
    assert any(a is not None and not a.flags.c_contiguous for a in views.values())
    given = results(operator, registry.Example(views, example.options), cpu,
                    grad_output=strided(contiguous[2]))
    assert_equal(given[:2], contiguous[:2])


@OPERATORS
def test_read_only_inputs_run_the_kernels_compiled_for_writable_ones(cpu, operator):
    """Numba types a read-only array apart from a writable one: given as they are, read-only inputs
    (a memory map, ``np.frombuffer``) would compile every kernel again."""
    example = operator.example(np.random.default_rng(140))
    writable = results(operator, example, cpu)
    compiled = {name: len(function.signatures) for name, function in _backend.CPU_FUNCTIONS.items()}
    read_only = {}
    for name, array in example.arrays.items():
        if array is not None:
            array = array.copy()
            array.setflags(write=False)
        read_only[name] = array
    grad_output = writable[2].copy()
    grad_output.setflags(write=False)
    given = results(operator, registry.Example(read_only, example.options), cpu, grad_output=grad_output)
    assert {name: len(function.signatures) for name, function in _backend.CPU_FUNCTIONS.items()} == compiled
    assert_equal(given[:2], writable[:2])


@OPERATORS
@DTYPES
def test_inputs_are_not_modified(on, operator, dtype):
    """Atomic and deterministic backwards alike."""
    example = cast(operator.example(np.random.default_rng(0), batch=2, height=4, width=5, channels=1), dtype)
    originals = {name: a.copy() for name, a in example.arrays.items() if a is not None}
    with on:
        arrays = on.arrays(example.arrays)
        output = operator.call(ops, arrays, example.options)
        grad_output = on.array(np.random.default_rng(1).standard_normal(output.shape).astype(dtype))
        grad_copy = on.numpy(grad_output).copy()
        for mode in (False, True):
            with numba_droi.deterministic(mode):
                operator.vjp(ops, grad_output, arrays, example.options)
    for name, original in originals.items():
        np.testing.assert_array_equal(on.numpy(arrays[name]), original, err_msg=name)
    np.testing.assert_array_equal(on.numpy(grad_output), grad_copy, err_msg="grad_output")


# -- the layer ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("operator", [operator for operator in registry.OPERATORS if operator.module],
                         ids=lambda operator: operator.name)
def test_the_layer_is_the_differentiable_operator(cpu, operator):
    example = operator.example(np.random.default_rng(120), batch=1, channels=1)
    layer = nn.MODULES[operator.name](**example.options)
    assert isinstance(layer, nn.OperatorModule) and type(layer).__name__ == operator.module
    assert all(f"{name}=" in repr(layer) for name in operator.options)
    arrays = [example.arrays[name] for name in operator.arrays]
    np.testing.assert_array_equal(layer(*arrays).data, operator.call(ops, example.arrays, example.options))


# -- bad arguments --------------------------------------------------------------------------------------

class FakeDeviceArray:
    """A GPU array as ``_backend`` recognises one; any use beyond that check fails the test."""
    __cuda_array_interface__ = {"shape": (1,), "typestr": "<f8", "data": (0, False), "version": 3}

    def __getattr__(self, name):
        raise AssertionError(f"a GPU array was used ({name}) before the mixed kinds were refused")


def given_arrays(operator):
    example = operator.example(np.random.default_rng(0), boxes=(0, 1))
    return example, [name for name in operator.arrays if example.arrays[name] is not None]


def each_given_array():
    return [(operator, name) for operator in registry.OPERATORS for name in given_arrays(operator)[1]]


def ids(case):
    return f"{case[0].name}-{case[1]}" if isinstance(case, tuple) else str(case)


def replaced(example, name, value):
    return dict(example.arrays, **{name: value})


@pytest.mark.parametrize("case", each_given_array(), ids=ids)
def test_an_array_of_the_wrong_kind_of_number_is_refused_naming_it(no_launch, case):
    """Integers where floats belong, floats where integers belong (spatial shapes)."""
    operator, name = case
    example, _ = given_arrays(operator)
    array = example.arrays[name]
    wrong = array.astype(np.float64) if array.dtype.kind in "iu" else array.astype(np.int64)
    with pytest.raises(TypeError, match=name):
        operator.call(ops, replaced(example, name, wrong), example.options)


@OPERATORS
def test_half_precision_features_are_refused_saying_how_to_compute_in_float32(no_launch, operator):
    example, names = given_arrays(operator)
    name = names[0]  # the features
    with pytest.raises(TypeError, match=rf"{name} must be float32 or float64, got float16 .*astype"):
        operator.call(ops, replaced(example, name, example.arrays[name].astype(np.float16)),
                      example.options)


@pytest.mark.parametrize("case", each_given_array(), ids=ids)
def test_an_array_with_a_wrong_number_of_dimensions_is_refused_naming_it(no_launch, case):
    operator, name = case
    example, _ = given_arrays(operator)
    with pytest.raises(ValueError, match=name):
        operator.call(ops, replaced(example, name, example.arrays[name][..., None]), example.options)


def saved_and_gradient(operator, example):
    """What the forward of ``example`` saves for the backward, and a zero ``grad_output``."""
    output, saved = operator.forward_saving(ops, example.arrays, example.options,
                                            operator.wanted(example.arrays))
    return saved, np.zeros(output.shape)


def launches_fail(monkeypatch):
    def fail(*args):
        raise AssertionError("a kernel ran before the arguments were checked")
    monkeypatch.setattr(_backend, "run", fail)
    monkeypatch.setattr(_backend, "launch", fail)


@pytest.mark.parametrize("case", [c for c in each_given_array() if c[1] != c[0].arrays[0]], ids=ids)
def test_a_gpu_array_beside_numpy_ones_is_refused_naming_it(case, monkeypatch):
    """In the forward, and in the backward (where the features may come from ``grad_output``)."""
    operator, name = case
    example, _ = given_arrays(operator)
    saved, grad_output = saved_and_gradient(operator, example)
    launches_fail(monkeypatch)
    with pytest.raises(TypeError, match=f"{name} on GPU"):
        operator.call(ops, replaced(example, name, FakeDeviceArray()), example.options)
    backward_arguments = inspect.signature(operator.backward).parameters
    if name not in backward_arguments:
        return
    with pytest.raises(TypeError, match=f"{name} on GPU") as raised:
        operator.vjp(ops, grad_output, dict(saved, **{name: FakeDeviceArray()}), example.options)
    if operator.arrays[0] not in backward_arguments:  # the backward's features come from grad_output
        assert "grad_output on host" in str(raised.value)


@pytest.mark.parametrize("operator", [operator for operator in registry.OPERATORS
                                      if "rois" in operator.arrays], ids=lambda operator: operator.name)
@pytest.mark.parametrize("batch_index, shown", [(2, "2.0"), (-1, "-1.0"), (-0.5, "-0.5"), (np.nan, "nan"),
                                                (np.inf, "inf")])
def test_a_batch_index_outside_the_batch_is_refused_naming_the_row(no_launch, operator, batch_index, shown):
    example, _ = given_arrays(operator)
    grad_output = np.zeros(operator.output_shape({n: None if a is None else a.shape
                                                  for n, a in example.arrays.items()}, example.options))
    example.arrays["rois"][1, 0] = batch_index
    with pytest.raises(ValueError, match=rf"rois\[1, 0\] = {shown} is not a batch index in \[0, 2\)"):
        operator.call(ops, example.arrays, example.options)
    with pytest.raises(ValueError, match=rf"rois\[1, 0\] = {shown}"):
        operator.vjp(ops, grad_output, example.arrays, example.options)


@OPERATORS
def test_a_gradient_of_the_wrong_shape_is_refused_naming_it(operator, monkeypatch):
    example, _ = given_arrays(operator)
    saved, grad_output = saved_and_gradient(operator, example)
    launches_fail(monkeypatch)
    with pytest.raises(ValueError, match="grad_output"):
        operator.vjp(ops, np.zeros((grad_output.shape[0] + 1,) + grad_output.shape[1:]), saved,
                     example.options)


@OPERATORS
def test_the_output_shape_is_the_outputs(cpu, operator):
    example = operator.example(np.random.default_rng(130))
    shapes = {name: None if a is None else a.shape for name, a in example.arrays.items()}
    assert tuple(operator.output_shape(shapes, example.options)) == operator.call(ops, example.arrays,
                                                                                 example.options).shape
