/* The hot loops, for one element type: included by fc_isa.h with T (float or double)
 * and X (its suffix, f32 or f64) defined, once per instruction set. Every function is
 * static: only the table (fc_isa.h) leaves the object.
 *
 * Each loop computes what the Numba backend's loop of the same name computes
 * (fastconv/kernels/numba/im2col.py and pool.py), in the same order of operations, so
 * the two backends give the same values (the GEMM's FMAs aside); see those files for
 * the index arithmetic's derivation. No -ffast-math: max pooling must see NaN, and
 * sums keep their order.
 */
#define FN(name) FC_CAT(name, X)

#if FC_VECTORS
/* A vector of FC_VB bytes (ISA-wide: zmm with AVX-512, ymm with AVX2, xmm in the
 * baseline), in GCC/Clang vector extensions, so one source serves every width; its
 * lanes' bits as integers; unaligned loads and stores. */
typedef T FN(vec) __attribute__((vector_size(FC_VB)));
/* a comparison's result: a lane of all ones where it holds, integers as wide as T */
typedef __typeof__((FN(vec)){0} < (FN(vec)){0}) FN(vmask);
#define VL ((fc_int)(FC_VB / sizeof(T)))

static inline FN(vec) FN(vload)(const T *p)
{
    FN(vec) v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void FN(vstore)(T *p, FN(vec) v) { memcpy(p, &v, sizeof v); }

/* a where m holds, else b, by lanes (bitwise: no branches, NaN kept as it is) */
static inline FN(vec) FN(vselect)(FN(vmask) m, FN(vec) a, FN(vec) b)
{
    return (FN(vec))((m & (FN(vmask))a) | (~m & (FN(vmask))b));
}
#endif

/* -- a register transpose of one FC_TL x FC_TL block ------------------------------- */

/* The block's side: one vector of T (VL) where GCC's vector shuffles exist, else 8
 * (a plain loop of the same block, which any compiler builds). */
#undef FC_SHUFFLE          /* this file is included once per T */
#undef FC_TL
#undef FC_TLO
#undef FC_THI
#undef FC_LANES
#undef FC_TROUND
#undef FC_CONCAT
#if FC_VECTORS && defined(__GNUC__) && !defined(__clang__)
#  define FC_SHUFFLE 1
#  define FC_TL (FC_VB / FC_TSIZE)
#else
#  define FC_SHUFFLE 0
#  define FC_TL 8
#endif

#if FC_SHUFFLE
/* shuffle indices as integer vectors of T's width (a comparison's mask type cannot be
 * initialised); round d of the transpose takes from rows a, b = r[i], r[i + d]
 * (bit d of i clear) lanes FC_TLO into row i and FC_THI into row i + d: it swaps the
 * off-diagonal d x d blocks of every 2d x 2d block, so after the rounds d = 1, 2, 4,
 * ... < FC_TL element (i, j) sits at (j, i) */
#  if FC_TSIZE == 4
typedef int32_t FN(vidx) __attribute__((vector_size(FC_VB)));
#  else
typedef int64_t FN(vidx) __attribute__((vector_size(FC_VB)));
#  endif
#  define FC_TLO(j, d) (((j) & (d)) ? FC_TL + (j) - (d) : (j))
#  define FC_THI(j, d) (((j) & (d)) ? FC_TL + (j) : (j) + (d))
#  if FC_TL == 2
#    define FC_LANES(F, d) {F(0, d), F(1, d)}
#  elif FC_TL == 4
#    define FC_LANES(F, d) {F(0, d), F(1, d), F(2, d), F(3, d)}
#  elif FC_TL == 8
#    define FC_LANES(F, d) {F(0, d), F(1, d), F(2, d), F(3, d), F(4, d), F(5, d), F(6, d), \
                            F(7, d)}
#  else
#    define FC_LANES(F, d) {F(0, d), F(1, d), F(2, d), F(3, d), F(4, d), F(5, d), F(6, d), \
                            F(7, d), F(8, d), F(9, d), F(10, d), F(11, d), F(12, d),       \
                            F(13, d), F(14, d), F(15, d)}
#  endif
typedef T FN(hvec) __attribute__((vector_size(FC_VB / 2)));
#  if FC_TL == 16
#    define FC_CONCAT(a, b) __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, \
                                                    11, 12, 13, 14, 15)
#  elif FC_TL == 8
#    define FC_CONCAT(a, b) __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7)
#  elif FC_TL == 4
#    define FC_CONCAT(a, b) __builtin_shufflevector(a, b, 0, 1, 2, 3)
#  else
#    define FC_CONCAT(a, b) __builtin_shufflevector(a, b, 0, 1)
#  endif
#  define FC_TROUND(d)                                                                  \
    if ((d) < FC_TL) {                                                                 \
        const FN(vidx) lo = FC_LANES(FC_TLO, d), hi = FC_LANES(FC_THI, d);              \
        for (int i = 0; i < FC_TL; i++) {                                               \
            if (i & (d)) continue;                                                      \
            const FN(vec) a = r[i], b = r[i | (d)];                                     \
            r[i] = __builtin_shuffle(a, b, lo);                                         \
            r[i | (d)] = __builtin_shuffle(a, b, hi);                                   \
        }                                                                               \
    }
#endif

/* dst[j*ds + i] = src[i*ss + j] for i < FC_TL and j < m (<= FC_TL; all FC_TL columns
 * of the FC_TL rows are read): FC_TL vector loads, log2(FC_TL) rounds of two-source
 * shuffles (constant indices: GCC picks the cheapest shuffles), m vector stores (the
 * Numba backend's _transpose.transpose_block and transpose_rows). ds may be negative. */
static inline void FN(transpose_rows)(const T *src, fc_int ss, T *dst, fc_int ds, fc_int m)
{
#if FC_SHUFFLE
    FN(vec) r[FC_TL];
    enum { H = FC_TL / 2 };
    /* the last round (halves) made by the loads: r[i] = (row i, row i + H) of columns
     * [0, H), r[i + H] of columns [H, 2H) */
    for (int i = 0; i < H; i++) {
        FN(hvec) a0, a1, b0, b1;
        memcpy(&a0, src + i * ss, sizeof a0);
        memcpy(&a1, src + i * ss + H, sizeof a1);
        memcpy(&b0, src + (i + H) * ss, sizeof b0);
        memcpy(&b1, src + (i + H) * ss + H, sizeof b1);
        r[i] = FC_CONCAT(a0, b0);
        r[i + H] = FC_CONCAT(a1, b1);
    }
    if (1 < H) { FC_TROUND(1) }
    if (2 < H) { FC_TROUND(2) }
    if (4 < H) { FC_TROUND(4) }
    for (int j = 0; j < m; j++) FN(vstore)(dst + j * ds, r[j]);
#else
    for (fc_int j = 0; j < m; j++)
        for (int i = 0; i < FC_TL; i++) dst[j * ds + i] = src[i * ss + j];
#endif
}

/* Masked vector moves (AVX-512): a short run (a block's pixels in one output row)
 * copied as one vector. Without them (AVX2's masked stores aside) a run's copy is a
 * scalar loop, and going through the runs cost more than storing element by element
 * (the lanes forward's 3x3/2 layers 7-10% slower, FASTCONV_ISA=avx2 on AMD EPYC Zen
 * 4): fc_direct.h uses these only where FC_MASKED. */
#undef FC_MASKED
#undef FC_MASK
#undef FC_MVEC
#undef FC_MLOAD
#undef FC_MSTORE
#if FC_VECTORS && defined(__AVX512F__)
#  define FC_MASKED 1
#  if FC_TSIZE == 4
#    define FC_MASK(n) ((__mmask16)((1u << (n)) - 1))
#    define FC_MVEC __m512
#    define FC_MLOAD(k, p) _mm512_maskz_loadu_ps(k, p)
#    define FC_MSTORE(p, k, v) _mm512_mask_storeu_ps(p, k, v)
#  else
#    define FC_MASK(n) ((__mmask8)((1u << (n)) - 1))
#    define FC_MVEC __m512d
#    define FC_MLOAD(k, p) _mm512_maskz_loadu_pd(k, p)
#    define FC_MSTORE(p, k, v) _mm512_mask_storeu_pd(p, k, v)
#  endif

/* dst[j] = src[j] for j < n */
static inline void FN(copy_run)(T *restrict dst, const T *restrict src, fc_int n)
{
    for (fc_int j = 0; j < n; j += VL) {
        const unsigned m = (unsigned)(n - j < VL ? n - j : VL);   /* lanes copied */
        FC_MSTORE(dst + j, FC_MASK(m), FC_MLOAD(FC_MASK(m), src + j));
    }
}
#else
#  define FC_MASKED 0
#endif

/* The whole block: dst[j*ds + i] = src[i*ss + j] for i, j < FC_TL. */
static inline void FN(transpose)(const T *restrict src, fc_int ss, T *restrict dst,
                                 fc_int ds)
{
    FN(transpose_rows)(src, ss, dst, ds, FC_TL);
}

/* A matrix: dst[j*ds + i] = src[i*ss + j] for i < rows, j < cols (the layout changes
 * between planar and channels-last blocks). Where both sides hold a block, FC_TL x
 * FC_TL blocks by register transposes, column blocks outer, the last block along
 * each side overlapping the one before (storing the same values again); element by
 * element where a side is shorter than a block. ahead > 0: each block's source rows
 * prefetched that many elements further along (rows far apart, each its own stream:
 * more than the hardware prefetchers follow); reads past a row are prefetches only. */
static inline void FN(transpose_matrix_ahead)(const T *src, fc_int ss, T *dst, fc_int ds,
                                              fc_int rows, fc_int cols, fc_int ahead)
{
    const fc_int L = FC_TL;
    if (rows >= L && cols >= L) {
        for (fc_int jb = 0; jb < cols; jb += L) {
            const fc_int j = jb + L <= cols ? jb : cols - L;
            for (fc_int ib = 0; ib < rows; ib += L) {
                const fc_int i = ib + L <= rows ? ib : rows - L;
                for (fc_int r = 0; ahead > 0 && r < L; r++)
                    __builtin_prefetch(src + (i + r) * ss + j + ahead, 0, 1);
                FN(transpose)(src + i * ss + j, ss, dst + j * ds + i, ds);
            }
        }
        return;
    }
    for (fc_int i = 0; i < rows; i++)
        for (fc_int j = 0; j < cols; j++) dst[j * ds + i] = src[i * ss + j];
}

static inline void FN(transpose_matrix)(const T *src, fc_int ss, T *dst, fc_int ds,
                                        fc_int rows, fc_int cols)
{
    FN(transpose_matrix_ahead)(src, ss, dst, ds, rows, cols, 0);
}

/* -- im2col: gather and scatter ---------------------------------------------------- */

/* dst[q] = src[q*sw] for q < n */
static inline void FN(gather)(T *restrict dst, const T *restrict src, fc_int n, fc_int sw)
{
    if (sw == 1) {
        memcpy(dst, src, (size_t)n * sizeof(T));
    } else if (sw == 2) {
        for (fc_int q = 0; q < n; q++) dst[q] = src[2 * q];
    } else {
        for (fc_int q = 0; q < n; q++) dst[q] = src[q * sw];
    }
}

