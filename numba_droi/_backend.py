"""Targets: which arrays run where, how kernels are compiled for each target, and how they launch.

This is the only module that imports ``numba.cuda`` or ``cupy``. Everything else asks it.

* **cpu**: NumPy arrays; kernel bodies compiled with ``numba.njit``; the cpu drivers are Python
  functions that run compiled loops over slices of their work on this module's threads
  (``parallel_for``).
* **cuda**: CuPy arrays, or any array exposing ``__cuda_array_interface__``; ``numba.cuda`` kernels
  launched on CuPy's current stream. Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in Numba's
  simulator, and ``target("cuda")`` routes NumPy arrays to them.
"""
import ast
import collections
import contextlib
import functools
import inspect
import itertools
import math
import os
import textwrap
import threading
import warnings

import numba
import numpy as np
from llvmlite import ir
from numba import cuda
from numba.core import cgutils, types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload, register_jitable

try:
    import cupy
except ImportError:  # CuPy is optional: the cpu target needs only NumPy.
    cupy = None

SIMULATED = bool(numba.cuda.config.ENABLE_CUDASIM)
TARGETS = ("cpu", "cuda")

_numpy_target = "cpu"

CUDA_THREADS = 256
SIMULATOR_THREADS = 16  # the simulator runs one OS thread per CUDA thread
MAX_BLOCKS = 65535  # kernels are grid-stride loops, so the grid needn't cover every element


def gpu_available():
    """True when a real GPU can run the cuda target (CuPy installed, a device present)."""
    if SIMULATED or cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, or no device: cupy raises its own CUDARuntimeError
        return False


def available_targets():
    return ("cpu", "cuda") if SIMULATED or gpu_available() else ("cpu",)


def gpu_description():
    """The current GPU as a dict (name, compute capability, memory, CUDA driver and runtime versions),
    or None when there is none."""
    if not gpu_available():
        return None
    runtime = cupy.cuda.runtime
    device = cupy.cuda.Device()
    properties = runtime.getDeviceProperties(device.id)
    name = properties["name"]
    return {"name": name.decode() if isinstance(name, bytes) else name,
            "compute capability": f"{properties['major']}.{properties['minor']}",
            "memory": f"{properties['totalGlobalMem'] / 2 ** 30:.1f} GiB",
            "CUDA driver": _cuda_version(runtime.driverGetVersion()),
            "CUDA runtime": _cuda_version(runtime.runtimeGetVersion())}


def _cuda_version(number):
    """CUDA's version number (1000 * major + 10 * minor) as 'major.minor'."""
    return f"{number // 1000}.{number % 1000 // 10}"


@contextlib.contextmanager
def target(name):
    """Run NumPy arrays on target ``name`` inside the block.

    ``"cuda"`` for NumPy arrays needs the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``); device arrays
    always run on the cuda target.
    """
    global _numpy_target
    if name not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {name!r}")
    if name == "cuda" and not SIMULATED:
        raise RuntimeError("NumPy arrays run on the cuda target only under NUMBA_ENABLE_CUDASIM=1; "
                           "pass CuPy arrays to use the GPU")
    previous, _numpy_target = _numpy_target, name
    try:
        yield
    finally:
        _numpy_target = previous


def is_device_array(array):
    return hasattr(array, "__cuda_array_interface__")


def target_of(*arrays, names=None):
    """The target of ``arrays`` (None entries ignored); TypeError if they live in different places."""
    kinds = [(is_device_array(a), name) for a, name in zip(arrays, names or [None] * len(arrays))
             if a is not None]
    if any(on_device != kinds[0][0] for on_device, _ in kinds):
        where = ", ".join(f"{name or 'argument'} on {'GPU' if d else 'host'}" for d, name in kinds)
        raise TypeError(f"arrays must all be NumPy arrays or all be GPU arrays: {where}")
    return "cuda" if kinds and kinds[0][0] else _numpy_target


def array_module(array):
    """numpy or cupy, whichever holds ``array``; GPU arrays of other libraries are viewed as CuPy."""
    if not is_device_array(array):
        return np
    if cupy is None:
        raise TypeError(f"{type(array).__name__} is a GPU array, which needs CuPy installed")
    return cupy


def erf(array):
    """The error function of each element of a NumPy or CuPy array (SciPy's or CuPy's)."""
    if array_module(array) is np:
        from scipy.special import erf as function
    else:
        from cupyx.scipy.special import erf as function
    return function(array)


