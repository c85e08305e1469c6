"""A register transpose of one L x L block (L = 16 float32, 8 float64: one 64-byte
vector per row), for the layout conversions between planar (NCHW) and channels-last
blocks.

Written as LLVM IR through ``numba.extending.intrinsic``: L vector loads, log2(L)
rounds of two-source shuffles, L vector stores (``transpose_block_n``: masked stores of
the first n elements of each row, for the lanes forward kernel's rows of Q % 16
columns, which element-wise stores had made 1-2% slower on res4 at Q = 14). Numba's loop and SLP vectorizers
emit a scalar load and store per element for the same copy (the element-wise loop,
or 256 scalar locals, measured 4-6x slower on a res3-sized plane).
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic


def lanes(dtype):
    """Elements per row of the block: one 64-byte vector."""
    return 64 // dtype.itemsize


def _codegen(masked):
    """Code of ``transpose_block`` (``masked``: of ``transpose_block_n``)."""

    def codegen(context, builder, signature, args):
        s, so_, ss_, d, do_, ds_ = args[:6]
        i64, i32 = ir.IntType(64), ir.IntType(32)
        ints = signature.args[1:3] + signature.args[4:]
        so_, ss_, do_, ds_, *n_ = (context.cast(builder, v, t, types.int64)
                                   for v, t in zip((so_, ss_, do_, ds_) + tuple(args[6:]), ints))
        sdata = context.make_array(signature.args[0])(context, builder, s).data
        ddata = context.make_array(signature.args[3])(context, builder, d).data
        dtype = signature.args[0].dtype
        L = 16 if dtype == types.float32 else 8
        vty = ir.VectorType(context.get_value_type(dtype), L)

        def row(data, off, stride, i):
            at = builder.add(off, builder.mul(ir.Constant(i64, i), stride))
            return builder.gep(data, [at])

        rows = [builder.load(builder.bitcast(row(sdata, so_, ss_, i), vty.as_pointer()), align=1)
                for i in range(L)]
        # round d swaps the off-diagonal d x d blocks of every 2d x 2d block, i.e. bit d
        # of the row and column indices; after all rounds element (i, j) sits at (j, i)
        d_ = 1
        while d_ < L:
            for i in range(L):
                if i & d_:
                    continue
                a, b = rows[i], rows[i | d_]
                lo = [j if not j & d_ else L + j - d_ for j in range(L)]
                hi = [j + d_ if not j & d_ else L + j for j in range(L)]
                mask = ir.VectorType(i32, L)
                rows[i] = builder.shuffle_vector(a, b, ir.Constant(mask, lo))
                rows[i | d_] = builder.shuffle_vector(a, b, ir.Constant(mask, hi))
            d_ *= 2
        if not masked:
            for j in range(L):
                builder.store(rows[j], builder.bitcast(row(ddata, do_, ds_, j), vty.as_pointer()),
                              align=1)
            return context.get_dummy_value()
        # lanes i < n of each row: llvm.masked.store (a vmovups with a k-mask)
        lanes_ = ir.Constant(ir.VectorType(i64, L), list(range(L)))
        nv = builder.insert_element(ir.Constant(ir.VectorType(i64, L), None), n_[0],
                                    ir.Constant(i32, 0))
        nv = builder.shuffle_vector(nv, nv, ir.Constant(ir.VectorType(i32, L), [0] * L))
        keep = builder.icmp_signed("<", lanes_, nv)
        ptr = row(ddata, do_, ds_, 0)
        fnty = ir.FunctionType(ir.VoidType(), [vty, ptr.type, i32, keep.type])
        suffix = f"v{L}f{64 // L * 8}.p0"
        store = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.store." + suffix)
        for j in range(L):
            builder.call(store, [rows[j], row(ddata, do_, ds_, j), ir.Constant(i32, 1), keep])
        return context.get_dummy_value()

    return codegen


def _float_arrays(src, dst):
    return (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == dst.dtype and src.dtype in (types.float32, types.float64))


@intrinsic
def transpose_block(typingctx, src, so, ss, dst, do, ds):
    """dst[do + j*ds + i] = src[so + i*ss + j] for i, j < L (1-D arrays of one float
    dtype; offsets and strides in elements, unchecked: the caller keeps them inside)."""
    if not _float_arrays(src, dst):
        return None
    return types.void(src, so, ss, dst, do, ds), _codegen(False)


@intrinsic
def transpose_block_n(typingctx, src, so, ss, dst, do, ds, n):
    """``transpose_block`` writing only the first ``n`` (<= L) elements of each row of
    dst, dst[do + j*ds + i] for i < n (masked vector stores): the last block of a row
    shorter than L. All L rows of the source block are read."""
    if not _float_arrays(src, dst):
        return None
    return types.void(src, so, ss, dst, do, ds, n), _codegen(True)
