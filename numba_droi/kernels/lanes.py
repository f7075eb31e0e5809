"""Blocks of ``LANES`` contiguous channels in vector registers (cpu only).

Numba leaves LLVM's SLP vectoriser off, and its loop vectoriser takes 32 float32 channels a step: a
loop over a block of 16 channels (DCNv3's and DCNv4's groups) then runs in its 4-wide remainder,
after a test of whether the arrays overlap, each time. These intrinsics do one block of ``LANES``
channels of rule B2 with vectors of ``LANES`` values instead: the scalar loops' operations in their
order (``b2_combine``'s), so the same bits, lane by lane. Their arrays are C-contiguous, of one
floating dtype; ``column`` is the block's first channel, and the block must lie inside the rows.
"""
import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

LANES = 16


def _vector_at(context, builder, array_type, array, indices):
    """A pointer to ``LANES`` values of ``array`` from the element at ``indices`` (``(value, type)``
    pairs) on, as a vector."""
    data = context.make_array(array_type)(context, builder, array)
    indices = [context.cast(builder, value, value_type, types.intp) for value, value_type in indices]
    pointer = cgutils.get_item_pointer(context, builder, array_type, data, indices, wraparound=False)
    vector = ir.VectorType(context.get_value_type(array_type.dtype), LANES)
    return builder.bitcast(pointer, vector.as_pointer())