static void FN(im2col_row)(const T *x, T *col, const fc_conv *g, fc_int row,
                           fc_int n0, fc_int nt, fc_int p0, fc_int pr)
{
    const fc_int RS = g->R * g->S, Q = g->Q, H = g->H, W = g->W;
    const fc_int c = row / RS, r = (row / g->S) % g->R, s = row % g->S;
    const fc_int off = s * g->dw - g->pl;            /* input column = q*sw + off */
    const fc_int cols = nt * pr * Q;
    fc_int q_lo, q_hi;
    fc_valid_range(Q, W, g->sw, off, &q_lo, &q_hi);
    T *dst = col + row * cols;
    for (fc_int t = 0; t < nt; t++) {
        const T *plane = x + ((n0 + t) * g->C + c) * H * W;
        for (fc_int i = 0; i < pr; i++) {
            const fc_int h = (p0 + i) * g->sh - g->pt + r * g->dh;
            T *d = dst + (t * pr + i) * Q;
            if (h < 0 || h >= H) {
                memset(d, 0, (size_t)Q * sizeof(T));
                continue;
            }
            if (q_lo > 0) memset(d, 0, (size_t)q_lo * sizeof(T));
            FN(gather)(d + q_lo, plane + h * W + q_lo * g->sw + off, q_hi - q_lo, g->sw);
            if (q_hi < Q) memset(d + q_hi, 0, (size_t)(Q - q_hi) * sizeof(T));
        }
    }
}

/* dst[q] += src[q] for q < n */
static inline void FN(add_run)(T *restrict dst, const T *restrict src, fc_int n)
{
    for (fc_int q = 0; q < n; q++) dst[q] += src[q];
}

static void FN(col2im_plane)(const T *col, T *dx, const fc_conv *g, fc_int t, fc_int c,
                             fc_int n0, fc_int nt, fc_int p0, fc_int pr, T *ph)
{
    const fc_int R = g->R, S = g->S, H = g->H, W = g->W, Q = g->Q, sw = g->sw;
    const fc_int cols = nt * pr * Q;
    T *plane = dx + ((n0 + t) * g->C + c) * H * W;
    if (sw == 1) {
        for (fc_int r = 0; r < R; r++) {
            for (fc_int s = 0; s < S; s++) {
                const fc_int row = (c * R + r) * S + s, off = s * g->dw - g->pl;
                fc_int q_lo, q_hi;
                fc_valid_range(Q, W, 1, off, &q_lo, &q_hi);
                for (fc_int i = 0; i < pr; i++) {
                    const fc_int h = (p0 + i) * g->sh - g->pt + r * g->dh;
                    if (h < 0 || h >= H) continue;
                    const T *src = col + row * cols + (t * pr + i) * Q;
                    FN(add_run)(plane + h * W + q_lo + off, src + q_lo, q_hi - q_lo);
                }
            }
        }
        return;
    }
    /* larger column strides: a dx row summed as its sw column phases, then added to
     * the row interleaved (see the Numba kernel's docstring) */
    const fc_int Wph = (W + sw - 1) / sw;
    fc_int h_lo = p0 * g->sh - g->pt, h_hi = (p0 + pr - 1) * g->sh - g->pt + (R - 1) * g->dh + 1;
    if (h_lo < 0) h_lo = 0;
    if (h_hi > H) h_hi = H;
    for (fc_int h = h_lo; h < h_hi; h++) {
        memset(ph, 0, (size_t)(sw * Wph) * sizeof(T));
        for (fc_int r = 0; r < R; r++) {
            const fc_int hh = h + g->pt - r * g->dh;     /* = (p0 + i) * sh for its row i */
            if (hh < 0 || hh % g->sh != 0) continue;
            const fc_int i = hh / g->sh - p0;
            if (i < 0 || i >= pr) continue;
            const T *base = col + (t * pr + i) * Q;
            for (fc_int s = 0; s < S; s++) {
                const fc_int row = (c * R + r) * S + s, off = s * g->dw - g->pl;
                /* dx column q*sw + off: phase b, index q + j0 */
                const fc_int b = ((off % sw) + sw) % sw, j0 = (off - b) / sw;
                fc_int q_lo, q_hi;
                fc_valid_range(Q, W, sw, off, &q_lo, &q_hi);
                FN(add_run)(ph + b * Wph + q_lo + j0, base + row * cols + q_lo, q_hi - q_lo);
            }
        }
        T *out = plane + h * W;
        if (sw == 2) {
            for (fc_int j = 0; j < W / 2; j++) {
                out[2 * j] += ph[j];
                out[2 * j + 1] += ph[Wph + j];
            }
            if (W % 2) out[W - 1] += ph[W / 2];
        } else {
            for (fc_int w = 0; w < W; w++) out[w] += ph[(w % sw) * Wph + w / sw];
        }
    }
}

/* -- pooling --------------------------------------------------------------------------- */

/* One step of max pooling over n outputs: tap values xs[j*sw] (flat index base + j*sw)
 * against the best so far; larger or NaN wins (as PyTorch), branch-free. */
static inline void FN(max_step)(T *restrict best, int64_t *restrict bi, const T *restrict xs,
                                int64_t base, fc_int n, fc_int sw)
{
    if (sw == 1) {
        for (fc_int j = 0; j < n; j++) {
            const T v = xs[j];
            const int take = (v > best[j]) | (v != v);
            best[j] = take ? v : best[j];
            bi[j] = take ? base + j : bi[j];
        }
    } else if (sw == 2) {
        for (fc_int j = 0; j < n; j++) {
            const T v = xs[2 * j];
            const int take = (v > best[j]) | (v != v);
            best[j] = take ? v : best[j];
            bi[j] = take ? base + 2 * j : bi[j];
        }
    } else {
        for (fc_int j = 0; j < n; j++) {
            const T v = xs[j * sw];
            const int take = (v > best[j]) | (v != v);
            best[j] = take ? v : best[j];
            bi[j] = take ? base + j * sw : bi[j];
        }
    }
}


/* best[j] = max(best[j], xs[j*sw]) for j < n; NaN wins (as PyTorch). */
static inline void FN(max_values_step)(T *restrict best, const T *restrict xs, fc_int n,
                                       fc_int sw)
{
    if (sw == 1) {
        for (fc_int j = 0; j < n; j++) {
            const T v = xs[j];
            best[j] = ((v > best[j]) | (v != v)) ? v : best[j];
        }
    } else if (sw == 2) {
        for (fc_int j = 0; j < n; j++) {
            const T v = xs[2 * j];
            best[j] = ((v > best[j]) | (v != v)) ? v : best[j];
        }
    } else {
        for (fc_int j = 0; j < n; j++) {
            const T v = xs[j * sw];
            best[j] = ((v > best[j]) | (v != v)) ? v : best[j];
        }
    }
}

#if FC_VECTORS
/* max(b, v) by lanes, v winning where it is greater or NaN, by masks */
static inline FN(vec) FN(vmax)(FN(vec) b, FN(vec) v)
{
    return FN(vselect)((v > b) | (v != v), v, b);
}
#endif

/* best[j] = max(best[j], xs[j]) for j < n, NaN winning (as max_values_step), a
 * vector at a time by masks: GCC does not vectorise the scalar form's select, and
 * compiles it to branches, which random data mispredicts. The last part vector
 * overlaps the one before (max is idempotent), so no scalar tail runs once n >= VL. */
static inline void FN(vmax_step)(T *restrict best, const T *restrict xs, fc_int n)
{
    fc_int j = 0;
#if FC_VECTORS
    for (; j + VL <= n; j += VL)
        FN(vstore)(best + j, FN(vmax)(FN(vload)(best + j), FN(vload)(xs + j)));
    if (j < n && n >= VL) {
        FN(vstore)(best + n - VL, FN(vmax)(FN(vload)(best + n - VL), FN(vload)(xs + n - VL)));
        return;
    }
#endif
    for (; j < n; j++) {
        const T v = xs[j];
        best[j] = ((v > best[j]) | (v != v)) ? v : best[j];
    }
}

/* The most columns the separable stride-2 values-only max pool keeps on the stack
 * per row (wider rows run tap by tap). */
#ifndef FC_POOL_SPAN
#  define FC_POOL_SPAN 2048
#endif

/* Max pooling of one plane, values only (no indices asked for): as max_pool_plane,
 * without the index arithmetic and stores. */
static void FN(max_values_plane)(const T *x, T *y, const fc_pool *g)
{
    const fc_int H = g->H, W = g->W, kw = g->kw, sw = g->sw, pw = g->pw, dw = g->dw;
    const fc_int Q = g->Q, dh = g->dh;
    fc_int j_lo, j_hi;
    fc_inner_range_(Q, W, sw, pw, dw, kw, &j_lo, &j_hi);
    /* the padded columns the row's windows read: column k is input column k - pw */
    const fc_int full = (Q - 1) * sw + (kw - 1) * dw + 1;
    const int separable = sw == 2 && dw == 1 && full <= FC_POOL_SPAN;
    for (fc_int i = 0; i < g->P; i++) {
        const fc_int h0 = i * g->sh - g->ph;
        fc_int a_lo, a_hi;
        fc_valid_range(g->kh, H, dh, h0, &a_lo, &a_hi);
        T *yr = y + i * Q;
        if (separable) {
            /* stride 2: the rows' maximum per padded column (-inf outside the input),
             * contiguous and vectorised, split into even and odd columns; then each
             * output the maximum of its kw columns, kw contiguous runs of those. Max
             * is exact: the values of the tap-by-tap loop below (of two equal zeros,
             * which one is kept may differ) */
            T rm[FC_POOL_SPAN], ev[FC_POOL_SPAN / 2 + 1], od[FC_POOL_SPAN / 2 + 1];
            const fc_int k1 = pw + W < full ? pw + W : full;     /* inside: [pw, k1) */
            for (fc_int k = 0; k < pw; k++) rm[k] = -__builtin_inf();
            for (fc_int k = k1; k < full; k++) rm[k] = -__builtin_inf();
            memcpy(rm + pw, x + (h0 + a_lo * dh) * W, (size_t)(k1 - pw) * sizeof(T));
            for (fc_int a = a_lo + 1; a < a_hi; a++)
                FN(vmax_step)(rm + pw, x + (h0 + a * dh) * W, k1 - pw);
            for (fc_int m = 0; m < (full + 1) / 2; m++) ev[m] = rm[2 * m];
            for (fc_int m = 0; m < full / 2; m++) od[m] = rm[2 * m + 1];
            /* window j's column b is rm[2j + b]: ev[j + b/2] (b even), od[j + b/2] (odd) */
            memcpy(yr, ev, (size_t)Q * sizeof(T));
            for (fc_int b = 1; b < kw; b++)
                FN(vmax_step)(yr, (b % 2 ? od : ev) + b / 2, Q);
            continue;
        }
        /* windows cut by the padding: one at a time, taps in scan order */
        for (fc_int j = 0; j < Q; j++) {
            if (j == j_lo && j_hi > j_lo) j = j_hi;
            if (j >= Q) break;
            const fc_int w0 = j * sw - pw;
            fc_int b_lo, b_hi;
            fc_valid_range(kw, W, dw, w0, &b_lo, &b_hi);
            T best = x[(h0 + a_lo * dh) * W + w0 + b_lo * dw];
            for (fc_int a = a_lo; a < a_hi; a++) {
                const T *xr = x + (h0 + a * dh) * W + w0;
                for (fc_int b = b_lo; b < b_hi; b++) {
                    const T v = xr[b * dw];
                    best = ((v > best) | (v != v)) ? v : best;
                }
            }
            yr[j] = best;
        }
        if (j_hi <= j_lo) continue;
        /* whole windows along the row: all outputs at once, tap by tap */
        const fc_int n = j_hi - j_lo;
        FN(gather)(yr + j_lo, x + (h0 + a_lo * dh) * W + j_lo * sw - pw, n, sw);
        for (fc_int a = a_lo; a < a_hi; a++) {
            const T *xr = x + (h0 + a * dh) * W + j_lo * sw - pw;
            for (fc_int b = (a == a_lo); b < kw; b++)    /* tap (a_lo, 0): the gather */
                FN(max_values_step)(yr + j_lo, xr + b * dw, n, sw);
        }
    }
}

/* Max pooling channels last, values only: output row i, y (Q, C), of one image x
 * (H, W, C). Each output pixel starts from its first valid tap's C values and takes
 * the maximum with each later tap in scan order (a vector of channels at a time,
 * NaN winning: max_values_step's semantics). */
