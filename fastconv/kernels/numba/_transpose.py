"""A register transpose of one L x L block (L = 16 float32, 8 float64: one 64-byte
vector per row), for the layout conversions between planar (NCHW) and channels-last
blocks.

Written as LLVM IR through ``numba.extending.intrinsic``: L vector loads, log2(L)
rounds of two-source shuffles, L vector stores. Numba's loop and SLP vectorizers
emit a scalar load and store per element for the same copy (the element-wise loop,
or 256 scalar locals, measured 4-6x slower on a res3-sized plane).
"""
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic


def lanes(dtype):
    """Elements per row of the block: one 64-byte vector."""
    return 64 // dtype.itemsize


@intrinsic
def transpose_block(typingctx, src, so, ss, dst, do, ds):
    """dst[do + j*ds + i] = src[so + i*ss + j] for i, j < L (1-D arrays of one float
    dtype; offsets and strides in elements, unchecked: the caller keeps them inside)."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.dtype == dst.dtype and src.dtype in (types.float32, types.float64)):
        return None
    L = 16 if src.dtype == types.float32 else 8
    sig = types.void(src, so, ss, dst, do, ds)

    def codegen(context, builder, signature, args):
        s, so_, ss_, d, do_, ds_ = args
        i64 = ir.IntType(64)
        ints = signature.args[1:3] + signature.args[4:6]
        so_, ss_, do_, ds_ = (context.cast(builder, v, t, types.int64)
                              for v, t in zip((so_, ss_, do_, ds_), ints))
        sdata = context.make_array(signature.args[0])(context, builder, s).data
        ddata = context.make_array(signature.args[3])(context, builder, d).data
        vty = ir.VectorType(context.get_value_type(signature.args[0].dtype), L)

        def row(data, off, stride, i):
            at = builder.add(off, builder.mul(ir.Constant(i64, i), stride))
            return builder.bitcast(builder.gep(data, [at]), vty.as_pointer())

        rows = [builder.load(row(sdata, so_, ss_, i), align=1) for i in range(L)]
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
                mask = ir.VectorType(ir.IntType(32), L)
                rows[i] = builder.shuffle_vector(a, b, ir.Constant(mask, lo))
                rows[i | d_] = builder.shuffle_vector(a, b, ir.Constant(mask, hi))
            d_ *= 2
        for j in range(L):
            builder.store(rows[j], row(ddata, do_, ds_, j), align=1)
        return context.get_dummy_value()

    return sig, codegen