def _load(builder, pointer, dtype):
    return builder.load(pointer, align=dtype.bitwidth // 8)  # aligned to an element only


def _add_into(builder, pointer, increment, dtype):
    """``*pointer += increment``, lane by lane."""
    builder.store(builder.fadd(_load(builder, pointer, dtype), increment), pointer, align=dtype.bitwidth // 8)


def _splat(builder, value):
    """``value`` in every lane."""
    vector = ir.VectorType(value.type, LANES)
    one = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


def _tree_sum(builder, vector):
    """The sum of a vector's lanes: halves added until one is left."""
    width = vector.type.count
    while width > 1:
        width //= 2
        halves = [builder.shuffle_vector(vector, ir.Constant(vector.type, ir.Undefined),
                                         ir.Constant(ir.VectorType(ir.IntType(32), width),
                                                     list(range(first, first + width))))
                  for first in (0, width)]
        vector = builder.fadd(*halves)
    return builder.extract_element(vector, ir.Constant(ir.IntType(32), 0))


def _corner_weights(context, builder, dtype, ly, lx):
    """``b2_combine``'s weights of the corners ``ll, lh, hl, hh`` from the fractions ``(value,
    type)``, scalars computed in its order."""
    ly, lx = (context.cast(builder, value, value_type, dtype) for value, value_type in (ly, lx))
    one = context.get_constant(dtype, 1)
    hy = builder.fsub(one, ly)
    hx = builder.fsub(one, lx)
    return builder.fmul(hy, hx), builder.fmul(hy, lx), builder.fmul(ly, hx), builder.fmul(ly, lx)


def _corners_at(context, builder, array_type, array, rows, column):
    """Pointers to the block of ``LANES`` channels from ``column`` of each of ``rows`` of a 2-d array
    (all ``(value, type)``)."""
    return [_vector_at(context, builder, array_type, array, [row, column]) for row in rows]


def _float_arrays(*arrays_and_dimensions):
    dtype = arrays_and_dimensions[0][0].dtype
    return isinstance(dtype, types.Float) and all(
        isinstance(a, types.Array) and a.layout == "C" and a.dtype == dtype and a.ndim == ndim
        for a, ndim in arrays_and_dimensions)


@intrinsic
def lanes_b2_add(typingctx, total, start, slab, ll, lh, hl, hh, column, ly, lx, weight):
    """``total[start + i] += weight * b2_combine(slab[ll, column + i], slab[lh, column + i], slab[hl,
    column + i], slab[hh, column + i], ly, lx)`` for ``i < LANES`` (``total`` 1-d, ``slab`` 2-d)."""
    if not _float_arrays((total, 1), (slab, 2)):
        return None
    dtype = total.dtype

    def codegen(context, builder, signature, args):
        typed = list(zip(args, signature.args))
        corners = _corners_at(context, builder, slab, args[2], typed[3:7], typed[7])
        combined = None
        for corner, corner_weight in zip(corners, _corner_weights(context, builder, dtype, *typed[8:10])):
            term = builder.fmul(_splat(builder, corner_weight), _load(builder, corner, dtype))
            combined = term if combined is None else builder.fadd(combined, term)
        weight = context.cast(builder, args[10], signature.args[10], dtype)
        _add_into(builder, _vector_at(context, builder, total, args[0], [typed[1]]),
                  builder.fmul(_splat(builder, weight), combined), dtype)
        return context.get_dummy_value()
    return types.none(total, start, slab, ll, lh, hl, hh, column, ly, lx, weight), codegen


@intrinsic
def lanes_b2_scatter(typingctx, grads, ll, lh, hl, hh, column, grad_row, start, ly, lx, weight):
    """``g = weight * grad_row[start + i]`` added into the four corner rows of ``grads`` (2-d) with
    ``b2_combine``'s weights: ``grads[ll, column + i] += hy * hx * g``, then ``lh`` (``hy * lx``),
    ``hl`` (``ly * hx``) and ``hh`` (``ly * lx``), for ``i < LANES``; the rows must differ."""
    if not _float_arrays((grads, 2), (grad_row, 1)):
        return None
    dtype = grads.dtype

    def codegen(context, builder, signature, args):
        typed = list(zip(args, signature.args))
        gradient = _load(builder, _vector_at(context, builder, grad_row, args[6], [typed[7]]), dtype)
        weight = context.cast(builder, args[10], signature.args[10], dtype)
        g = builder.fmul(_splat(builder, weight), gradient)
        corners = _corners_at(context, builder, grads, args[0], typed[1:5], typed[5])
        for corner, corner_weight in zip(corners, _corner_weights(context, builder, dtype, *typed[8:10])):
            _add_into(builder, corner, builder.fmul(_splat(builder, corner_weight), g), dtype)
        return context.get_dummy_value()
    return types.none(grads, ll, lh, hl, hh, column, grad_row, start, ly, lx, weight), codegen


@intrinsic
def lanes_corner_sums(typingctx, grad_row, start, values, ll, lh, hl, hh, column):
    """``(sum_i g_i * values[ll, column + i], ... lh, hl, hh)`` over ``i < LANES``, ``g_i =
    grad_row[start + i]``: the products added in a tree, not in order (for sums that may be
    reassociated)."""
    if not _float_arrays((grad_row, 1), (values, 2)):
        return None
    dtype = grad_row.dtype

    def codegen(context, builder, signature, args):
        typed = list(zip(args, signature.args))
        gradient = _load(builder, _vector_at(context, builder, grad_row, args[0], [typed[1]]), dtype)
        corners = _corners_at(context, builder, values, args[2], typed[3:7], typed[7])
        sums = [_tree_sum(builder, builder.fmul(gradient, _load(builder, corner, dtype)))
                for corner in corners]
        return context.make_tuple(builder, signature.return_type, sums)
    return types.UniTuple(dtype, 4)(grad_row, start, values, ll, lh, hl, hh, column), codegen


if numba.config.DISABLE_JIT:  # an intrinsic has no Python form: the same operations in NumPy
    def _weights(ly, lx):
        hy, hx = 1 - ly, 1 - lx
        return hy * hx, hy * lx, ly * hx, ly * lx

    def lanes_b2_add(total, start, slab, ll, lh, hl, hh, column, ly, lx, weight):  # noqa: F811
        block = slice(column, column + LANES)
        w_ll, w_lh, w_hl, w_hh = _weights(ly, lx)
        total[start:start + LANES] += weight * (w_ll * slab[ll, block] + w_lh * slab[lh, block]
                                                + w_hl * slab[hl, block] + w_hh * slab[hh, block])

    def lanes_b2_scatter(grads, ll, lh, hl, hh, column, grad_row, start, ly, lx, weight):  # noqa: F811
        g = weight * grad_row[start:start + LANES]
        for row, corner_weight in zip((ll, lh, hl, hh), _weights(ly, lx)):
            grads[row, column:column + LANES] += corner_weight * g

    def lanes_corner_sums(grad_row, start, values, ll, lh, hl, hh, column):  # noqa: F811
        g = grad_row[start:start + LANES]
        return tuple(np.sum(g * values[row, column:column + LANES]) for row in (ll, lh, hl, hh))