static void FN(max_pool_nhwc_row)(const T *x, T *y, const fc_pool *g, fc_int C, fc_int i)
{
    const fc_int W = g->W, dh = g->dh, dw = g->dw;
    const fc_int h0 = i * g->sh - g->ph;
    fc_int a_lo, a_hi;
    fc_valid_range(g->kh, g->H, dh, h0, &a_lo, &a_hi);
    for (fc_int j = 0; j < g->Q; j++) {
        const fc_int w0 = j * g->sw - g->pw;
        fc_int b_lo, b_hi;
        fc_valid_range(g->kw, W, dw, w0, &b_lo, &b_hi);
        T *yj = y + j * C;
        memcpy(yj, x + ((h0 + a_lo * dh) * W + w0 + b_lo * dw) * C, (size_t)C * sizeof(T));
        for (fc_int a = a_lo; a < a_hi; a++)
            for (fc_int b = a == a_lo ? b_lo + 1 : b_lo; b < b_hi; b++)
                FN(vmax_step)(yj, x + ((h0 + a * dh) * W + w0 + b * dw) * C, C);
    }
}

/* Max pooling of one plane: values and flat indices (idx NULL: values only). */
static void FN(max_pool_plane)(const T *x, T *y, int64_t *idx, const fc_pool *g)
{
    if (idx == NULL) {
        FN(max_values_plane)(x, y, g);
        return;
    }
    const fc_int H = g->H, W = g->W, kw = g->kw, sw = g->sw, pw = g->pw, dw = g->dw;
    const fc_int Q = g->Q;
    fc_int j_lo, j_hi;
    fc_inner_range_(Q, W, sw, pw, dw, kw, &j_lo, &j_hi);
    for (fc_int i = 0; i < g->P; i++) {
        const fc_int h0 = i * g->sh - g->ph;
        fc_int a_lo, a_hi;
        fc_valid_range(g->kh, H, g->dh, h0, &a_lo, &a_hi);
        T *yr = y + i * Q;
        int64_t *ir = idx + i * Q;
        /* windows cut by the padding: one at a time, from the first valid tap */
        for (fc_int j = 0; j < Q; j++) {
            if (j == j_lo && j_hi > j_lo) j = j_hi;
            if (j >= Q) break;
            const fc_int w0 = j * sw - pw;
            fc_int b_lo, b_hi;
            fc_valid_range(kw, W, dw, w0, &b_lo, &b_hi);
            fc_int h = h0 + a_lo * g->dh;
            T best = x[h * W + w0 + b_lo * dw];
            int64_t best_idx = h * W + w0 + b_lo * dw;
            for (fc_int a = a_lo; a < a_hi; a++) {
                h = h0 + a * g->dh;
                for (fc_int b = b_lo; b < b_hi; b++) {
                    const T v = x[h * W + w0 + b * dw];
                    const int take = (v > best) | (v != v);
                    best = take ? v : best;
                    best_idx = take ? h * W + w0 + b * dw : best_idx;
                }
            }
            yr[j] = best;
            ir[j] = best_idx;
        }
        if (j_hi <= j_lo) continue;
        /* whole windows along the row: all outputs at once, tap by tap (the same
         * comparisons in the same order per output as above) */
        const fc_int n = j_hi - j_lo;
        fc_int h = h0 + a_lo * g->dh;
        int64_t base = h * W + j_lo * sw - pw;
        FN(gather)(yr + j_lo, x + base, n, sw);
        for (fc_int j = 0; j < n; j++) ir[j_lo + j] = base + j * sw;
        for (fc_int a = a_lo; a < a_hi; a++) {
            h = h0 + a * g->dh;
            for (fc_int b = 0; b < kw; b++) {
                if (a == a_lo && b == 0) continue;      /* the first tap, taken above */
                base = h * W + j_lo * sw - pw + b * dw;
                FN(max_step)(yr + j_lo, ir + j_lo, x + base, base, n, sw);
            }
        }
    }
}

static void FN(max_pool_backward_plane)(const T *dy, const int64_t *idx, T *dx, fc_int HW,
                                        fc_int PQ)
{
    memset(dx, 0, (size_t)HW * sizeof(T));
    for (fc_int k = 0; k < PQ; k++) dx[idx[k]] += dy[k];
}


/* acc[j] += xs[j*sw] for j < n (sums in double, as the Numba kernel's) */
static inline void FN(sum_step)(double *restrict acc, const T *restrict xs, fc_int n, fc_int sw)
{
    if (sw == 1) {
        for (fc_int j = 0; j < n; j++) acc[j] += (double)xs[j];
    } else if (sw == 2) {
        for (fc_int j = 0; j < n; j++) acc[j] += (double)xs[2 * j];
    } else {
        for (fc_int j = 0; j < n; j++) acc[j] += (double)xs[j * sw];
    }
}

static void FN(avg_pool_plane)(const T *x, T *y, const fc_pool *g, int cip, fc_int dov,
                               double *acc)
{
    const fc_int W = g->W, Q = g->Q, kw = g->kw, sw = g->sw, pw = g->pw;
    fc_int j_lo, j_hi;
    fc_inner_range_(Q, W, sw, pw, 1, kw, &j_lo, &j_hi);
    for (fc_int i = 0; i < g->P; i++) {
        T *yr = y + i * Q;
        for (fc_int j = 0; j < Q; j++) {
            if (j == j_lo && j_hi > j_lo) j = j_hi;
            if (j >= Q) break;
            fc_int h0, h1, w0, w1, div;
            fc_avg_window_(g, i, j, cip, dov, &h0, &h1, &w0, &w1, &div);
            double s = 0.0;
            for (fc_int h = h0; h < h1; h++)
                for (fc_int w = w0; w < w1; w++) s += (double)x[h * W + w];
            yr[j] = (T)(s / (double)div);
        }
        if (j_hi <= j_lo) continue;
        /* whole windows along the row: every output's sum in the same order as above */
        fc_int h0, h1, w0, w1, div;
        fc_avg_window_(g, i, j_lo, cip, dov, &h0, &h1, &w0, &w1, &div);
        const fc_int n = j_hi - j_lo;
        for (fc_int j = 0; j < n; j++) acc[j] = 0.0;
        for (fc_int h = h0; h < h1; h++)
            for (fc_int b = 0; b < kw; b++)
                FN(sum_step)(acc, x + h * W + w0 + b, n, sw);
        for (fc_int j = 0; j < n; j++) yr[j_lo + j] = (T)(acc[j] / (double)div);
    }
}

static void FN(avg_pool_backward_plane)(const T *dy, T *dx, const fc_pool *g, int cip,
                                        fc_int dov)
{
    const fc_int W = g->W;
    memset(dx, 0, (size_t)(g->H * W) * sizeof(T));
    for (fc_int i = 0; i < g->P; i++) {
        for (fc_int j = 0; j < g->Q; j++) {
            fc_int h0, h1, w0, w1, div;
            fc_avg_window_(g, i, j, cip, dov, &h0, &h1, &w0, &w1, &div);
            const double d = (double)dy[i * g->Q + j] / (double)div;
            for (fc_int h = h0; h < h1; h++)
                for (fc_int w = w0; w < w1; w++)
                    dx[h * W + w] = (T)((double)dx[h * W + w] + d);
        }
    }
}

static void FN(adaptive_avg_plane)(const T *x, T *y, fc_int H, fc_int W,
                                   const int64_t *hs, const int64_t *he, fc_int P,
                                   const int64_t *ws, const int64_t *we, fc_int Q)
{
    (void)H;
    for (fc_int i = 0; i < P; i++) {
        for (fc_int j = 0; j < Q; j++) {
            double s = 0.0;
            for (fc_int h = hs[i]; h < he[i]; h++)
                for (fc_int w = ws[j]; w < we[j]; w++) s += (double)x[h * W + w];
            y[i * Q + j] = (T)(s / (double)((he[i] - hs[i]) * (we[j] - ws[j])));
        }
    }
}

/* Channels last: y[c] = the mean of window (i, j) of x (H, W, C) for every channel c,
 * summed in double in adaptive_avg_plane's order (rows, then columns), so both layouts
 * give the same bits; y: the window's C outputs; acc: C doubles of scratch. */
static void FN(adaptive_avg_nhwc)(const T *x, T *y, fc_int W, fc_int C, const int64_t *hs,
                                  const int64_t *he, const int64_t *ws, const int64_t *we,
                                  fc_int i, fc_int j, double *acc)
{
    for (fc_int c = 0; c < C; c++) acc[c] = 0.0;
    for (fc_int h = hs[i]; h < he[i]; h++)
        for (fc_int w = ws[j]; w < we[j]; w++) {
            const T *px = x + (h * W + w) * C;
            for (fc_int c = 0; c < C; c++) acc[c] += (double)px[c];
        }
    const double n = (double)((he[i] - hs[i]) * (we[j] - ws[j]));
    for (fc_int c = 0; c < C; c++) y[c] = (T)(acc[c] / n);
}

/* -- im2col's weight gradient: the GEMM that reads patch rows in place ----------------- */

/* rows [r0, r1) x columns [k0, k1) of A += V @ U, one element at a time (the blocks'
 * remainders) */
static void FN(patch_gemm_tail)(const T *xf, const fc_int *offs, const T *U, T *A,
                                fc_int r0, fc_int r1, fc_int k0, fc_int k1, fc_int Kp,
                                fc_int nb, fc_int Q, fc_int pitch, fc_int step)
{
    for (fc_int t = r0; t < r1; t++) {
        for (fc_int k = k0; k < k1; k++) {
            T a = A[t * Kp + k];
            for (fc_int b = 0; b < nb; b++) {
                const T *v = xf + offs[t] + b * pitch;
                const T *u = U + b * Q * Kp + k;
                for (fc_int q = 0; q < Q; q++) a += v[q * step] * u[q * Kp];
            }
            A[t * Kp + k] = a;
        }
    }
}

#if FC_VECTORS
/* The register block: FC_MR rows x nv (at most FC_NV) vectors of FC_VB bytes (ISA-wide:
 * 6 x 4 zmm with AVX-512, 6 x 2 ymm with AVX2, 6 x 2 xmm in the baseline), in GCC/Clang
 * vector extensions, so one source serves every width: the accumulators stay in
 * registers across the nb*Q pixels, each step loading nv vectors of U and broadcasting
 * one value of each of the FC_MR patch rows. nv is a constant where it is inlined. */
static inline __attribute__((always_inline)) void FN(patch_gemm_block)(
    const T *restrict xf, const fc_int *offs, const T *restrict U, T *restrict A, fc_int Kp,
    fc_int nb, fc_int Q, fc_int pitch, fc_int step, const int nv)
{
    FN(vec) acc[FC_MR][FC_NV];
    for (int t = 0; t < FC_MR; t++)
        for (int k = 0; k < nv; k++) acc[t][k] = FN(vload)(A + t * Kp + k * VL);
    for (fc_int b = 0; b < nb; b++) {
        const T *v[FC_MR];
        for (int t = 0; t < FC_MR; t++) v[t] = xf + offs[t] + b * pitch;
        const T *u = U + b * Q * Kp;
        for (fc_int q = 0; q < Q; q++) {
            FN(vec) us[FC_NV];
            for (int k = 0; k < nv; k++) us[k] = FN(vload)(u + k * VL);
            for (int t = 0; t < FC_MR; t++) {
                const T w = v[t][q * step];             /* broadcast by the operator */
                for (int k = 0; k < nv; k++) acc[t][k] += us[k] * w;
            }
            u += Kp;
        }
    }
    for (int t = 0; t < FC_MR; t++)
        for (int k = 0; k < nv; k++) FN(vstore)(A + t * Kp + k * VL, acc[t][k]);
}