def as_array(array):
    """``array`` as a NumPy or CuPy array (zero-copy for GPU arrays of other libraries)."""
    if is_device_array(array) and not (cupy is not None and isinstance(array, cupy.ndarray)):
        return array_module(array).asarray(array)
    return array if isinstance(array, np.ndarray) or is_device_array(array) else np.asarray(array)


def to_numpy(array):
    return cupy.asnumpy(array) if cupy is not None and isinstance(array, cupy.ndarray) else np.asarray(array)


# -- compiling -------------------------------------------------------------------------------------
#
# Helpers and kernel bodies are plain Python functions marked ``jitable``: callable from Python (which
# is how the simulator runs them), from ``numba.njit`` drivers and from ``numba.cuda`` kernels alike.
# Where the targets must differ, a ``jitable`` function holds the cuda version and ``for_cpu`` gives its
# cpu version.

jitable = register_jitable


def for_cpu(generic):
    """Register the decorated function as ``generic``'s implementation on the cpu target."""
    def register(cpu_version):
        overload(generic, target="cpu", strict=False)(lambda *args: cpu_version)
        return cpu_version
    return register


def jitable_inlined_on_cpu(fn=None, *, by_numba=False):
    """``jitable``, and inlined into the cpu functions that call it: for small helpers called once per
    element in cpu loops, where the call, with the reference counting of its array arguments (atomic
    adds that parallel threads contend for), costs more than the work. The helper is compiled without
    reference counting and LLVM inlines it, which costs little to compile; it must then neither
    allocate nor return an array (a view included). ``by_numba=True`` inlines it in Numba's IR instead
    (much slower to compile, at every call site, and again at each level of by_numba helpers
    calling each other): for helpers that return views, and for the channels-last inner loops, which
    LLVM vectorises better that way, called from the LLVM-inlined helpers that use them. The cuda
    target calls it as any ``jitable`` (LLVM inlines device functions)."""
    if fn is None:
        return functools.partial(jitable_inlined_on_cpu, by_numba=by_numba)
    jitable(fn)
    options = dict(inline="always") if by_numba else dict(jit_options={"_nrt": False, "forceinline": True})
    overload(fn, target="cpu", strict=False, **options)(lambda *args: fn)
    return fn


def cpu_function(fn=None, *, reassociate=False):
    """Compile a cpu function: serial, without the GIL, cached on disk. The cpu drivers call them;
    ``parallel_for`` runs those whose first two arguments are ``start, stop`` (a slice of a loop's
    iterations) on several threads. ``reassociate`` lets the compiler reorder the function's
    floating-point sums (the loops of a dot product are then vectorised), so that its results equal
    the body's to rounding only (``@cpu_function(reassociate=True)``).

    What is compiled is ``fn`` with its array arguments replaced by ``_borrowed`` views on entry:
    without a reference count, so that the views it takes of them in its loops (a row, a plane) cost
    no atomic count updates, which threads working on the same arrays would contend for."""
    if fn is None:
        return functools.partial(cpu_function, reassociate=reassociate)
    compiled = _cached(lambda cache: numba.njit(nogil=True, cache=cache, error_model="numpy",
                                                fastmath={"reassoc"} if reassociate else False),
                       _borrowing_its_arguments(fn))
    CPU_FUNCTIONS[f"{fn.__module__}.{fn.__qualname__}"] = compiled
    return compiled


def _borrowing_its_arguments(fn):
    """``fn`` made again from its source with ``name = _borrowed(name)`` for each argument first: the
    same file, lines and module globals (so that Numba's cache and tracebacks point at the source)."""
    source = textwrap.dedent(inspect.getsource(fn))
    tree = ast.parse(source)
    definition = tree.body[0]
    definition.decorator_list = []
    arguments = definition.args
    if arguments.vararg or arguments.kwarg or arguments.kwonlyargs or arguments.defaults:
        raise TypeError(f"cpu function {fn.__name__} must take plain positional arguments")
    first = definition.body[0]
    docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    borrow = [ast.parse(f"{a.arg} = _borrowed({a.arg})").body[0] for a in arguments.args]
    at = definition.body[1 if docstring else 0]
    for statement in borrow:
        ast.copy_location(statement, at)
        for node in ast.walk(statement):
            ast.copy_location(node, at)
    definition.body[1 if docstring else 0:1 if docstring else 0] = borrow
    ast.increment_lineno(tree, fn.__code__.co_firstlineno - 1)
    fn.__globals__.setdefault("_borrowed", _borrowed)  # the module's globals, which Numba reads at compile
    namespace = {}
    exec(compile(tree, inspect.getsourcefile(fn), "exec"), fn.__globals__, namespace)
    borrowing = functools.update_wrapper(namespace[fn.__name__], fn, updated=())
    del borrowing.__wrapped__
    return borrowing


