"""A register transpose of one L x L block (L = 16 float32, 8 float64: one 64-byte
vector per row), for the layout conversions between planar (NCHW) and channels-last
blocks.

Written as LLVM IR through ``numba.extending.intrinsic``: L vector loads, log2(L)
rounds of two-source shuffles, L vector stores (``transpose_rows``: the first m of them,
for blocks cut short by the end of a row; ``transpose_block_n``: masked stores of the
first n elements of each, for the lanes forward kernel's last Q % 16 columns, where
element-wise stores were slower). Numba's loop and SLP vectorizers emit a scalar load
and store per element for the same copy, whether written as an element-wise loop or as
256 scalar locals: much slower.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic


def lanes(dtype):
    """Elements per row of the block: one 64-byte vector."""
    return 64 // dtype.itemsize


def _transposed_rows(context, builder, src_type, sdata, so, ss):
    """The L rows of the transpose of the L x L block at src[so + i*ss + j], as vectors:
    L vector loads, log2(L) rounds of two-source shuffles."""
    L = 16 if src_type.dtype == types.float32 else 8
    vty = ir.VectorType(context.get_value_type(src_type.dtype), L)
    rows = [builder.load(_row(builder, sdata, so, ss, i, vty), align=1) for i in range(L)]
    # round d swaps the off-diagonal d x d blocks of every 2d x 2d block, i.e. bit d of
    # the row and column indices; after all rounds element (i, j) sits at (j, i)
    d_ = 1
    while d_ < L:
        for i in range(L):
            if i & d_:
                continue
            a, b = rows[i], rows[i | d_]
            lo = [j if not j & d_ else L + j - d_ for j in range(L)]
            hi = [j + d_ if not j & d_ else L + j for j in range(L)]
            mask = ir.VectorType(ir.IntType(32), L)
            rows[i] = builder.shuffle_vector(a, b, ir.Constant(mask, lo))
            rows[i | d_] = builder.shuffle_vector(a, b, ir.Constant(mask, hi))
        d_ *= 2
    return rows, vty


def _row(builder, data, off, stride, i, vty):
    """Pointer to the vector at data[off + i*stride]."""
    at = builder.add(off, builder.mul(ir.Constant(ir.IntType(64), i), stride))
    return builder.bitcast(builder.gep(data, [at]), vty.as_pointer())


def _float_arrays(src, dst):
    return (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == dst.dtype and src.dtype in (types.float32, types.float64))


def _args64(context, builder, signature, args, positions):
    """The integer arguments at ``positions`` as int64 values."""
    return [context.cast(builder, args[i], signature.args[i], types.int64) for i in positions]


def _store_rows(context, builder, signature, args, m_=None, n_=None):
    """Codegen of the transposes: all L rows stored, or those j < m_, or the first n_
    elements of each (int64 values)."""
    so_, ss_, do_, ds_ = _args64(context, builder, signature, args, (1, 2, 4, 5))
    sdata = context.make_array(signature.args[0])(context, builder, args[0]).data
    ddata = context.make_array(signature.args[3])(context, builder, args[3]).data
    rows, vty = _transposed_rows(context, builder, signature.args[0], sdata, so_, ss_)
    L = len(rows)
    if n_ is not None:
        # lanes i < n of each row: llvm.masked.store (a vmovups with a k-mask)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        nv = builder.insert_element(ir.Constant(ir.VectorType(i64, L), None), n_,
                                    ir.Constant(i32, 0))
        nv = builder.shuffle_vector(nv, nv, ir.Constant(ir.VectorType(i32, L), [0] * L))
        keep = builder.icmp_signed("<", ir.Constant(ir.VectorType(i64, L), list(range(L))), nv)
        def at(j):                                  # element pointer to row j
            return builder.gep(ddata, [builder.add(do_, builder.mul(ir.Constant(i64, j), ds_))])

        fnty = ir.FunctionType(ir.VoidType(), [vty, at(0).type, i32, keep.type])
        store = cgutils.get_or_insert_function(
            builder.module, fnty, f"llvm.masked.store.v{L}f{512 // L}.p0")
        for j, v in enumerate(rows):
            builder.call(store, [v, at(j), ir.Constant(i32, 1), keep])
        return context.get_dummy_value()
    for j, v in enumerate(rows):
        if m_ is None:
            builder.store(v, _row(builder, ddata, do_, ds_, j, vty), align=1)
            continue
        with builder.if_then(builder.icmp_signed("<", ir.Constant(ir.IntType(64), j), m_)):
            builder.store(v, _row(builder, ddata, do_, ds_, j, vty), align=1)
    return context.get_dummy_value()


@intrinsic
def transpose_block(typingctx, src, so, ss, dst, do, ds):
    """dst[do + j*ds + i] = src[so + i*ss + j] for i, j < L (1-D arrays of one float
    dtype; offsets and strides in elements, unchecked: the caller keeps them inside)."""
    if not _float_arrays(src, dst):
        return None
    return types.void(src, so, ss, dst, do, ds), (
        lambda context, builder, signature, args:
        _store_rows(context, builder, signature, args, None))


def _partial(name, which):
    """An intrinsic ``(src, so, ss, dst, do, ds, count)``: ``transpose_block`` storing part
    of the block (``which``: "n_" the first count elements of each row, "m_" the first
    count rows); all L rows of the source block are read."""
    def typer(typingctx, src, so, ss, dst, do, ds, count):
        if not _float_arrays(src, dst):
            return None

        def codegen(context, builder, signature, args):
            c = context.cast(builder, args[6], signature.args[6], types.int64)
            return _store_rows(context, builder, signature, args, **{which: c})

        return types.void(src, so, ss, dst, do, ds, count), codegen

    typer.__name__ = typer.__qualname__ = name           # numba keys intrinsics by name
    return intrinsic(typer)


#: dst[do + j*ds + i] = src[so + i*ss + j] for j < L, i < n (<= L), by masked vector
#: stores: the last block of a row shorter than L
transpose_block_n = _partial("transpose_block_n", "n_")
#: the same for the rows j < m (<= L) of dst, all columns: blocks cut short by a row end
transpose_rows = _partial("transpose_rows", "m_")