/* the register block's instances: every width up to FC_NV vectors */
static void FN(patch_gemm_nv)(const T *xf, const fc_int *offs, const T *U, T *A, fc_int Kp,
                              fc_int nb, fc_int Q, fc_int pitch, fc_int step, fc_int nv)
{
    switch (nv) {
    case 1: FN(patch_gemm_block)(xf, offs, U, A, Kp, nb, Q, pitch, step, 1); break;
#if FC_NV > 2
    case 2: FN(patch_gemm_block)(xf, offs, U, A, Kp, nb, Q, pitch, step, 2); break;
    case 3: FN(patch_gemm_block)(xf, offs, U, A, Kp, nb, Q, pitch, step, 3); break;
#endif
    default: FN(patch_gemm_block)(xf, offs, U, A, Kp, nb, Q, pitch, step, FC_NV); break;
    }
}
#endif

/* A[t, k] += sum over the band's pixels of V[t, px] * U[px, k], rows t < rows and
 * columns k < kn (Kp >= kn: U's and A's row length, a multiple of FC_NV*VL); V[t, px]
 * is xf[offs[t] + b*pitch + q*step] for pixel px = b*Q + q. Columns past the last whole
 * block of FC_NV vectors take a block of as few vectors as hold them (K = 32 of a 64-
 * column block on AVX-512: half the FMAs); their padding columns get sums of U's zero
 * columns. */
static void FN(patch_gemm)(const T *xf, const fc_int *offs, const T *U, T *A, fc_int rows,
                           fc_int Kp, fc_int kn, fc_int nb, fc_int Q, fc_int pitch, fc_int step)
{
    fc_int t0 = 0;
#if FC_VECTORS
    const fc_int CW = FC_NV * VL;                  /* columns per register block */
    const fc_int nv = (kn % CW + VL - 1) / VL;     /* vectors of the last, narrower block */
    for (; t0 + FC_MR <= rows; t0 += FC_MR) {
        fc_int k0 = 0;
        for (; k0 + CW <= kn; k0 += CW)
            FN(patch_gemm_nv)(xf, offs + t0, U + k0, A + t0 * Kp + k0, Kp, nb, Q, pitch, step,
                              FC_NV);
        if (k0 < kn)
            FN(patch_gemm_nv)(xf, offs + t0, U + k0, A + t0 * Kp + k0, Kp, nb, Q, pitch, step,
                              nv);
    }
#endif
    if (t0 < rows)
        FN(patch_gemm_tail)(xf, offs, U, A, t0, rows, 0, kn, Kp, nb, Q, pitch, step);
}

/* D[px*Kgp + k] = src[k*ld + px] for k < Kg, px < npx: dy's band of Kg planes (ld
 * apart) made pixel-major by register transposes, read 16 lines ahead (the planes
 * side by side are more streams than the hardware prefetchers follow). A scalar loop
 * of 16 x 16 blocks had taken a fifth of ResNet-50's 7x7/2 stem's weight gradient
 * (AMD EPYC Zen 4). */
static void FN(pixel_major)(const T *src, fc_int ld, fc_int Kg, fc_int npx, T *D, fc_int Kgp)
{
    FN(transpose_matrix_ahead)(src, ld, D, Kgp, Kg, npx, 1024 / sizeof(T));
}

/* -- 1x1 stride-1 convolution with a packed weight: pointwise_panel ------------------- */

/* The register block's columns: FC_PW_COLS pixels (one FC_NV x VL block row with
 * vectors; 16 in the scalar build), and output channels in the channels-last panels. */
#if FC_VECTORS
#  define FC_PW_COLS (FC_NV * VL)
#else
#  define FC_PW_COLS 16
#endif
/* The widest NCHW panel: FC_PWP_COLS pixels, whole register blocks spanning 256 bytes
 * of each output row (4 cache lines), so a row block's stores run 4 lines, not one
 * line in each of FC_MR rows, every row on its own page. AVX-512 float32: one block of
 * 64; AVX2: 4 blocks of 16. The caller may ask for fewer blocks (a panel of many input
 * channels then stays in cache). */
#if FC_VECTORS
#  define FC_PWP_COLS (FC_PW_COLS * ((256 / (int)sizeof(T) + FC_PW_COLS - 1) / FC_PW_COLS))
#else
#  define FC_PWP_COLS FC_PW_COLS
#endif

/* v with the activation: 1 ReLU, 2 ReLU6; NaN stays NaN (as np.maximum / np.clip). */
static inline T FN(pw_act)(T v, int act)
{
    if (act >= 1 && v < 0) v = 0;
    if (act == 2 && v > 6) v = 6;
    return v;
}

#if FC_VECTORS
/* the activation on a vector, by masks (NaN compares false: it stays) */
static inline FN(vec) FN(pw_vact)(FN(vec) v, int act)
{
    if (act == 0) return v;
    const FN(vec) zero = {0}, six = zero + (T)6;
    v = FN(vselect)(v < zero, zero, v);
    return act == 2 ? FN(vselect)(v > six, six, v) : v;
}
#endif

#if FC_VECTORS
/* Output row block kb of pointwise_panel on nv vectors of the panel's pixels (always
 * inlined with nv a constant: the accumulators are registers). */
static inline __attribute__((always_inline)) void FN(pw_panel_block)(
    const T *restrict panel, fc_int CW, fc_int C, const T *restrict W, fc_int wk,
    fc_int wc, fc_int HW, fc_int p0, fc_int np, fc_int K, fc_int kb, T *restrict y,
    const T *bias, const T *res, int act, int nv)
{
    /* the block's weight rows, read where they are (rows past K repeat the last one:
     * computed, never stored) */
    const T *wr[FC_MR];
    for (int t = 0; t < FC_MR; t++)
        wr[t] = W + (kb * FC_MR + t < K ? kb * FC_MR + t : K - 1) * wk;
    FN(vec) acc[FC_MR][FC_NV];
    const FN(vec) vzero = {0};
    for (int t = 0; t < FC_MR; t++)
        for (int k = 0; k < nv; k++) acc[t][k] = vzero;
    /* the block's residual and output rows (FC_MR rows HW apart, which the hardware
     * prefetcher does not follow) start on their way while the block computes */
    for (int t = 0; t < FC_MR && kb * FC_MR + t < K; t++) {
        const fc_int off = (kb * FC_MR + t) * HW + p0;
        for (fc_int q = 0; q < np; q += 64 / (fc_int)sizeof(T)) {
            if (res != NULL) __builtin_prefetch(res + off + q, 0);
            __builtin_prefetch(y + off + q, 1);
        }
    }
    for (fc_int c = 0, cw = 0; c < C; c++, cw += wc) {  /* cw: c's offset in a row */
        FN(vec) us[FC_NV];
        for (int k = 0; k < nv; k++) us[k] = FN(vload)(panel + c * CW + k * VL);
        for (int t = 0; t < FC_MR; t++) {
            const T wt = wr[t][cw];
            for (int k = 0; k < nv; k++) acc[t][k] += us[k] * wt;
        }
    }
    for (int t = 0; t < FC_MR; t++) {
        const fc_int row = kb * FC_MR + t;
        if (row >= K) break;
        T *yr = y + row * HW + p0;
        const T *rr = res == NULL ? NULL : res + row * HW + p0;
        for (int k = 0; k < nv; k++) {
            FN(vec) v = acc[t][k];
            if (bias != NULL) v += bias[row];
            const fc_int q0 = k * VL;
            if (q0 + VL <= np) {                         /* a whole vector of pixels */
                if (rr != NULL) v += FN(vload)(rr + q0);
                FN(vstore)(yr + q0, FN(pw_vact)(v, act));
            } else if (q0 < np) {                        /* the panel's last pixels */
                T tmp[VL];
                FN(vstore)(tmp, v);
                for (fc_int q = q0; q < np; q++) {
                    T u = tmp[q - q0];
                    if (rr != NULL) u += rr[q];
                    yr[q] = FN(pw_act)(u, act);
                }
            }
        }
    }
}
#endif

/* y[k*HW + p] = act(sum_c W[k, c] x[c*HW + p] + bias[k] + res[k*HW + p]) for the
 * pixels p in [p0, p0 + np) (np <= CW) and the output channels of row blocks
 * kb in [kb0, kb1) (FC_MR channels a block; rows >= K skipped). x: C input planes HW
 * apart; W[k, c] at W[k*wk + c*wc], read where it is (no derived copy, so nothing to
 * check against a weight changed between calls): the weight (K, C) as it is (wk = C,
 * wc = 1), or a (C, K) weight read transposed (wk = 1, wc = K of the weight: the 1x1
 * input gradient); bias, res: NULL when absent; panel: C * CW elements
 * of scratch (CW: a multiple of FC_PW_COLS, at most FC_PWP_COLS), which gets the
 * pixels' columns (zero past np; unless ``fill`` is
 * 0: the panel holds them already, from the caller's previous call). Per row block, each
 * FC_MR x FC_PW_COLS register block of the panel runs in registers over all of C and
 * the epilogue runs on it before its one store. A short panel (an image's last
 * pixels) runs only the blocks and vectors it fills. */
static void FN(pointwise_panel)(const T *x, fc_int C, fc_int HW, fc_int p0, fc_int np,
                                const T *W, fc_int wk, fc_int wc, fc_int K, fc_int kb0,
                                fc_int kb1, T *y,
                                const T *bias, const T *res, int act, T *panel,
                                fc_int CW, int fill)
{
    for (fc_int c = 0; c < C && fill; c++) {
        memcpy(panel + c * CW, x + c * HW + p0, (size_t)np * sizeof(T));
        if (np < CW) memset(panel + c * CW + np, 0, (size_t)(CW - np) * sizeof(T));
    }
#if FC_VECTORS
    for (fc_int kb = kb0; kb < kb1; kb++)
        for (fc_int j0 = 0; j0 < np; j0 += FC_PW_COLS) {    /* the panel's blocks */
            const fc_int nj = np - j0 < FC_PW_COLS ? np - j0 : FC_PW_COLS;
            const T *pj = panel + j0;
            switch ((int)((nj + VL - 1) / VL)) {  /* each a constant: registers known */
            case 1: FN(pw_panel_block)(pj, CW, C, W, wk, wc, HW, p0 + j0, nj, K, kb, y,
                                       bias, res, act, 1);
                    break;
#if FC_NV > 2
            case 2: FN(pw_panel_block)(pj, CW, C, W, wk, wc, HW, p0 + j0, nj, K, kb, y,
                                       bias, res, act, 2);
                    break;
            case 3: FN(pw_panel_block)(pj, CW, C, W, wk, wc, HW, p0 + j0, nj, K, kb, y,
                                       bias, res, act, 3);
                    break;
#endif
            default: FN(pw_panel_block)(pj, CW, C, W, wk, wc, HW, p0 + j0, nj, K, kb, y,
                                       bias, res, act, FC_NV);
            }
        }
#else
    for (fc_int kb = kb0; kb < kb1; kb++) {
        T acc[FC_MR][FC_PW_COLS];
        memset(acc, 0, sizeof acc);
        for (int t = 0; t < FC_MR && kb * FC_MR + t < K; t++)
            for (fc_int c = 0; c < C; c++)
                for (fc_int q = 0; q < CW; q++)
                    acc[t][q] += panel[c * CW + q] * W[(kb * FC_MR + t) * wk + c * wc];
        for (int t = 0; t < FC_MR; t++) {
            const fc_int row = kb * FC_MR + t;
            if (row >= K) break;
            for (fc_int q = 0; q < np; q++) {
                T u = acc[t][q];
                if (bias != NULL) u += bias[row];
                if (res != NULL) u += res[row * HW + p0 + q];
                y[row * HW + p0 + q] = FN(pw_act)(u, act);
            }
        }
    }
#endif
}