@intrinsic
def _borrowed(typingctx, value):
    """An array as a view without a reference count (whose views have none either), valid while the
    array lives; any other value as it is."""
    def codegen(context, builder, signature, args):
        if not isinstance(value, types.Array):
            return impl_ret_borrowed(context, builder, signature.return_type, args[0])
        array = context.make_array(value)(context, builder, args[0])
        view = context.make_array(value)(context, builder)
        for field in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(view, field, getattr(array, field))
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()
    return value(value), codegen


if numba.config.DISABLE_JIT:  # an intrinsic has no Python form
    def _borrowed(value):
        return value


# Every cpu function, by module and name: what ``warmup`` compiles and the tests count.
CPU_FUNCTIONS = {}


def _cached(decorator, fn):
    """``decorator(cache=True)(fn)``, compiling to an on-disk cache that recovers from damaged files
    (``_recovering``); without one (a warning, once) where Numba finds no writable cache
    directory (a read-only install without a writable home or NUMBA_CACHE_DIR), so that the package
    still imports and runs."""
    try:
        compiled = decorator(True)(fn)
    except RuntimeError as error:
        if "no locator available" not in str(error):
            raise
        global _warned_about_cache
        if not _warned_about_cache:
            _warned_about_cache = True
            warnings.warn("numba_droi: no writable directory for Numba's kernel cache (set NUMBA_CACHE_DIR "
                          "to one); kernels compile again in every process", RuntimeWarning, stacklevel=3)
        return decorator(False)(fn)
    cache = getattr(compiled, "_cache", None)
    if cache is not None and not isinstance(cache, numba.core.caching.NullCache):
        cache.__class__ = _recovering(type(cache))
        if isinstance(compiled, numba.core.registry.CPUDispatcher):
            _compile_in_turn(compiled)
    return compiled


def _compile_in_turn(dispatcher):
    """Make processes that share the on-disk cache compile ``dispatcher`` in turn (a file lock beside
    its cache index): the first compiles and saves, the others wait and then load what it saved,
    instead of each compiling it again (four processes starting together on an empty cache would
    otherwise each compile everything, on the same cores)."""
    compile_for_args = dispatcher._compile_for_args  # what Numba calls when no compiled version fits

    def in_turn(*args, **kwargs):
        with _file_lock(dispatcher._cache._cache_file._index_path + ".lock"):
            return compile_for_args(*args, **kwargs)
    dispatcher._compile_for_args = in_turn


@contextlib.contextmanager
def _file_lock(path):
    """An exclusive lock of the file ``path`` held by this process inside the block (none where files
    cannot be locked: no fcntl, a read-only directory)."""
    try:
        import fcntl
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle = open(path, "a")
    except (ImportError, OSError):
        yield
        return
    with handle:  # closing the file releases the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


_warned_about_cache = False


@functools.cache
def _recovering(cache_class):
    """``cache_class`` (Numba's on-disk cache of one function), made to survive damaged files (cut
    short by a full disk or a killed process): an unreadable entry is dropped and the function
    compiled again, an entry that cannot be written is skipped, each with a warning."""
    class RecoveringCache(cache_class):
        def load_overload(self, *args, **kwargs):
            try:
                return super().load_overload(*args, **kwargs)
            except Exception as error:
                warnings.warn(f"numba_droi: the on-disk cache of {self._py_func.__name__} was unreadable "
                              f"({type(error).__name__}: {error}); compiling it again", RuntimeWarning)
                try:
                    self.flush()  # an empty index: the next save writes a good one
                except OSError:
                    pass
                return None

        def save_overload(self, *args, **kwargs):
            try:
                super().save_overload(*args, **kwargs)
            except Exception as error:
                warnings.warn(f"numba_droi: could not write the on-disk cache of {self._py_func.__name__} "
                              f"({type(error).__name__}: {error})", RuntimeWarning)
    RecoveringCache.__name__ = RecoveringCache.__qualname__ = f"Recovering{cache_class.__name__}"
    return RecoveringCache