/* The panel of a strided 1x1 layer (no padding): panel[c*CW + j] = x[c*HW + (o / Q)*sh*W
 * + (o % Q)*sw] for output pixels o = p0 + j < p0 + np (Q per row), 0 past np (CW as
 * pointwise_panel's); x: C input planes HW apart, rows W wide. pointwise_panel then runs
 * on it with fill 0. */
static void FN(pointwise_gather)(const T *x, fc_int C, fc_int HW, fc_int W, fc_int Q,
                                 fc_int sh, fc_int sw, fc_int p0, fc_int np, T *panel,
                                 fc_int CW)
{
    fc_int off[FC_PWP_COLS];
    for (fc_int j = 0; j < np; j++) {
        const fc_int o = p0 + j;
        off[j] = o / Q * sh * W + o % Q * sw;
    }
    for (fc_int c = 0; c < C; c++) {
        const T *xc = x + c * HW;
        T *pc = panel + c * CW;
        for (fc_int j = 0; j < np; j++) pc[j] = xc[off[j]];
        for (fc_int j = np; j < CW; j++) pc[j] = 0;
    }
}

/* The most pixels of a pointwise_panel call (its widest panel), in this variant. */
static fc_int FN(pointwise_panel_cols)(void) { return FC_PWP_COLS; }

/* The columns of the FC_MR-row register block, in this variant (FC_NV vectors): the
 * output channels of a channels-last panel (pointwise_nhwc, conv_nhwc) and of a
 * patch_gemm block. */
static fc_int FN(pointwise_cols)(void) { return FC_PW_COLS; }

/* Output pixel j's first patch input: x + j * xstep, or (rowstep > 0: output rows of
 * qrow pixels, each rowstep further in the input) that of column j % qrow in row
 * j / qrow. */
static inline const T *FN(pixel_at)(const T *x, fc_int j, fc_int xstep, fc_int qrow,
                                    fc_int rowstep)
{
    return rowstep == 0 ? x + j * xstep : x + j / qrow * rowstep + j % qrow * xstep;
}

#if FC_VECTORS
/* The pixel rows of pointwise_nhwc's register block for nv vectors of output
 * channels: about 24 accumulators of 32 zmm (FC_MR rows at the full FC_NV), 12 of 16
 * ymm or xmm (the weight's vectors and a broadcast take the rest: more spills) */
#if defined(__AVX512F__)
#  define FC_PWN_ROWS(nv) ((nv) == 1 ? 16 : (nv) == 2 ? 12 : (nv) == 3 ? 8 : FC_MR)
#else
#  define FC_PWN_ROWS(nv) ((nv) == 1 ? 12 : 6)
#endif

/* Half a vector (ymm with AVX-512, xmm with AVX2): the last channels of a 1x1 layer
 * whose panel is a vector and a half wide (24 float32 output channels with AVX-512).
 * As two whole vectors, a quarter of the FMAs' lanes were lost: MobileNet-v2's
 * 96->24 and 144->24 layers ran at 68% of the FMA peak (AMD EPYC Zen 4, whose zmm
 * FMA is two ymm halves). */
#define FC_HALF (FC_VB >= 32)
#if FC_HALF
typedef T FN(hvec) __attribute__((vector_size(FC_VB / 2)));
typedef __typeof__((FN(hvec)){0} < (FN(hvec)){0}) FN(hvmask);