# -- cpu threads -----------------------------------------------------------------------------------
#
# The cpu drivers run their loops on a pool of Python threads, each calling a compiled function
# (without the GIL) on a slice of the iterations, rather than on Numba's parallel loops: compiling a
# parallel loop costs seconds (its body is typed and compiled twice), and Numba's threading layers
# have their own failure modes (workqueue aborts on calls from two threads, OpenMP's pool does not
# survive a fork).

_threads = max(1, int(numba.config.NUMBA_NUM_THREADS))


def get_num_threads():
    """The number of threads the cpu operators use (default: ``NUMBA_NUM_THREADS``, the cores)."""
    return _threads


def set_num_threads(threads):
    """Use ``threads`` threads for the cpu operators (1: run in the calling thread only)."""
    global _threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    _threads = threads


class _Helpers:
    """Threads that help the calling thread with one ``parallel_for`` at a time: each waits on its
    own lock, which the caller releases to hand it a task (a lock handover wakes a thread faster than
    a queue)."""

    def __init__(self):
        self.busy = threading.Lock()  # held by the thread whose parallel_for the helpers run
        self.wakes, self.tasks, self.done = [], [], threading.Semaphore(0)

    def run(self, work, helpers):
        """``work()`` in this thread and in ``helpers`` helper threads; the first error raised."""
        while len(self.wakes) < helpers:
            self._start_one()
        errors = []

        def task():
            try:
                work()
            except BaseException as error:  # re-raised in the calling thread
                errors.append(error)
        for i in range(helpers):
            self.tasks[i] = task
            self.wakes[i].release()
        try:
            work()
        finally:
            for _ in range(helpers):
                self.done.acquire()
        if errors:
            raise errors[0]

    def _start_one(self):
        wake = threading.Lock()
        wake.acquire()
        self.wakes.append(wake)
        self.tasks.append(None)
        index = len(self.tasks) - 1
        threading.Thread(target=self._serve, args=(index,), daemon=True, name=f"numba_droi-{index}").start()

    def _serve(self, index):
        while True:
            self.wakes[index].acquire()
            try:
                self.tasks[index]()
            finally:
                self.tasks[index] = None
                self.done.release()


_helpers = _Helpers()


def _forget_helpers():
    """In a forked child the parent's helper threads are gone: start new ones when needed (and a new
    lock of the BLAS limit, which a thread of the parent may have held)."""
    global _helpers, _blas_lock
    _helpers = _Helpers()
    _blas_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


def parallel_for(loop, iterations, *args):
    """Run ``loop(start, stop, *args)`` (a ``cpu_function``) over ``0 <= i < iterations`` in slices on
    ``get_num_threads()`` threads, the calling thread among them; return when all are done. The
    iterations must write disjoint elements (the cpu target has no atomics). While another thread's
    ``parallel_for`` has the helper threads, the calling thread runs all the slices itself."""
    threads = min(_threads, iterations)
    if threads <= 1 or not _helpers.busy.acquire(blocking=False):
        if iterations > 0:
            _call(loop, 0, iterations, args)
        return
    try:
        bounds = _guided_slices(iterations, threads)
        chunks = len(bounds) - 1
        taken = itertools.count()  # next() is atomic under the GIL

        def work():
            while (j := next(taken)) < chunks:
                _call(loop, bounds[j], bounds[j + 1], args)
        _helpers.run(work, threads - 1)
    finally:
        _helpers.busy.release()


def _guided_slices(iterations, threads):
    """Slice bounds ``[0, ..., iterations]`` for threads that take slices in turn: each slice half a
    thread's share of what is left, so that the first are large and the last small (a thread that
    started late, or runs slower on a busy machine, finishes about with the others), but at least
    an eighth of a thread's share (each slice costs a call, and a turn of the GIL)."""
    smallest = -(-iterations // (8 * threads))
    bounds = [0]
    while bounds[-1] < iterations:
        left = iterations - bounds[-1]
        bounds.append(bounds[-1] + min(left, max(smallest, -(-left // (2 * threads)))))
    return bounds


def _call(loop, start, stop, args):
    try:
        loop(start, stop, *args)
    except MemoryError as error:
        raise MemoryError(f"{loop.__name__} could not allocate its working arrays ({error}): the inputs "
                          "are too large for the memory available") from error


# -- matrix products on the cpu ---------------------------------------------------------------------
#
# A BLAS library's thread pool (OpenBLAS's, MKL's) spin-waits for a while after each product, holding
# cores that another pool in the process (torch's OpenMP threads, this module's helpers) then lacks,
# and the reverse. Interleaved with torch's dense convolutions, deform_conv2d's NumPy products on
# OpenBLAS's two threads made both sides several times slower than alone. So the cpu operators'
# products run as slices of rows or columns on this module's threads, each a single-threaded BLAS call
# (NumPy's matmul releases the GIL); the BLAS libraries are limited to one thread (threadpoolctl) only
# while one runs.

_blas = {"controller": None, "limiter": None, "users": 0}
_blas_lock = threading.Lock()


@contextlib.contextmanager
def _single_threaded_blas():
    """The process's BLAS libraries on one thread in this context (nested and concurrent uses share
    one limit: the first sets it, the last restores the libraries' own)."""
    with _blas_lock:
        if _blas["users"] == 0:
            if _blas["controller"] is None:
                import threadpoolctl
                _blas["controller"] = threadpoolctl.ThreadpoolController()
            _blas["limiter"] = _blas["controller"].limit(limits=1, user_api="blas")
        _blas["users"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas["users"] -= 1
            if _blas["users"] == 0:
                _blas["limiter"].restore_original_limits()
                _blas["limiter"] = None


MATMUL_SLICES = 8  # at most, per output matrix
MATMUL_SLICE = 128  # rows or columns, at least


def matmul(a, b, out, add=False):
    """``out[...] = a @ b`` (or ``+=`` with ``add``), broadcast as ``matmul`` does, ``out`` at least
    2-d. CuPy arrays: CuPy's matmul. NumPy arrays: each output matrix in up to ``MATMUL_SLICES``
    slices of at least ``MATMUL_SLICE`` rows (or columns, where the matrix has more of them) on
    ``get_num_threads()`` threads, each a single-threaded BLAS product. The slices depend on the
    shapes only, so the results do not depend on the number of threads."""
    if array_module(out) is not np:
        if add:
            out += cupy.matmul(a, b)
        else:
            cupy.matmul(a, b, out=out)
        return
    matrices = out.shape[:-2]
    a = np.broadcast_to(a, matrices + a.shape[-2:])
    b = np.broadcast_to(b, matrices + b.shape[-2:])
    by_columns = out.shape[-1] > out.shape[-2]
    slices = max(1, min(MATMUL_SLICES, out.shape[-1 if by_columns else -2] // MATMUL_SLICE))
    with _single_threaded_blas():
        parallel_for(_matmul_slices, math.prod(matrices) * slices, a, b, out, add, by_columns, slices)


def _matmul_slices(start, stop, a, b, out, add, by_columns, slices):
    for unit in range(start, stop):
        matrix, part = divmod(unit, slices)
        index = np.unravel_index(matrix, out.shape[:-2])
        size = out.shape[-1 if by_columns else -2]
        cut = slice(size * part // slices, size * (part + 1) // slices)
        a_part, b_part = (a[index], b[index][:, cut]) if by_columns else (a[index][cut], b[index])
        out_part = out[index][:, cut] if by_columns else out[index][cut]
        if add:
            out_part += np.matmul(a_part, b_part)
        else:
            np.matmul(a_part, b_part, out=out_part)


# -- cpu memory order ------------------------------------------------------------------------------
#
# A cpu driver that gives each parallel iteration a channel visits that channel's planes at the
# windows of the boxes, in no order: each first touch of a cache line (or of a fresh page of a zeroed
# gradient) then waits on memory with nothing to overlap it. Going through the planes in order first
# lets the hardware prefetcher stream them into the cache, after which the boxes' reads hit it: 1.4
# to 2.2x faster for the PS operators.

CACHE_LINE_BYTES = 64


@intrinsic
def _read_kept(typingctx, array, index):
    """Read ``array[index]`` of a 1-d array, and keep the read though its value is unused (an empty
    asm statement takes it, which the compiler may not drop)."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, data, [args[1]],
                                           wraparound=False)
        byte = builder.load(builder.bitcast(pointer, ir.IntType(8).as_pointer()))
        builder.asm(ir.FunctionType(ir.VoidType(), [byte.type]), "", "r", [byte], side_effect=True)
        return context.get_dummy_value()
    return types.none(array, index), codegen


if numba.config.DISABLE_JIT:  # an intrinsic has no Python form
    def _read_kept(array, index):
        pass


@jitable
def read_in_order(plane):
    """Bring a 1-d array into the cache: one element of each cache line, first to last."""
    for i in range(0, plane.size, max(CACHE_LINE_BYTES // plane.itemsize, 1)):
        _read_kept(plane, i)


@jitable
def zero_in_order(plane):
    """Zero a 1-d array first to last: for a gradient plane that is zero already, its pages and lines
    are then in the cache before random adds."""
    plane[:] = 0


class CudaKernel(collections.namedtuple("CudaKernel", "kernel spec function")):
    """A cuda kernel (``kernel``), its argument spec (see ``cuda_kernel``) and the plain Python
    ``function`` it was compiled from, which ``kernel_on_cpu`` compiles for the cpu."""


# Every cuda kernel, so that tools (the PTX tests, the PTX report) can compile each one without a GPU
# and the tests can run each one on the cpu: name -> CudaKernel.
CUDA_KERNELS = {}


def cuda_kernel(argument_spec):
    """Compile the decorated grid-stride function as a cuda kernel, recorded in ``CUDA_KERNELS``.

    ``argument_spec`` gives each argument's type, space-separated: ``F<d>`` a C-contiguous d-dim array
    of the kernel's float dtype, ``I<d>`` the same of int64, ``J<d>`` of int32, ``f`` a scalar of the
    float dtype, ``i`` an int64, ``b`` a bool.
    """
    def compile_kernel(fn):
        kernel = _cached(lambda cache: cuda.jit(cache=cache), fn)
        CUDA_KERNELS[fn.__name__] = CudaKernel(kernel, argument_spec, fn)
        return kernel
    return compile_kernel


def kernel_argument_types(argument_spec, dtype):
    """Numba types of a kernel's arguments for float ``dtype``, as ``argument_spec`` describes them."""
    float_type = numba.from_dtype(np.dtype(dtype))
    scalars = {"f": float_type, "i": numba.int64, "b": numba.boolean}
    types = []
    for token in argument_spec.split():
        if token in scalars:
            types.append(scalars[token])
        else:
            element = {"F": float_type, "I": numba.int64, "J": numba.int32}[token[0]]
            types.append(numba.types.Array(element, int(token[1:]), "C"))
    return tuple(types)


class _PythonKernelAPI:
    """What the helpers ask of ``numba.cuda``, in plain Python (NUMBA_DISABLE_JIT=1, where cpu drivers
    run as Python and call the helpers' generic versions): one thread that walks the whole grid-stride
    loop, plain adds."""

    class atomic:
        @staticmethod
        def add(array, index, value):
            array[index] += value

    @staticmethod
    def grid(ndim):
        return 0

    @staticmethod
    def gridsize(ndim):
        return 1


if SIMULATED:
    from numba.cuda.simulator.kernel import _get_kernel_context

    class _SimulatedKernelAPI:
        """The simulator swaps in a per-launch fake ``cuda`` module only in the globals of functions
        it was handed; this forwards to that module for helpers in this module (outside a simulated
        launch, which only plain Python cpu drivers reach, to ``_PythonKernelAPI``)."""

        def __getattr__(self, name):
            context = _get_kernel_context()
            return getattr(_PythonKernelAPI if context is None else context, name)

    kernel_api = _SimulatedKernelAPI()
elif numba.config.DISABLE_JIT:
    kernel_api = _PythonKernelAPI
else:
    kernel_api = cuda


@jitable
def thread_start():
    """First element of this CUDA thread in a grid-stride loop."""
    return kernel_api.grid(1)


@jitable
def thread_stride():
    """Step of a grid-stride loop: the number of threads in the grid."""
    return kernel_api.gridsize(1)


# On the cpu a grid-stride kernel is one thread that walks the whole loop (``kernel_on_cpu``).

@for_cpu(thread_start)
def _thread_start_cpu():
    return 0


@for_cpu(thread_stride)
def _thread_stride_cpu():
    return 1


# On the cpu, math.floor and math.ceil of a float32 are calls into the C library (a float64's, and
# np.floor's and np.ceil's of both, are one instruction): in a loop over samples, the calls and the
# registers saved around them cost more than the rest of a sample's position.

@jitable
def floor_int(x):
    """``int(math.floor(x))``."""
    return int(math.floor(x))


@for_cpu(floor_int)
def _floor_int_cpu(x):
    return int(np.floor(x))


@jitable
def ceil_int(x):
    """``int(math.ceil(x))``."""
    return int(math.ceil(x))


@for_cpu(ceil_int)
def _ceil_int_cpu(x):
    return int(np.ceil(x))


@jitable
def add_4d(array, i0, i1, i2, i3, value, atomic=True):
    """``array[i0, i1, i2, i3] += value``: atomically on the GPU, unless ``atomic`` is False, for
    kernels in which one thread owns every element it adds to (the deterministic backwards)."""
    if atomic:
        kernel_api.atomic.add(array, (i0, i1, i2, i3), value)
    else:
        array[i0, i1, i2, i3] += value


@for_cpu(add_4d)
def _add_4d_cpu(array, i0, i1, i2, i3, value, atomic=True):
    # A plain add: cpu drivers partition their work so that no two parallel iterations write the
    # same element.
    array[i0, i1, i2, i3] += value


@jitable
def add_2d(array, i0, i1, value, atomic=True):
    """``array[i0, i1] += value``, as ``add_4d``."""
    if atomic:
        kernel_api.atomic.add(array, (i0, i1), value)
    else:
        array[i0, i1] += value


@for_cpu(add_2d)
def _add_2d_cpu(array, i0, i1, value, atomic=True):
    array[i0, i1] += value


@jitable
def add_1d(array, i, value, atomic=True):
    """``array[i] += value`` of a 1-d array (a view, such as a column of a larger array), as
    ``add_4d``."""
    if atomic:
        kernel_api.atomic.add(array, i, value)
    else:
        array[i] += value


@for_cpu(add_1d)
def _add_1d_cpu(array, i, value, atomic=True):
    array[i] += value


@functools.cache
def kernel_on_cpu(name):
    """The cuda kernel ``name`` of ``CUDA_KERNELS``, its own source compiled for the cpu and run
    serially: ``thread_start()`` is 0, ``thread_stride()`` 1 and atomic adds are plain adds. Not cached
    on disk (the cuda kernel's cache would share its file names)."""
    return numba.njit(error_model="numpy")(CUDA_KERNELS[name].function)


_cuda_kernels_on_cpu = False


@contextlib.contextmanager
def cuda_kernels_on_cpu():
    """Inside the block, NumPy arrays run on the cuda target, and each cuda kernel launched runs as
    ``kernel_on_cpu``: the cuda kernels' own source, at any size, on a machine without a GPU (the
    simulator, much slower, is for bounds checking)."""
    global _numpy_target, _cuda_kernels_on_cpu
    previous = _numpy_target, _cuda_kernels_on_cpu
    _numpy_target, _cuda_kernels_on_cpu = "cuda", True
    try:
        yield
    finally:
        _numpy_target, _cuda_kernels_on_cpu = previous


# -- launching -------------------------------------------------------------------------------------

def launch(kernel, size, *args):
    """Launch a grid-stride ``kernel`` over ``size`` elements on CuPy's current stream (or, inside
    ``cuda_kernels_on_cpu``, run it on the cpu)."""
    if size == 0:
        return
    if _cuda_kernels_on_cpu:
        kernel_on_cpu(kernel.__name__)(*args)
        return
    threads = SIMULATOR_THREADS if SIMULATED else CUDA_THREADS
    blocks = min(math.ceil(size / threads), 1 if SIMULATED else MAX_BLOCKS)
    if SIMULATED or cupy is None:
        kernel[blocks, threads](*args)
    else:
        stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)
        kernel[blocks, threads, stream](*args)


def run(target_name, kernel, size, *args):
    """Run a kernel of ``target_name`` over ``size`` elements: a cpu driver (a Python function that
    runs compiled loops, see ``parallel_for``) directly, a cuda kernel through ``launch``."""
    if target_name == "cpu":
        if size:
            kernel(*args)
    else:
        launch(kernel, size, *args)


# -- PTX without a GPU -----------------------------------------------------------------------------

def kernel_ptx(name, dtype, cc):
    """PTX of the cuda kernel ``name`` of ``CUDA_KERNELS`` for float ``dtype`` and compute capability
    ``cc`` (a pair such as ``(9, 0)``), compiled without a GPU; not under the simulator."""
    if SIMULATED:
        raise RuntimeError("compiling PTX needs NUMBA_ENABLE_CUDASIM=0: the simulator does not compile")
    kernel = CUDA_KERNELS[name]
    with _stand_in_device(cc):
        ptx, _ = cuda.compile_ptx(kernel.function, kernel_argument_types(kernel.spec, dtype), cc=cc)
    return ptx


@contextlib.contextmanager
def _stand_in_device(cc):
    """Inside the block, numba-cuda's current device is a stand-in of compute capability ``cc``.

    The one place that reaches into numba-cuda's internals. ``cuda.compile_ptx(..., cc=cc)`` needs no
    driver for the kernel itself, but it compiles each device function the kernel calls (our
    ``jitable`` helpers) for ``numba.cuda.dispatcher.get_current_device().compute_capability``, which
    asks the driver (numba-cuda 0.30). That capability steers the helpers' code (float64 atomic adds
    are native from 6.0), so the stand-in must have ``cc``. A numba-cuda without that function, or one
    that asks the driver another way, fails here with a RuntimeError naming its version.
    """
    from importlib.metadata import version
    from unittest import mock

    import numba.cuda.dispatcher as dispatcher
    from numba.cuda.cudadrv.error import CudaSupportError

    numba_cuda = f"numba-cuda {version('numba-cuda')}"
    if not callable(getattr(dispatcher, "get_current_device", None)):
        raise RuntimeError(f"{numba_cuda} has no numba.cuda.dispatcher.get_current_device to stand a "
                           "device in for: compiling PTX without a GPU needs another way on it")
    device = collections.namedtuple("StandInDevice", "compute_capability")(tuple(cc))
    with mock.patch.object(dispatcher, "get_current_device", lambda: device):
        try:
            yield
        except CudaSupportError as error:
            raise RuntimeError(f"{numba_cuda} asked the CUDA driver for a device while compiling PTX, "
                               "past the stand-in for numba.cuda.dispatcher.get_current_device") from error


# -- deterministic algorithms ----------------------------------------------------------------------
#
# The cuda backwards scatter with float atomics, whose order, and so whose rounding, varies from run
# to run. With deterministic algorithms on, each scattering backward runs its ``cuda_deterministic``
# kernel instead: one thread per disjoint part of the gradient (a feature plane), adding in a fixed
# order without atomics. Slower (less parallel), bitwise reproducible. The cpu drivers are
# deterministic by construction (each parallel iteration owns what it writes).

_deterministic = False


def use_deterministic_algorithms(mode):
    """Make every backward bitwise reproducible on the GPU (``mode=True``), or let the cuda backwards
    scatter with atomics (``False``, the default: faster, reproducible only to rounding)."""
    global _deterministic
    _deterministic = bool(mode)


def are_deterministic_algorithms_enabled():
    return _deterministic


@contextlib.contextmanager
def deterministic(mode=True):
    """``use_deterministic_algorithms(mode)`` inside the block, the previous setting after it."""
    previous = _deterministic
    use_deterministic_algorithms(mode)
    try:
        yield
    finally:
        use_deterministic_algorithms(previous)


def scatter_kernel(kernels, target_name, size, owners):
    """``(kernel, size)`` to ``run`` a scattering backward: ``kernels[target_name]`` over ``size``
    elements, or on the cuda target with deterministic algorithms on, ``kernels["cuda_deterministic"]``
    over its ``owners`` threads (the number of parts of the gradient it gives one thread each)."""
    if target_name == "cuda" and _deterministic:
        return kernels["cuda_deterministic"], owners
    return kernels[target_name], size


# -- other libraries' arrays -----------------------------------------------------------------------

def from_dlpack(array, gpu):
    """A NumPy (``gpu=False``) or CuPy (``gpu=True``) array sharing the memory of another library's
    ``array`` (a torch tensor, a JAX array: anything with ``__dlpack__``), zero-copy, via DLPack."""
    if not gpu:
        return np.from_dlpack(array)
    if cupy is None:
        raise TypeError(f"{type(array).__name__} is a GPU array, which needs CuPy installed")
    return cupy.from_dlpack(array)


@contextlib.contextmanager
def external_stream(pointer, device_id):
    """Inside the block, the CUDA stream ``pointer`` (a ``cudaStream_t`` another library owns, such as
    ``torch.cuda.current_stream().cuda_stream``) of device ``device_id`` is CuPy's current stream: our
    kernels launch on it (``launch`` uses CuPy's current stream) and CuPy allocates and computes on it,
    ordered with the other library's work without synchronising. Numba's current device is set to
    ``device_id`` too, so that kernels launch where the arrays are."""
    if cupy is None:
        raise TypeError("GPU arrays need CuPy installed")
    with cupy.cuda.Device(device_id), cuda.gpus[device_id], cupy.cuda.ExternalStream(pointer, device_id):
        yield