static inline FN(hvec) FN(hvload)(const T *p)
{
    FN(hvec) v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void FN(hvstore)(T *p, FN(hvec) v) { memcpy(p, &v, sizeof v); }

/* pw_vact on half a vector */
static inline FN(hvec) FN(pw_hvact)(FN(hvec) v, int act)
{
    if (act == 0) return v;
    const FN(hvec) zero = {0}, six = zero + (T)6;
    v = (FN(hvec))(~(v < zero) & (FN(hvmask))v);
    if (act != 2) return v;
    const FN(hvmask) big = v > six;
    return (FN(hvec))((big & (FN(hvmask))six) | (~big & (FN(hvmask))v));
}
#endif

/* mr output pixels x nv vectors of output channels from k0, channels last, in
 * registers over the n inputs of a pixel's patch (always inlined, with mr, nv, half
 * and whether offs is NULL constants: the accumulators are registers, the unused ones
 * gone): whole vectors, or with half the last of them half a vector, which ends at K;
 * with AVX-512 all before K (see the epilogue). The block's pixels are q .. q + mr - 1;
 * pixel j's patch input i is pixel_at(x, j, ...)[offs[i]] (offs NULL: [i], a 1x1
 * layer's row of channels); Wp: the weight's panel, (n, FC_PW_COLS)
 * contiguous, read in order; y, res: rows of K channels per pixel, consecutive (res
 * may be y: each element is read before its own store, Winograd's streamed sums). */
static inline __attribute__((always_inline)) void FN(nhwc_block)(const T *restrict x, fc_int q,
                                     fc_int xstep, fc_int qrow, fc_int rowstep,
                                     const fc_int *restrict offs, fc_int n,
                                     const T *restrict Wp, fc_int K, fc_int k0, T *y,
                                     const T *bias, const T *res, int act, int mr, int nv,
                                     int half)
{
    const int nw = nv - half;                   /* whole vectors */
    FN(vec) acc[16][FC_NV];
    const FN(vec) vzero = {0};
    for (int t = 0; t < mr; t++)
        for (int k = 0; k < nw; k++) acc[t][k] = vzero;
#if FC_HALF
    FN(hvec) hacc[16];
    const FN(hvec) hzero = {0};
    for (int t = 0; t < mr; t++) hacc[t] = hzero;
#endif
    /* the residual's and the output's lines of this block, fetched while the sums run:
     * read only in the epilogue, they were a cache miss each there (a 1x1 layer of 64
     * inputs took twice as long with a residual) */
    for (int t = 0; t < mr; t++)
        for (int k = 0; k < nv * VL; k += 64 / (int)sizeof(T)) {
            if (res != NULL) __builtin_prefetch(res + t * K + k0 + k, 0, 3);
            __builtin_prefetch(y + t * K + k0 + k, 1, 3);
        }
    /* each pixel's own pointer, so each broadcast is one base + index load: as
     * x[t * xstep + o], GCC kept xstep on the stack and chained the sums (1.26-1.34x on
     * 3x3 layers, 1.03-1.14x on 1x1, AVX2 on AMD EPYC Zen 3) */
    const T *xr[16];
    for (int t = 0; t < mr; t++) xr[t] = FN(pixel_at)(x, q + t, xstep, qrow, rowstep);
    /* a 1x1 layer's next block of pixels (mr rows of n channels, contiguous after this
     * block's), prefetched a line per input channel while this one sums */
    const char *nx = (const char *)FN(pixel_at)(x, q + mr, xstep, qrow, rowstep);
    const fc_int nx_lines = offs == NULL ? (mr * n * (fc_int)sizeof(T) + 63) / 64 : 0;
    for (fc_int i = 0; i < n; i++) {
        FN(vec) ws[FC_NV];
        const fc_int o = offs == NULL ? i : offs[i];
        if (i < nx_lines) __builtin_prefetch(nx + i * 64, 0, 3);
        for (int k = 0; k < nw; k++) ws[k] = FN(vload)(Wp + i * FC_PW_COLS + k * VL);
#if FC_HALF
        const FN(hvec) wh = half ? FN(hvload)(Wp + i * FC_PW_COLS + nw * VL) : hzero;
#endif
        for (int t = 0; t < mr; t++) {
            const T xv = xr[t][o];                     /* broadcast by the operator */
            for (int k = 0; k < nw; k++) acc[t][k] += ws[k] * xv;
#if FC_HALF
            if (half) hacc[t] += wh * xv;
#endif
        }
    }
    /* the epilogue's operands passed through an empty asm, so nothing derived from
     * them is computed before the sums: GCC had held seven such addresses and tests
     * in registers across the loop and parked pixel pointers in xmm registers and on
     * the stack instead (a vmovq each, on an FMA port: Intel Xeon Ice Lake). One
     * statement: five FC_OPAQUEs put 36 more stack reloads in pointwise_weight's loops */
    __asm__("" : "+r"(y), "+r"(K), "+r"(k0), "+r"(bias), "+r"(res));
    /* the epilogue. AVX-512: whole vectors only (a panel whose channels end inside a
     * vector runs through a tile, nhwc_pixels_part), unrolled, each accumulator read
     * from its register: with a loop over the rows and a branch per vector for the
     * channels past K, GCC stored all the accumulators to the stack to read them back,
     * and a 1x1 layer of 16 or 32 inputs ran 1.12-1.21x faster without. The 16-register
     * variants keep that loop and branch: there the AVX-512 form made ResNet-50's
     * channels-last 3x3/2 and 1x1/2 layers 15-20% slower (AMD EPYC Zen 4 forced to
     * AVX2, session 28). */
#define FC_NHWC_STORE_ROW(t)                                                            \
    do {                                                                                \
        for (int k = 0; k < nw; k++) {                                                  \
            FN(vec) v = acc[t][k];                                                      \
            if (bias != NULL) v += FN(vload)(bias + k0 + k * VL);                       \
            if (res != NULL) v += FN(vload)(res + (t) * K + k0 + k * VL);               \
            FN(vstore)(y + (t) * K + k0 + k * VL, FN(pw_vact)(v, act));                 \
        }                                                                               \
        FC_NHWC_STORE_HALF(t);                                                          \
    } while (0)
#if FC_HALF
#  define FC_NHWC_STORE_HALF(t)                                                         \
    if (half) {                                                                         \
        const fc_int h0 = k0 + nw * VL;                                                 \
        FN(hvec) v = hacc[t];                                                           \
        if (bias != NULL) v += FN(hvload)(bias + h0);                                   \
        if (res != NULL) v += FN(hvload)(res + (t) * K + h0);                           \
        FN(hvstore)(y + (t) * K + h0, FN(pw_hvact)(v, act));                            \
    }
#else
#  define FC_NHWC_STORE_HALF(t)
#endif
#if FC_VB == 64
#pragma GCC unroll 16
    for (int t = 0; t < mr; t++)
        FC_NHWC_STORE_ROW(t);
#else
    if (half || k0 + nv * VL <= K) {
        for (int t = 0; t < mr; t++)
            FC_NHWC_STORE_ROW(t);
        return;
    }
    for (int t = 0; t < mr; t++) {
        for (int k = 0; k < nv; k++) {
            const fc_int q0 = k0 + k * VL;
            if (q0 >= K) break;
            FN(vec) v = acc[t][k];
            if (q0 + VL <= K) {                         /* a whole vector of channels */
                if (bias != NULL) v += FN(vload)(bias + q0);
                if (res != NULL) v += FN(vload)(res + t * K + q0);
                FN(vstore)(y + t * K + q0, FN(pw_vact)(v, act));
            } else {                                     /* the last channels */
                T tmp[VL];
                FN(vstore)(tmp, v);
                for (fc_int q = q0; q < K; q++) {
                    T u = tmp[q - q0];
                    if (bias != NULL) u += bias[q];
                    if (res != NULL) u += res[t * K + q];
                    y[t * K + q] = FN(pw_act)(u, act);
                }
            }
        }
    }
#endif
#undef FC_NHWC_STORE_HALF
#undef FC_NHWC_STORE_ROW
}

/* output pixels [q0, q1) x the nv vectors of a panel whose channels end inside its
 * last vector (K - k0 < nv * VL, not the half case): each block of FC_PWN_ROWS(nv)
 * pixels (then single pixels) summed by nhwc_block into whole vectors of a tile, then
 * its channels before K stored with the epilogue, added in the same order as
 * nhwc_block's (the same bits). Only a layer's last panel, when K is no multiple of
 * the vector (a 1000-class classifier), comes here, and only with AVX-512 (the other
 * variants' nhwc_block stores such a panel itself). */
static inline __attribute__((always_inline)) void FN(nhwc_pixels_part)(const T *x, fc_int xstep,
                                     fc_int qrow, fc_int rowstep, const fc_int *offs,
                                     fc_int n, const T *Wp, fc_int K,
                                     fc_int q0, fc_int q1, fc_int k0, T *y, const T *bias,
                                     const T *res, int act, int nv)
{
    const int mr = FC_PWN_ROWS(nv);
    const fc_int ld = nv * VL;                  /* the tile's row: whole vectors */
    T tile[16 * FC_NV * VL];
    for (fc_int q = q0; q < q1;) {
        const int m = q1 - q >= mr ? mr : 1;
        if (m == mr)
            FN(nhwc_block)(x, q, xstep, qrow, rowstep, offs, n, Wp, ld, 0, tile, NULL, NULL,
                           0, mr, nv, 0);
        else
            FN(nhwc_block)(x, q, xstep, qrow, rowstep, offs, n, Wp, ld, 0, tile, NULL, NULL,
                           0, 1, nv, 0);
        for (int t = 0; t < m; t++)
            for (fc_int k = k0; k < K; k++) {
                T u = tile[t * ld + k - k0];
                if (bias != NULL) u += bias[k];
                if (res != NULL) u += res[(q + t) * K + k];
                y[(q + t) * K + k] = FN(pw_act)(u, act);
            }
        q += m;
    }
}

/* output pixels [q0, q1) (consecutive in y and res; pixel q's patch at x + q * xstep)
 * x nv vectors of output channels from k0: full blocks of FC_PWN_ROWS(nv) pixels,
 * then the rest one at a time; or with ``tails`` (an output row of conv_nhwc,
 * Winograd's tiles) blocks as even as the count allows, each at least half of
 * FC_PWN_ROWS(nv) (a 7-pixel row 4 + 3, not 6 + 1: ResNet-50's 3x3/2 layers ran
 * 1.19-1.24x faster), fewer pixels than that in blocks of 8, 4, 2 and 1, which
 * still share each weight load (each pixel's sum runs in the same order whatever
 * its block: the same bits) (nv and tails constants when inlined; the 1x1 kernel,
 * whose calls have many pixels, ran 5-10% slower in MobileNet-v2 with the tail
 * blocks compiled in) */
#define FC_NHWC_BLOCK(m)                                                                \
    FN(nhwc_block)(x, q, xstep, qrow, rowstep, offs, n, Wp, K, k0, y + q * K, bias,     \
                   res == NULL ? NULL : res + q * K, act, m, nv, half)
static inline __attribute__((always_inline)) void FN(nhwc_pixels_nv)(const T *x, fc_int xstep,
                                     fc_int qrow, fc_int rowstep, const fc_int *offs,
                                     fc_int n, const T *Wp, fc_int K,
                                     fc_int q0, fc_int q1, fc_int k0, T *y, const T *bias,
                                     const T *res, int act, int nv, int tails, int half)
{
    const int mr = FC_PWN_ROWS(nv), lo = (mr + 1) / 2;
    fc_int q = q0;
    if (tails && q1 - q0 >= lo) {
        /* as many blocks as of mr pixels, as even as the count allows (7 = 4 + 3, 14 =
         * 5 + 5 + 4): none under half of mr, whose FMAs would wait on each other's
         * latency (a lone pixel's ran at a quarter of the rate) */
        const fc_int cnt = q1 - q0, nb = (cnt + mr - 1) / mr, base = cnt / nb;
        for (fc_int b = 0; b < nb; b++) {
            const int mb = (int)(base + (b < cnt % nb));
#define FC_NHWC_EVEN(m) else if (mr >= (m) && (m) >= lo && mb == (m)) FC_NHWC_BLOCK(m);
            if (0) {}
            FC_NHWC_EVEN(16) FC_NHWC_EVEN(15) FC_NHWC_EVEN(14) FC_NHWC_EVEN(13)
            FC_NHWC_EVEN(12) FC_NHWC_EVEN(11) FC_NHWC_EVEN(10) FC_NHWC_EVEN(9)
            FC_NHWC_EVEN(8) FC_NHWC_EVEN(7) FC_NHWC_EVEN(6) FC_NHWC_EVEN(5)
            FC_NHWC_EVEN(4) FC_NHWC_EVEN(3) FC_NHWC_EVEN(2) FC_NHWC_EVEN(1)
#undef FC_NHWC_EVEN
            q += mb;
        }
        return;
    }
    for (; q + mr <= q1; q += mr)
        FC_NHWC_BLOCK(mr);
    if (!tails) {
        for (; q < q1; q++)
            FC_NHWC_BLOCK(1);
        return;
    }
    /* fewer than lo: blocks of 8, 4, 2 and 1 */
    if (mr > 8 && q + 8 <= q1) {
        FC_NHWC_BLOCK(8);
        q += 8;
    }
    if (mr > 4 && q + 4 <= q1) {
        FC_NHWC_BLOCK(4);
        q += 4;
    }
    if (q + 2 <= q1) {
        FC_NHWC_BLOCK(2);
        q += 2;
    }
    if (q < q1)
        FC_NHWC_BLOCK(1);
}
#undef FC_NHWC_BLOCK
#endif

/* The output pixels [q0, q1) x output channels [k0, k0 + FC_PW_COLS) ∩ [0, K) of both
 * channels-last kernels (pointwise_nhwc: offs NULL; conv_nhwc), the blocks as wide
 * as the panel's channels: each case a constant, so the blocks' registers are known
 * (inlined with offs NULL or not, so the 1x1's loop reads its row directly). Wp: the
 * panel, (n, FC_PW_COLS); the scalar build computes element by element. */
static inline __attribute__((always_inline)) void FN(nhwc_pixels)(const T *x, fc_int xstep,
                                     fc_int qrow, fc_int rowstep, const fc_int *offs,
                                     fc_int n, const T *Wp, fc_int K,
                                     fc_int q0, fc_int q1, fc_int k0, T *y, const T *bias,
                                     const T *res, int act, int tails)
{
#if FC_VECTORS
    const fc_int width = K - k0 < FC_PW_COLS ? K - k0 : FC_PW_COLS;
    const int nv = (int)((width + VL - 1) / VL);
#if FC_HALF
    if (nv == 2 && !tails && width == VL + VL / 2) {   /* the 1x1's: a vector and a half */
        FN(nhwc_pixels_nv)(x, xstep, qrow, rowstep, offs, n, Wp, K, q0, q1, k0, y, bias, res,
                           act, 2, 0, 1);
        return;
    }
#endif
    /* the panel's nv vectors as a constant: whole, or through the tile (AVX-512) */
#define FC_NHWC_RUN(v)                                                                  \
    if (FC_VB == 64 && width % VL != 0)                                                 \
        FN(nhwc_pixels_part)(x, xstep, qrow, rowstep, offs, n, Wp, K, q0, q1, k0, y,      \
                             bias, res, act, v);                                        \
    else                                                                                \
        FN(nhwc_pixels_nv)(x, xstep, qrow, rowstep, offs, n, Wp, K, q0, q1, k0, y, bias, \
                           res, act, v,                                                 \
                           tails, 0);
    switch (nv) {
    case 1: FC_NHWC_RUN(1) break;
    case 2: FC_NHWC_RUN(2) break;
#if FC_NV > 2
    case 3: FC_NHWC_RUN(3) break;
#endif
    default: FC_NHWC_RUN(FC_NV)
    }
#undef FC_NHWC_RUN
#else
    const fc_int k1 = k0 + FC_PW_COLS < K ? k0 + FC_PW_COLS : K;
    for (fc_int q = q0; q < q1; q++)
        for (fc_int k = k0; k < k1; k++) {
            T u = 0;
            for (fc_int i = 0; i < n; i++)
                u += FN(pixel_at)(x, q, xstep, qrow, rowstep)[offs == NULL ? i : offs[i]]
                     * Wp[i * FC_PW_COLS + k - k0];
            if (bias != NULL) u += bias[k];
            if (res != NULL) u += res[q * K + k];
            y[q * K + k] = FN(pw_act)(u, act);
        }
#endif
}

/* Channels last: y[p*K + k] = act(sum_c x[p*C + c] W[k, c] + bias[k] + res[p*K + k])
 * for pixels p in [p0, p1) and output channels [k0, k0 + FC_PW_COLS) ∩ [0, K) (k0 a
 * multiple of FC_PW_COLS). Wt: the weight in panels of FC_PW_COLS output channels,
 * each (C, FC_PW_COLS) contiguous (panel k0 / FC_PW_COLS at Wt + k0 * C), zero past K,
 * so a block streams its panel in order; x, y, res: rows of C and K values per pixel.
 * A block of pixels x the vectors of output channels the panel has (fewer in the last
 * panel of K: narrower blocks of more pixels, so no lanes go to channels past K) stays
 * in registers over all of C, the epilogue before the one store. */
static void FN(pointwise_nhwc)(const T *x, fc_int C, const T *Wt, fc_int K, fc_int p0,
                               fc_int p1, fc_int k0, T *y, const T *bias, const T *res,
                               int act)
{
    /* this panel: (C, FC_PW_COLS); pixel p's row of channels at x + p * C */
    FN(nhwc_pixels)(x, C, 0, 0, NULL, C, Wt + k0 * C, K, p0, p1, k0, y, bias, res, act, 0);
}

/* The 1x1 stride-1 weight gradient's GEMM (conv2d_weight's ``image_gemm``):
 * y[q*K + k] = sum_{i < n} x[q*xstep + i] Wp[i*FC_PW_COLS + k - k0], plus y[q*K + k]
 * where ``add`` (the sums of the pixels before), for rows q in [q0, q1) (dy's output
 * channels, n pixels each, xstep apart) and the panel's columns [k0, k0 + FC_PW_COLS)
 * ∩ [0, K) (input channels; Wp: the panel's n rows of FC_PW_COLS). pointwise_nhwc's
 * blocks, as even as the rows allow. */
static void FN(pointwise_weight)(const T *x, fc_int xstep, fc_int n, const T *Wp, fc_int K,
                                 fc_int q0, fc_int q1, fc_int k0, T *y, int add)
{
    FN(nhwc_pixels)(x, xstep, 0, 0, NULL, n, Wp, K, q0, q1, k0, y, NULL, add ? y : NULL, 0, 1);
}

/* -- 1x1 stride-1 input gradient, no transposed weight kept: pointwise_input ------- */

#if FC_VECTORS
/* The pixel block rows of pointwise_input (whatever the panel's width: dy's copy is
 * laid out by them): FC_PWN_ROWS at the full FC_NV. */
#define FC_PWI_ROWS FC_PWN_ROWS(FC_NV)

/* The rows of the pixel block at pixel q of a chunk of n: where n splits into blocks
 * of FC_PWI_ROWS and FC_PWI_ROWS - 1 (49 = 4 x 6 + 5 x 5), those, the wider first;
 * else blocks of FC_PWI_ROWS, then of 8, 4, 2 and 1 (a lone pixel's block runs at a
 * quarter of the FMA rate: its two accumulators wait on each other's latency) */
static inline int FN(pwi_rows)(fc_int q, fc_int n)
{
    const int mr = FC_PWI_ROWS;
    const fc_int blocks = (n + mr - 1) / mr, wide = n - blocks * (mr - 1);
    if (wide >= 0)
        return q < wide * mr ? mr : mr - 1;
    const fc_int left = n - q;
    return left >= mr ? mr : (mr > 8 && left >= 8) ? 8 : (mr > 4 && left >= 4) ? 4
           : left >= 2 ? 2 : 1;
}

/* dx[j*HW + t] = sum_k Wp[k*FC_PW_COLS + j] dp[k*mr + t] for pixels t < mr,
 * channels j < width (<= nv * VL) and k < K: mr pixels x nv vectors of channels in
 * registers over all K (always inlined with mr and nv constants), each of the
 * weight's rows one vector load per vector, each pixel's dy a broadcast from the
 * block's own copy (its K rows of mr pixels, read in order); the block then stored
 * transposed, a row of mr pixels per channel. */
static inline __attribute__((always_inline)) void FN(pwi_block)(
    const T *restrict dp, fc_int K, const T *restrict Wp, fc_int width,
    T *restrict dx, fc_int HW, int mr, int nv)
{
    FN(vec) acc[16][FC_NV];
    const FN(vec) vzero = {0};
    for (int t = 0; t < mr; t++)
        for (int v = 0; v < nv; v++) acc[t][v] = vzero;
    for (fc_int k = 0; k < K; k++) {
        FN(vec) w[FC_NV];
        for (int v = 0; v < nv; v++) w[v] = FN(vload)(Wp + k * FC_PW_COLS + v * VL);
        const T *d = dp + k * mr;
        for (int t = 0; t < mr; t++) {
            const T x = d[t];                          /* broadcast by the operator */
            for (int v = 0; v < nv; v++) acc[t][v] += w[v] * x;
        }
    }
#if FC_SHUFFLE
    /* per vector of channels and FC_TL pixels: a register transpose (FC_TROUND), then
     * a channel's pixels stored together, one vector (or its first lanes) per channel */
    for (int v = 0; v < nv; v++) {
        const int jn = (int)(width - v * VL < VL ? width - v * VL : VL);
        for (int i0 = 0; i0 < mr; i0 += FC_TL) {
            const int m = mr - i0 < FC_TL ? mr - i0 : FC_TL;
            FN(vec) r[FC_TL];
            for (int i = 0; i < FC_TL; i++) r[i] = i < m ? acc[i0 + i][v] : vzero;
            FC_TROUND(1) FC_TROUND(2) FC_TROUND(4) FC_TROUND(8)
            for (int j = 0; j < jn && j < FC_TL; j++) {  /* j < VL = FC_TL */
                T *d = dx + (v * VL + j) * HW + i0;
                if (m == FC_TL)
                    FN(vstore)(d, r[j]);
                else
                    memcpy(d, &r[j], (size_t)m * sizeof(T));
            }
        }
    }
#else
    T tmp[16][FC_NV * VL];
    for (int t = 0; t < mr; t++)
        for (int v = 0; v < nv; v++) FN(vstore)(tmp[t] + v * VL, acc[t][v]);
    for (fc_int j = 0; j < width; j++)
        for (int t = 0; t < mr; t++) dx[j * HW + t] = tmp[t][j];
#endif
}

/* pwi_block over the n pixels of a chunk, in blocks by pwi_rows: the block at pixel
 * q reads its copy of dy at dpack + q*K */
static inline __attribute__((always_inline)) void FN(pwi_pixels)(
    const T *dpack, fc_int K, const T *Wp, fc_int width, T *dx, fc_int HW, fc_int n,
    int nv)
{
    const int mr = FC_PWI_ROWS;
    for (fc_int q = 0; q < n;) {
        const int m = FN(pwi_rows)(q, n);
        const T *dp = dpack + q * K;
        if (m == mr)
            FN(pwi_block)(dp, K, Wp, width, dx + q, HW, mr, nv);
        else if (m == mr - 1)
            FN(pwi_block)(dp, K, Wp, width, dx + q, HW, mr - 1, nv);
        else if (mr > 8 && m == 8)
            FN(pwi_block)(dp, K, Wp, width, dx + q, HW, 8, nv);
        else if (mr > 4 && m == 4)
            FN(pwi_block)(dp, K, Wp, width, dx + q, HW, 4, nv);
        else if (m == 2)
            FN(pwi_block)(dp, K, Wp, width, dx + q, HW, 2, nv);
        else
            FN(pwi_block)(dp, K, Wp, width, dx + q, HW, 1, nv);
        q += m;
    }
}
#endif

#if FC_VECTORS
/* dst[k*m + t] = dy[k*HW + t] for k < K, t < m: a block of pixels' copy of dy (always
 * inlined: with m constant, each row a few moves) */
static inline __attribute__((always_inline)) void FN(pwi_copy)(
    const T *restrict dy, fc_int HW, fc_int K, T *restrict dst, int m)
{
    for (fc_int k = 0; k < K; k++)
        for (int t = 0; t < m; t++) dst[k * m + t] = dy[k * HW + t];
}

/* dst[k*FC_PW_COLS + j] = W[k*C + cp + j] for k < K, j < width, zero for j >= width */
static inline void FN(pwi_panel)(const T *W, fc_int C, fc_int K, fc_int cp, fc_int width,
                                 T *dst)
{
    for (fc_int k = 0; k < K; k++) {
        memcpy(dst + k * FC_PW_COLS, W + k * C + cp, (size_t)width * sizeof(T));
        if (width < FC_PW_COLS)
            memset(dst + k * FC_PW_COLS + width, 0, (size_t)(FC_PW_COLS - width) * sizeof(T));
    }
}
#endif

/* The 1x1 stride-1 input gradient of one image and group, channels [c0, c1) (c0 a
 * multiple of FC_PW_COLS) and pixels [p0, p1): dx[c*HW + p] = sum_k W[k*C + c]
 * dy[k*HW + p], k < K. W (K, C) is read as it is, its columns [c0, c1) copied to
 * wpack in panels of FC_PW_COLS, each K rows: all first (fillw 1; for a caller that
 * runs them on other chunks too: fillw 0 then reuses them), or each just before its
 * use (fillw 2: only the first panel's room is used). No transposed copy of W is
 * kept, so nothing to check against a weight changed between calls. dy's chunk is
 * copied to dpack (K * n, n = p1 - p0) by blocks of pixels (pwi_rows), each
 * block's K rows of its pixels together. Per panel, blocks of pixels x the panel's
 * vectors run in registers over all K (the panel stays in cache from one block to
 * the next), each stored transposed. */
static void FN(pointwise_input)(const T *dy, fc_int HW, fc_int K, const T *W, fc_int C,
                                fc_int c0, fc_int c1, fc_int p0, fc_int p1, T *dx,
                                T *wpack, int fillw, T *dpack)
{
#if FC_VECTORS
    /* dy's chunk copied block by block: a block's row k (its m pixels) at
     * dpack + q*K + k*m, read in order by the block (in place, HW apart, a row a page
     * for a large image: ResNet-50 res2's ran 1.2x slower) */
    const fc_int n = p1 - p0;
    for (fc_int q = 0; q < n;) {
        const int m = FN(pwi_rows)(q, n);
        if (m == FC_PWI_ROWS)                   /* the rows a constant: moves, no calls */
            FN(pwi_copy)(dy + p0 + q, HW, K, dpack + q * K, FC_PWI_ROWS);
        else if (m == FC_PWI_ROWS - 1)
            FN(pwi_copy)(dy + p0 + q, HW, K, dpack + q * K, FC_PWI_ROWS - 1);
        else
            FN(pwi_copy)(dy + p0 + q, HW, K, dpack + q * K, m);
        q += m;
    }
    /* the panels of [c0, c1), K rows of FC_PW_COLS each (zero past c1), read in order by
     * every block (in place, C apart, each row was a page of its own for a wide weight:
     * ResNet-50 res5's ran 1.8x slower) */
    for (fc_int cp = c0; cp < c1 && fillw == 1; cp += FC_PW_COLS)
        FN(pwi_panel)(W, C, K, cp, c1 - cp < FC_PW_COLS ? c1 - cp : FC_PW_COLS,
                      wpack + (cp - c0) * K);
#endif
    for (fc_int cp = c0; cp < c1; cp += FC_PW_COLS) {
        const fc_int width = c1 - cp < FC_PW_COLS ? c1 - cp : FC_PW_COLS;
#if FC_VECTORS
        const int nv = (int)((width + VL - 1) / VL);
        const T *Wp = wpack + (cp - c0) * K;
        if (fillw == 2) {                        /* this panel alone, just before use */
            FN(pwi_panel)(W, C, K, cp, width, wpack);
            Wp = wpack;
        }
        T *o = dx + cp * HW + p0;
        switch (nv) {                       /* each a constant: registers known */
        case 1: FN(pwi_pixels)(dpack, K, Wp, width, o, HW, n, 1);
                break;
#if FC_NV > 2
        case 2: FN(pwi_pixels)(dpack, K, Wp, width, o, HW, n, 2);
                break;
        case 3: FN(pwi_pixels)(dpack, K, Wp, width, o, HW, n, 3);
                break;
#endif
        default: FN(pwi_pixels)(dpack, K, Wp, width, o, HW, n, FC_NV);
        }
#else
        (void)wpack, (void)fillw, (void)dpack;
        for (fc_int c = cp; c < cp + width; c++)
            for (fc_int p = p0; p < p1; p++) {
                T u = 0;
                for (fc_int k = 0; k < K; k++) u += W[k * C + c] * dy[k * HW + p];
                dx[c * HW + p] = u;
            }
#endif
    }
}

/* Channels last, any kernel size, stride and dilation, one group: output rows y (rows,
 * Q, K) = act(conv + bias + res), output channels [k0, k0 + FC_PW_COLS) ∩ [0, K). x:
 * the first row's first patch input in the zero-padded image (Hp, Wp, C), i.e. padded
 * pixel (p*sh, 0), each next output row rowstep (sh*Wp*C) further; xstep: sw*C, the
 * step between neighbouring output pixels; offs[i], i < n = R*S*C: patch input i's
 * offset from a pixel's first, (r*dh*Wp + s*dw)*C + c (NULL for a 1x1 kernel: i);
 * Wt: the weight in panels of FC_PW_COLS output channels, each (n, FC_PW_COLS)
 * contiguous (panel k0 / FC_PW_COLS at Wt + k0 * n), the patch inputs in offs's
 * order, zero past K. The patches are read in place: no patch matrix. The rows'
 * pixels are one run of register blocks, which may span two rows: ResNet's 7-pixel
 * rows alone ran as blocks of 4 and 3 (NHWC_BAND_PIXELS in fastconv/_tuning.py). */
static void FN(conv_nhwc)(const T *x, fc_int rowstep, fc_int rows, fc_int xstep,
                          const fc_int *offs, fc_int n, const T *Wt, fc_int K, fc_int Q,
                          fc_int k0, T *y, const T *bias, const T *res, int act)
{
    /* this panel: (n, FC_PW_COLS); offs NULL (a 1x1 kernel, any stride): input i at
     * offset i, a copy compiled without the table's loads */
    if (offs == NULL)
        FN(nhwc_pixels)(x, xstep, Q, rowstep, NULL, n, Wt + k0 * n, K, 0, rows * Q, k0, y,
                        bias, res, act, 1);
    else
        FN(nhwc_pixels)(x, xstep, Q, rowstep, offs, n, Wt + k0 * n, K, 0, rows * Q, k0, y,
                        bias, res, act, 1);
}

/* -- depthwise convolution, channels last: depthwise_nhwc_row --------------------------- */

#if FC_VECTORS
/* The depthwise blocks' epilogue: mp pixels' accumulators (from column q of the row,
 * the vector of channels at c0), the residual added and the activation applied, stored */
static inline __attribute__((always_inline)) void FN(dw_nhwc_store)(const FN(vec) *acc, int mp,
                                     fc_int q, fc_int C, fc_int c0, T *restrict y,
                                     const T *res, int act)
{
    for (int i = 0; i < mp; i++) {
        FN(vec) v = acc[i];
        if (res != NULL) v += FN(vload)(res + (q + i) * C + c0);
        FN(vstore)(y + (q + i) * C + c0, FN(pw_vact)(v, act));
    }
}

/* mp pixels (inlined with mp a constant) from column q of one output row, one vector
 * of channels at c0, every tap (r in [r_lo, r_hi), s < S) inside the input: mp
 * independent chains of FMAs, a weight vector loaded once per tap for all of them. */
static inline __attribute__((always_inline)) void FN(dw_nhwc_block)(const T *restrict x, fc_int W, fc_int C,
                                     const T *restrict w, const fc_int S, fc_int h0,
                                     const fc_int sw, fc_int pl, fc_int dh, const fc_int dw,
                                     fc_int r_lo, fc_int r_hi, fc_int q, fc_int c0, FN(vec) b,
                                     T *restrict y, const T *res, int act, int mp)
{
    FN(vec) acc[8];
    for (int i = 0; i < mp; i++) acc[i] = b;
    for (fc_int r = r_lo; r < r_hi; r++) {
        const T *xr = x + ((h0 + r * dh) * W + q * sw - pl) * C + c0;
        for (fc_int s = 0; s < S; s++) {
            const FN(vec) wv = FN(vload)(w + (r * S + s) * C + c0);
            const T *xs = xr + s * dw * C;
            for (int i = 0; i < mp; i++) acc[i] += FN(vload)(xs + i * sw * C) * wv;
        }
    }
    FN(dw_nhwc_store)(acc, mp, q, C, c0, y, res, act);
}

/* dw_nhwc_block for 3 taps a row at stride sw (1 or 2, a constant) and dilation 1:
 * each input row's mp*sw + 3 - sw pixels loaded once into registers through a pointer
 * advanced by C (the empty asm hides its steps from GCC, which would fold them back
 * into j*C offsets), then the row's 3*mp FMAs from them. Indexed by j*C for every
 * pixel j (C a variable), the loads had wanted more address registers than x86 has:
 * GCC spilled them and the 3x3 depthwise ran at 40% of the FMA peak (AMD EPYC Zen 4).
 * The same FMAs in the same order as dw_nhwc_block's: the same bits. */
static inline __attribute__((always_inline)) void FN(dw_nhwc_block3)(const T *restrict x, fc_int W, fc_int C,
                                     const T *restrict w, fc_int h0, const int sw,
                                     fc_int pl, fc_int dh, fc_int r_lo, fc_int r_hi,
                                     fc_int q, fc_int c0, FN(vec) b, T *restrict y,
                                     const T *res, int act, const int mp)
{
    FN(vec) acc[8], xv[17];
    const int nx = mp * sw + 3 - sw;                /* the pixels a row of the block reads */
    for (int i = 0; i < mp; i++) acc[i] = b;
    for (fc_int r = r_lo; r < r_hi; r++) {
        const T *xp = x + ((h0 + r * dh) * W + q * sw - pl) * C + c0;
        for (int k = 0; k < nx; k++) {
            xv[k] = FN(vload)(xp);
            xp += C;
            FC_OPAQUE(xp);                          /* kept a running pointer (above) */
        }
        for (int s = 0; s < 3; s++) {
            const FN(vec) wv = FN(vload)(w + (r * 3 + s) * C + c0);
            for (int i = 0; i < mp; i++) acc[i] += xv[i * sw + s] * wv;
        }
    }
    FN(dw_nhwc_store)(acc, mp, q, C, c0, y, res, act);
}

/* Column j of one output row, nv vectors of channels from c0 (inlined with nv a
 * constant), its taps inside the input only (s in [cols[2j], cols[2j+1]), r in
 * [r_lo, r_hi)): nv independent chains of FMAs, in the blocks' order of taps. */
static inline __attribute__((always_inline)) void FN(dw_nhwc_pixel)(const T *restrict x, fc_int W, fc_int C,
                                     const T *restrict w, fc_int S, fc_int h0, fc_int sw,
                                     fc_int pl, fc_int dh, fc_int dw, fc_int r_lo,
                                     fc_int r_hi, fc_int j, const fc_int *cols, fc_int c0,
                                     const T *bias, T *restrict y, const T *res, int act,
                                     int nv)
{
    const FN(vec) vzero = {0};
    FN(vec) acc[4];
    for (int k = 0; k < nv; k++)
        acc[k] = bias == NULL ? vzero : FN(vload)(bias + c0 + k * VL);
    for (fc_int r = r_lo; r < r_hi; r++) {
        const T *xr = x + ((h0 + r * dh) * W + j * sw - pl) * C + c0;
        for (fc_int s = cols[2 * j]; s < cols[2 * j + 1]; s++)
            for (int k = 0; k < nv; k++)
                acc[k] += FN(vload)(xr + s * dw * C + k * VL)
                          * FN(vload)(w + (r * S + s) * C + c0 + k * VL);
    }
    for (int k = 0; k < nv; k++) {
        FN(vec) v = acc[k];
        if (res != NULL) v += FN(vload)(res + j * C + c0 + k * VL);
        FN(vstore)(y + j * C + c0 + k * VL, FN(pw_vact)(v, act));
    }
}
#endif

/* One output row of a depthwise convolution channels last (one output channel per
 * input channel): y[q*C + c] = act(sum over taps x[((h0 + r*dh)*W + q*sw - pl + s*dw)*C
 * + c] w[(r*S + s)*C + c] + bias[c] + res[q*C + c]) for q < Q, taps inside the input.
 * x: the image (H, W, C); w: (R, S, C); y, res: the row (Q, C) (res NULL if none);
 * cn: the channels computed, the first cn of each pixel's C (a panel of them, from
 * pointers offset to it); sh: the vertical stride (the next output row's input rows
 * start at h0 + sh; 0: none prefetched);
 * cols: per column q its taps [cols[2q], cols[2q+1]) inside the input; [qa, qb): the
 * columns whose every tap is inside. Vectors of channels, the columns of [qa, qb) in
 * blocks of 8 and 4 pixels (independent FMA chains), the rest one at a time; the last
 * C % lanes channels by a plain loop. */
static void FN(depthwise_nhwc_row)(const T *x, fc_int H, fc_int W, fc_int C, fc_int cn,
                                   const T *w,
                                   fc_int R, fc_int S, fc_int h0, fc_int sh, fc_int sw,
                                   fc_int pl, fc_int dh, fc_int dw, fc_int Q, fc_int qa, fc_int qb,
                                   const fc_int *cols, T *y, const T *bias, const T *res,
                                   int act)
{
    fc_int r_lo, r_hi;
    fc_valid_range(R, H, dh, h0, &r_lo, &r_hi);
#if FC_VECTORS
    const fc_int Cv = cn / VL * VL;                  /* channels in whole vectors */
    /* blocks of 8, then 4, columns whose taps are all inside, each block through
     * every vector of channels in turn (the x it reads, (8 + 2) pixels of 3 rows,
     * stays in L1; memory is read in order) */
    const FN(vec) vzero = {0};
    /* the input rows that the next output row reads and this one does not (each
     * thread's rows run in order), prefetched into L2 a share per block: read only as
     * the blocks reached them, an input out of L2 came in at the memory's latency
     * (MobileNet-v2's 3x3/2 on 96 channels at 112x112 ran 1.5x faster, AMD EPYC Zen 4) */
    const char *pf[8];
    int npf = 0;
    for (fc_int r = 0; r < R && npf < 8 && sh > 0; r++) {
        const fc_int row = h0 + sh + r * dh;
        if (row > h0 + (R - 1) * dh && row >= 0 && row < H)
            pf[npf++] = (const char *)(x + row * W * C);
    }
    const fc_int pf_bytes = W * C * (fc_int)sizeof(T);
    const fc_int blocks = qb > qa ? (qb - qa) / 8 + ((qb - qa) % 8 >= 4) : 0;
    fc_int pf_share = (pf_bytes / (blocks > 0 ? blocks : 1) + 63) / 64 * 64;
    fc_int pf_done = 0;
#define FC_DW_PREFETCH()                                                                \
    do {                                                                                \
        const fc_int pf_end = pf_done + pf_share < pf_bytes ? pf_done + pf_share : pf_bytes; \
        for (int i = 0; i < npf; i++)                                                   \
            for (fc_int o = pf_done; o < pf_end; o += 64)                               \
                __builtin_prefetch(pf[i] + o, 0, 2);                                    \
        pf_done = pf_end;                                                               \
    } while (0)
    fc_int q = qa;
    /* 3 taps a row at stride 1 or 2 (dilation 1): dw_nhwc_block3, each input pixel
     * of a row loaded once (10 or 17 loads a row for 24 FMAs, not 24) */
    const int s3 = S == 3 && dw == 1 ? (int)sw : 0;
    /* the columns from q in blocks of mp (8, then 4) */
#define FC_DW_BLOCKS(mp)                                                                \
    for (; q + (mp) <= qb; q += (mp)) {                                                 \
        FC_DW_PREFETCH();                                                               \
        for (fc_int c0 = 0; c0 < Cv; c0 += VL) {                                        \
            const FN(vec) b = bias == NULL ? vzero : FN(vload)(bias + c0);              \
            if (s3 == 1)                                                                \
                FN(dw_nhwc_block3)(x, W, C, w, h0, 1, pl, dh, r_lo, r_hi, q, c0, b, y,   \
                                   res, act, mp);                                       \
            else if (s3 == 2)                                                           \
                FN(dw_nhwc_block3)(x, W, C, w, h0, 2, pl, dh, r_lo, r_hi, q, c0, b, y,   \
                                   res, act, mp);                                       \
            else                                                                        \
                FN(dw_nhwc_block)(x, W, C, w, S, h0, sw, pl, dh, dw, r_lo, r_hi, q, c0,  \
                                  b, y, res, act, mp);                                  \
        }                                                                               \
    }
    FC_DW_BLOCKS(8)
    FC_DW_BLOCKS(4)
#undef FC_DW_BLOCKS
    pf_share = pf_bytes;
    FC_DW_PREFETCH();                                  /* what the blocks left */
#undef FC_DW_PREFETCH
    /* the other columns (at the edges, or left over from the blocks) pixel by pixel,
     * up to 4 vectors of channels at a time: independent chains of FMAs, not one */
    const fc_int done = q;
    for (fc_int j = 0; j < Q; j++) {
        if (j >= qa && j < done) continue;              /* in the blocks */
        fc_int cv = 0;
        for (; cv + 4 * VL <= Cv; cv += 4 * VL)
            FN(dw_nhwc_pixel)(x, W, C, w, S, h0, sw, pl, dh, dw, r_lo, r_hi, j, cols, cv,
                              bias, y, res, act, 4);
        switch ((int)((Cv - cv) / VL)) {
        case 3: FN(dw_nhwc_pixel)(x, W, C, w, S, h0, sw, pl, dh, dw, r_lo, r_hi, j, cols, cv,
                                  bias, y, res, act, 3);
                break;
        case 2: FN(dw_nhwc_pixel)(x, W, C, w, S, h0, sw, pl, dh, dw, r_lo, r_hi, j, cols, cv,
                                  bias, y, res, act, 2);
                break;
        case 1: FN(dw_nhwc_pixel)(x, W, C, w, S, h0, sw, pl, dh, dw, r_lo, r_hi, j, cols, cv,
                                  bias, y, res, act, 1);
                break;
        default: break;
        }
    }
#else
    const fc_int Cv = 0;
#endif
    for (fc_int c0 = Cv; c0 < cn; c0++)
        for (fc_int j = 0; j < Q; j++) {
            T u = bias == NULL ? 0 : bias[c0];
            for (fc_int r = r_lo; r < r_hi; r++)
                for (fc_int s = cols[2 * j]; s < cols[2 * j + 1]; s++)
                    u += x[((h0 + r * dh) * W + j * sw - pl + s * dw) * C + c0]
                         * w[(r * S + s) * C + c0];
            if (res != NULL) u += res[j * C + c0];
            y[j * C + c0] = FN(pw_act)(u, act);
        }
}

#undef FC_PW_COLS
#undef FC_PWP_COLS
#ifdef FC_PWN_ROWS
#  undef FC_PWN_ROWS
#  undef FC_PWI_ROWS
#endif

#ifdef VL
#  undef VL
#endif
#undef FN
