/* Direct convolution for one element type T (included by fc_isa.h with T, X and FN
 * defined, after fc_impl.h): the hot loops of direct.pyx. The layouts and the order
 * of work are direct.pyx's docstring; the index arithmetic is the Numba backend's
 * (fastconv/kernels/numba/direct.py), and is commented where it is used.
 *
 * The register block of the forward is FC_DMR pixels x FC_DNV vectors of output
 * channels (DKB channels): 14 x 2 zmm with AVX-512, 6 x 2 ymm with AVX2, 6 x 2 xmm in
 * the baseline; per tap and input channel FC_DNV vector loads of the weight and FC_DMR
 * broadcasts of the input feed FC_DMR * FC_DNV FMAs. The weight gradient's is WGR x
 * WGV (below).
 */

#if FC_VECTORS
typedef T FN(dvec) __attribute__((vector_size(FC_VB)));
#else
typedef T FN(dvec);
#endif
#define DVL ((fc_int)(sizeof(FN(dvec)) / sizeof(T)))   /* lanes of a vector */
#define DKB (FC_DNV * DVL)                              /* channels of a block */
/* the forward block's pixels rounded up to whole register transposes (FC_TL) */
#define FC_DMRT ((FC_DMR + FC_TL - 1) / FC_TL * FC_TL)
/* The weight gradient's register block: WGR input channels (a pixel's block of xf,
 * broadcast) x WGV vectors (WGK) of output channels (a pixel's block of dyb). With 32
 * zmm, a cache line of input channels x one vector of float32 or two of float64, as
 * the Numba backend's 16 x 16: a pixel's block of xf is one aligned line, so a stride-2
 * layer reads every other line of it; else FC_DMR x FC_DNV, the forward's. */
#if FC_VECTORS && defined(__AVX512F__)
#  define WGR ((fc_int)(64 / sizeof(T)))
#  define WGV ((int)(sizeof(T) == 8 ? 2 : 1))
#else
#  define WGR FC_DMR
#  define WGV FC_DNV
#endif
#define WGK (WGV * DVL)

static inline FN(dvec) FN(dload)(const T *p)
{
    FN(dvec) v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void FN(dstore)(T *p, FN(dvec) v) { memcpy(p, &v, sizeof v); }

static fc_int FN(direct_block)(void) { return DKB; }

static inline T FN(dact)(T v, int act)
{
    if (act != 0) v = v < 0 ? 0 : v;               /* selects: NaN stays NaN */
    if (act == 2) v = v > 6 ? 6 : v;
    return v;
}

/* dact on a vector (fc_impl.h's pw_vact: the same selects) */
static inline FN(dvec) FN(dvact)(FN(dvec) v, int act)
{
#if FC_VECTORS
    return FN(pw_vact)(v, act);
#else
    return FN(dact)(v, act);
#endif
}

#if FC_MASKED
#undef FC_DEINTERLEAVE
/* The even lanes of (a, b) (their elements 0, 2, ..., as one vector) and the odd ones */
#if FC_TSIZE == 4
#  define FC_DEINTERLEAVE(a, b, even, odd) do {                                          \
        const __m512i ie_ = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16,             \
                                             14, 12, 10, 8, 6, 4, 2, 0);                 \
        even = (FN(dvec))_mm512_permutex2var_ps((__m512)(a), ie_, (__m512)(b));          \
        odd = (FN(dvec))_mm512_permutex2var_ps((__m512)(a),                              \
                                               _mm512_add_epi32(ie_, _mm512_set1_epi32(1)), \
                                               (__m512)(b));                             \
    } while (0)
#else
#  define FC_DEINTERLEAVE(a, b, even, odd) do {                                          \
        const __m512i ie_ = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);                 \
        even = (FN(dvec))_mm512_permutex2var_pd((__m512d)(a), ie_, (__m512d)(b));        \
        odd = (FN(dvec))_mm512_permutex2var_pd((__m512d)(a),                             \
                                               _mm512_add_epi64(ie_, _mm512_set1_epi64(1)), \
                                               (__m512d)(b));                            \
    } while (0)
#endif

/* d0[i] = row[c0 + 2*i], d1[i] = row[c0 + 2*i + 1] for i < n, 0 where the column is
 * outside [0, W): a stride-2 row's two phases in one pass, each vector of both
 * deinterleaved from two loads masked to the row (the padding reads as 0). Gathered
 * phase by phase (a strided loop each), the 3x3/2 layers' phase planes had taken 5.7%
 * of ResNet-50's 128 -> 128 3x3/2 forward at N=1 (AMD EPYC Zen 4). */
static inline void FN(split_phases2)(T *restrict d0, T *restrict d1, const T *restrict row,
                                     fc_int W, fc_int c0, fc_int n)
{
    for (fc_int i = 0; i < n; i += DVL) {
        const fc_int c = c0 + 2 * i;
        unsigned mk[2];                             /* columns c .. c + 2*DVL inside row */
        for (int u = 0; u < 2; u++) {
            const fc_int cu = c + u * DVL;
            const fc_int lo = cu < 0 ? -cu : 0, hi = W - cu < DVL ? W - cu : DVL;
            mk[u] = hi <= lo ? 0u : (unsigned)FC_MASK(hi) & ~(unsigned)FC_MASK(lo);
        }
        FN(dvec) even, odd;
        FC_DEINTERLEAVE(FC_MLOAD(mk[0], row + c), FC_MLOAD(mk[1], row + c + DVL), even, odd);
        const unsigned ms = (unsigned)FC_MASK(n - i < DVL ? n - i : DVL);
        FC_MSTORE(d0 + i, ms, (FC_MVEC)even);
        FC_MSTORE(d1 + i, ms, (FC_MVEC)odd);
    }
}
#endif

/* -- layouts ------------------------------------------------------------------------- */

/* Row it = (n*C + c)*Hp + hp of the phase layout dst[n, c, hp, b, wq] (sw phases of
 * Wq columns): src[n, c, hp - pt, wq*sw + b - pl], 0 outside src (H x W planes). */
static void FN(direct_phase_row)(const T *src, fc_int H, fc_int W, T *dst, fc_int Hp,
                                 fc_int sw, fc_int Wq, fc_int pt, fc_int pl, fc_int it)
{
    T *d = dst + it * sw * Wq;
    const fc_int h = it % Hp - pt;
    if (h < 0 || h >= H) {
        memset(d, 0, (size_t)(sw * Wq) * sizeof(T));
        return;
    }
    const T *row = src + (it / Hp * H + h) * W;
#if FC_MASKED
    if (sw == 2) {                                 /* phase b: columns 2*wq + b - pl */
        FN(split_phases2)(d, d + Wq, row, W, -pl, Wq);
        return;
    }
#endif
    for (fc_int b = 0; b < sw; b++) {
        fc_int lo, hi;                             /* wq with 0 <= wq*sw + b - pl < W */
        fc_valid_range(Wq, W, sw, b - pl, &lo, &hi);
        T *db = d + b * Wq;
        if (lo > 0) memset(db, 0, (size_t)lo * sizeof(T));
        /* gather: stride 2 by vectors (element by element, the stride-2 phases had
         * taken 9% of ResNet-50's 128 -> 128 3x3/2 forward at N=1, AMD EPYC Zen 4) */
        FN(gather)(db + lo, row + lo * sw + b - pl, hi - lo, sw);
        if (hi < Wq) memset(db + hi, 0, (size_t)(Wq - hi) * sizeof(T));
    }
}

/* Row it = ((n*G + g)*Cb + cb)*Hp + hp of the weight gradient's input layout xf[n, g,
 * cb, hp, wp, j] (Hp x Wp pixels of WGR channels), stored at d (Wp*WGR elements):
 * x[n, g*Cg + cb*WGR + j, hp - pt, wp - pl], 0 outside x and past the group's Cg
 * channels. */
static void FN(direct_xblock_row)(const T *x, fc_int C, fc_int H, fc_int W, fc_int G,
                                  fc_int Cg, T *d, fc_int Hp, fc_int Wp, fc_int pt,
                                  fc_int pl, fc_int it)
{
    const fc_int Cb = (Cg + WGR - 1) / WGR;
    const fc_int h = it % Hp - pt, cb = it / Hp % Cb, g = it / Hp / Cb % G;
    const fc_int n = it / Hp / Cb / G, c0 = cb * WGR;
    const fc_int nc = Cg - c0 < WGR ? Cg - c0 : WGR;
    if (h < 0 || h >= H || nc < WGR) memset(d, 0, (size_t)(Wp * WGR) * sizeof(T));
    if (h < 0 || h >= H) return;
    fc_int lo, hi;
    fc_valid_range(Wp, W, 1, -pl, &lo, &hi);
    if (lo > 0) memset(d, 0, (size_t)(lo * WGR) * sizeof(T));
    if (hi < Wp) memset(d + hi * WGR, 0, (size_t)((Wp - hi) * WGR) * sizeof(T));
    /* the (nc, hi - lo) matrix of the block's channels in row h, rows H*W apart,
     * transposed */
    if (hi > lo)
        FN(transpose_matrix)(x + ((n * C + g * Cg + c0) * H + h) * W - pl + lo, H * W,
                             d + lo * WGR, WGR, nc, hi - lo);
}

/* Row it = ((n*G + g)*Kb + kb)*P + p of dyb[n, g, kb, p, q, k] = dy[n, g*Kg + kb*WGK + k,
 * p, q], 0 for k past the group's Kg channels. */
static void FN(direct_dy_row)(const T *dy, fc_int K, fc_int P, fc_int Q, fc_int G, fc_int Kg,
                              T *dyb, fc_int it)
{
    const fc_int Kb = (Kg + WGK - 1) / WGK;
    const fc_int p = it % P, kb = it / P % Kb, g = it / P / Kb % G, n = it / P / Kb / G;
    const fc_int k0 = g * Kg + kb * WGK, nk = Kg - kb * WGK < WGK ? Kg - kb * WGK : WGK;
    T *d = dyb + it * Q * WGK;
    if (nk < WGK) memset(d, 0, (size_t)(Q * WGK) * sizeof(T));
    /* the (nk, Q) matrix of dy's row p, rows P*Q apart, transposed */
    FN(transpose_matrix)(dy + ((n * K + k0) * P + p) * Q, P * Q, d, WGK, nk, Q);
}

/* -- forward: a block of pixels x DKB output channels -------------------------------- */

/* tmp[j, k] = the block's npx pixels (FC_DMR, or FC_DMR / 2 in one row) x DKB
 * channels: `rows` rows (1 or 2) of FC_DMR / rows, pixel j reads x[j % CB + (j / CB)*r2]
 * at each tap (x: tap (0, 0) of the block's first pixel, input channel 0), or (rows 3:
 * one row at stride 2, read in place) x[2*j], or (rows 0) x[off[j]] (x: tap (0, 0) of
 * the image's first pixel); input channel c, tap t = r*S + s
 * at c*cp + toff[t] (RS = R*S); the weight w[c, r, s, DKB] block by block. */
static inline __attribute__((always_inline)) void FN(direct_block_rows)(
    const T *restrict x, const T *restrict w, fc_int Cg, fc_int RS, fc_int cp,
    const fc_int *toff, fc_int r2, const int rows, const int npx,
    const fc_int *restrict off, T *restrict tmp)
{
    enum { CB2 = FC_DMR / 2 };
    FN(dvec) acc[FC_DMR][FC_DNV];
    fc_int o[FC_DMR];
    for (int j = 0; j < npx; j++) {
        o[j] = rows == 0 ? off[j] : rows == 1 || j < CB2 ? j : r2 + j - CB2;
        for (int v = 0; v < FC_DNV; v++) acc[j][v] = (FN(dvec)){0};
    }
    for (fc_int c = 0; c < Cg; c++) {
        const T *xc = x + c * cp;
        for (fc_int t = 0; t < RS; t++) {
            const T *xs = xc + toff[t], *xs2 = rows == 2 ? xs + (r2 - CB2) : xs;
            /* the tap's pointer (rows 2: and its second row's) in a register, each
             * pixel's broadcast a constant displacement from it. Left to GCC, the
             * pixels' indices were summed as integers (-fwrapv keeps it from folding
             * them into displacements) and ten of the fourteen reloaded from the stack:
             * 27 loads per 28 FMAs, which a CPU with two FMA and two load ports cannot
             * issue at its FMA rate (Intel Xeon Ice Lake) */
            if (rows != 0) FC_OPAQUE(xs);
            if (rows == 2) FC_OPAQUE(xs2);
            FN(dvec) wv[FC_DNV];
            for (int v = 0; v < FC_DNV; v++) wv[v] = FN(dload)(w + v * DVL);
            w += DKB;
            for (int j = 0; j < npx; j++) {
                const T a = rows == 0 ? xs[o[j]] : rows == 1 ? xs[j] : rows == 3 ? xs[2 * j]
                            : (j < CB2 ? xs[j] : xs2[j]);
                for (int v = 0; v < FC_DNV; v++) acc[j][v] += wv[v] * a;
            }
        }
    }
    for (int j = 0; j < npx; j++)
        for (int v = 0; v < FC_DNV; v++) FN(dstore)(tmp + j * DKB + v * DVL, acc[j][v]);
}

static inline __attribute__((always_inline)) void FN(direct_block1)(
    const T *x, const T *w, fc_int Cg, fc_int RS, fc_int cp, const fc_int *toff, T *tmp)
{
    FN(direct_block_rows)(x, w, Cg, RS, cp, toff, 0, 1, FC_DMR, NULL, tmp);
}

/* one row of FC_DMR pixels 2 columns apart (rows 3: the unpadded core's stride 2) */
static inline __attribute__((always_inline)) void FN(direct_block1s2)(
    const T *x, const T *w, fc_int Cg, fc_int RS, fc_int cp, const fc_int *toff, T *tmp)
{
    FN(direct_block_rows)(x, w, Cg, RS, cp, toff, 0, 3, FC_DMR, NULL, tmp);
}

/* The block of one output row from pixel (p0, q0) of the unpadded core (d->unpadded):
 * xn is channel 0 of the image's group in the input as it is (H x W planes). Its
 * window, rows p0*sh - pt + [0, TR) and columns q0*sw - pl + [0, TW), is read in place
 * when it lies inside the input, else from a zero-padded copy on the stack. */
static inline __attribute__((always_inline)) void FN(direct_block_unpadded)(
    const T *xn, const T *w, const fc_direct *d, fc_int p0, fc_int q0, T *tmp)
{
    const fc_int ih = p0 * d->sh - d->pt, iw = q0 * d->sw - d->pl, RS = d->R * d->S;
    const fc_int H = d->H, W = d->W, TR = d->TR, TW = d->TW;
    /* the rows of the window the next band's block reads and this one does not, fetched
     * while this one computes (left to the hardware prefetchers, the RGB stem's forward
     * ran 3% slower; AMD EPYC Zen 4) */
    for (fc_int h = ih + TR > 0 ? ih + TR : 0; h < ih + TR + d->sh && h < H; h++)
        for (fc_int c = 0; c < d->Cg; c++) {
            const T *row = xn + (c * H + h) * W;
            const fc_int a = iw > 0 ? iw : 0, b = iw + TW < W ? iw + TW : W;
            for (fc_int j = a; j < b; j += 64 / (fc_int)sizeof(T))
                __builtin_prefetch(row + j, 0, 3);
            if (b > a) __builtin_prefetch(row + b - 1, 0, 3);
        }
    if (ih >= 0 && ih + TR <= H && iw >= 0 && iw + TW <= W) {
        const T *x = xn + ih * W + iw;
        if (d->sw == 2)
            FN(direct_block1s2)(x, w, d->Cg, RS, H * W, d->toff, tmp);
        else
            FN(direct_block1)(x, w, d->Cg, RS, H * W, d->toff, tmp);
        return;
    }
    T tile[FC_DTILE];                    /* Cg x TR x TW <= FC_DTILE (direct.pyx) */
    fc_int lo = 0, hi = 0;               /* the window's columns inside: [lo, hi) */
    fc_valid_range(TW, W, 1, iw, &lo, &hi);
    for (fc_int c = 0; c < d->Cg; c++)
        for (fc_int i = 0; i < TR; i++) {
            T *t = tile + (c * TR + i) * TW;
            const fc_int h = ih + i;
            if (h < 0 || h >= H) {
                for (fc_int j = 0; j < TW; j++) t[j] = 0;
                continue;
            }
            const T *src = xn + (c * H + h) * W + iw;
            for (fc_int j = 0; j < lo; j++) t[j] = 0;
            for (fc_int j = lo; j < hi; j++) t[j] = src[j];
            for (fc_int j = hi; j < TW; j++) t[j] = 0;
        }
    if (d->sw == 2)
        FN(direct_block1s2)(tile, w, d->Cg, RS, TR * TW, d->toff_tile, tmp);
    else
        FN(direct_block1)(tile, w, d->Cg, RS, TR * TW, d->toff_tile, tmp);
}

static void FN(direct_block2)(const T *x, const T *w, fc_int Cg, fc_int RS, fc_int cp,
                              const fc_int *toff, fc_int r2, T *tmp)
{
    FN(direct_block_rows)(x, w, Cg, RS, cp, toff, r2, 2, FC_DMR, NULL, tmp);
}

/* FC_DMR consecutive pixels of the flattened output grid (rows 0): pixel j reads
 * x[off[j]] at each tap (rows wrap: off[j] jumps to the next row's inputs) */
static void FN(direct_block_wrap)(const T *x, const T *w, fc_int Cg, fc_int RS, fc_int cp,
                                  const fc_int *toff, const fc_int *off, T *tmp)
{
    FN(direct_block_rows)(x, w, Cg, RS, cp, toff, 0, 0, FC_DMR, off, tmp);
}

/* the last row of an odd P under two-row blocks: its FC_DMR / 2 pixels alone */
static void FN(direct_block_half)(const T *x, const T *w, fc_int Cg, fc_int RS, fc_int cp,
                                  const fc_int *toff, T *tmp)
{
    FN(direct_block_rows)(x, w, Cg, RS, cp, toff, 0, 1, FC_DMR / 2, NULL, tmp);
}

#if FC_MASKED
/* dst[j] = act((src[j] + b) + res[j]) for j < n (res NULL: none): one channel's run of
 * a block from the channel-major buffer, by masked vectors; the arithmetic of the
 * block's epilogue on vectors of channels, in its order. */
static inline void FN(store_run_ep)(T *restrict dst, const T *restrict src, fc_int n, T b,
                                    const T *restrict res, int act)
{
    for (fc_int j = 0; j < n; j += DVL) {
        const unsigned m = (unsigned)(n - j < DVL ? n - j : DVL);
        FN(dvec) v = (FN(dvec))FC_MLOAD(FC_MASK(m), src + j) + b;
        if (res != NULL) v += (FN(dvec))FC_MLOAD(FC_MASK(m), res + j);
        FC_MSTORE(dst + j, FC_MASK(m), (FC_MVEC)FN(dvact)(v, act));
    }
}
#endif

/* The blocks (bp, 0 .. bcol-1) of image n, output channels kb*DKB .. of group g, from
 * the phase layout xb (d->plane elements per channel plane) and the weight block w[c,
 * r, s, DKB] of those channels, stored to out[n, k, oh0 + p*ohs, ow0 + q*ows] through
 * the epilogue (bias[k], res at out's index, act). Rows of blocks (d->rows 1 or 2: a
 * band of whole output rows, so two threads never write one cache line of a row), or
 * (d->rows 0) FC_DMR consecutive pixels of the flattened output grid each, block b =
 * bp*bcol + bq from pixel b*FC_DMR (the last block's pixels past P*Q repeat pixel P*Q
 * - 1 and are not stored). */
static inline void FN(direct_band)(const T *xb, const T *w, T *out, const fc_direct *d,
                                   fc_int n, fc_int g, fc_int kb, fc_int bp)
{
    const fc_int rows = d->rows, CB = rows ? FC_DMR / rows : FC_DMR, p0 = bp * rows;
    const fc_int PQ = d->P * d->Q, r2 = d->sh * d->rp, RS = d->R * d->S;
    const T *bias = (const T *)d->bias, *res = (const T *)d->res;
    const fc_int k0 = kb * DKB, nk = d->Kg - k0 < DKB ? d->Kg - k0 : DKB;
    const T *xn = xb + (n * d->G + g) * d->Cg * d->plane + (d->unpadded ? 0 : p0 * r2);
    const fc_int plane = d->OH * d->OW;
    /* out's index of channel k0 (of group g), pixel (0, 0) */
    const fc_int o0 = ((n * d->K + g * d->Kg + k0) * d->OH + d->oh0) * d->OW + d->ow0;
    const int ep = bias != NULL || res != NULL || d->act != 0;
    /* tmp, rt: the block's pixels x DKB channels (its result, the residual), the rows
     * rounded up to whole register transposes (the rows past the block's are
     * transposed too, never kept) */
    T tmp[FC_DMRT * DKB], rt[FC_DMRT * DKB], bpad[DKB];
#if FC_MASKED
    T ct[DKB * FC_DMRT];            /* a block channel-major: DKB channels x FC_DMRT pixels */
#endif
    fc_int off[FC_DMR], po[FC_DMR], tj[FC_DMR];
    FN(dvec) bv[FC_DNV];
    if (ep) {
        /* the block's bias as vectors (0 past the group's channels), and the residual
         * block's lanes past them 0 (never stored; no stale denormals in the adds) */
        for (fc_int k = 0; k < DKB; k++) bpad[k] = bias != NULL && k < nk ? bias[g * d->Kg + k0 + k] : 0;
        for (int v = 0; v < FC_DNV; v++) bv[v] = FN(dload)(bpad + v * DVL);
        if (res != NULL && nk < DKB) memset(rt, 0, sizeof rt);
    }
    for (fc_int bq = 0; bq < d->bcol; bq++) {
        fc_int np = 0;                  /* the block's stored pixels: tmp row tj, out po */
        const fc_int q0 = bq * CB;      /* rows 1, 2: the block's first column */
        if (rows == 0) {
            const fc_int f0 = (bp * d->bcol + bq) * FC_DMR;
            if (f0 >= PQ) break;
            for (fc_int j = 0; j < FC_DMR; j++) {
                const fc_int f = f0 + j < PQ ? f0 + j : PQ - 1, p = f / d->Q, q = f % d->Q;
                off[j] = p * r2 + q;
                if (f0 + j < PQ) {
                    tj[np] = j;
                    po[np++] = p * d->ohs * d->OW + q * d->ows;
                }
            }
            FN(direct_block_wrap)(xn, w, d->Cg, RS, d->plane, d->toff, off, tmp);
        } else {
            const fc_int nq = d->Q - q0 < CB ? d->Q - q0 : CB;
            /* the residual a band ahead (the next band's lines of the block's columns,
             * and in the first band its own), fetched while blocks compute. Read after
             * the block, one plane after another, the 7x7/2 stem's residual had taken 6
             * ms of 28 at N=8; prefetched only while its own block computed, ResNet-18's
             * 128->256 3x3/2 layer's took 0.5 of 9.6 ms at N=8, a band ahead 0.23 (AMD
             * EPYC Zen 4). */
            for (fc_int p = bp == 0 ? p0 : p0 + rows; res != NULL && p < p0 + 2 * rows
                                                      && p < d->P; p++)
                for (fc_int k = 0; k < nk; k++) {
                    const T *rk = res + o0 + k * plane + p * d->ohs * d->OW + q0 * d->ows;
                    __builtin_prefetch(rk, 0, 1);
                    __builtin_prefetch(rk + (nq - 1) * d->ows, 0, 1);
                }
            /* likewise the output's lines a band ahead, for writing: the line of the
             * block's last pixel (the row's first, too, in its first block). Stored
             * to lines out of cache, the 3->32 3x3/2 RGB stem at N=8 had taken 4.05
             * ms, now 2.99; the 7x7/2 stem 20.6 ms, now 19.3 (1 thread, AMD EPYC Zen 4) */
            for (fc_int p = bp == 0 ? p0 : p0 + rows; p < p0 + 2 * rows && p < d->P; p++)
                for (fc_int k = 0; k < nk; k++) {
                    T *yk = out + o0 + k * plane + p * d->ohs * d->OW + q0 * d->ows;
                    if (bq == 0) __builtin_prefetch(yk, 1, 1);
                    __builtin_prefetch(yk + (nq - 1) * d->ows, 1, 1);
                }
            if (d->unpadded)
                FN(direct_block_unpadded)(xn, w, d, p0, q0, tmp);
            else if (rows == 1)
                FN(direct_block1)(xn + q0, w, d->Cg, RS, d->plane, d->toff, tmp);
            else if (p0 + 1 == d->P)
                FN(direct_block_half)(xn + q0, w, d->Cg, RS, d->plane, d->toff, tmp);
            else
                FN(direct_block2)(xn + q0, w, d->Cg, RS, d->plane, d->toff, r2, tmp);
            for (fc_int i = 0; i < rows && p0 + i < d->P; i++)
                for (fc_int q = 0; q < nq; q++) {
                    tj[np] = i * CB + q;
                    po[np++] = (p0 + i) * d->ohs * d->OW + (q0 + q) * d->ows;
                }
        }
        /* one row of consecutive pixels whose register transposes' whole vectors stay
         * inside the row (the columns past the block are the next block's, which this
         * thread stores next): the residual read and each channel's pixels stored by
         * register transposes */
        const int rowwise = FC_VECTORS && rows == 1 && d->ows == 1 && DKB % FC_TL == 0
                            && q0 + (np + FC_TL - 1) / FC_TL * FC_TL <= d->Q;
#if FC_MASKED
        /* else, where pixels run along output rows (ows 1): the block goes through ct,
         * whole register transposes on the block's side and, per channel, each run of
         * pixels consecutive in both tmp and out stored as one masked vector, the
         * epilogue applied to it there (runs: nr, from stored pixel rj[r], rn[r] long).
         * Element by element, a short row's blocks had cost more than the residual's
         * add (ResNet-18's 3x3/2 layers: fused slower than the unfused sequence, AMD
         * EPYC Zen 4). */
        const int runwise = !rowwise && d->ows == 1 && DKB % FC_TL == 0;
        fc_int nr = 0, rj[FC_DMR], rn[FC_DMR];
        for (fc_int j = 0; runwise && j < np; j++) {
            if (j > 0 && po[j] == po[j - 1] + 1 && tj[j] == tj[j - 1] + 1) {
                rn[nr - 1]++;
            } else {
                rj[nr] = j;
                rn[nr++] = 1;
            }
        }
#else
        const int runwise = 0;
#endif
        if (ep && !runwise) {
            /* on vectors of channels, branch-free: (v + bias) + residual, then the
             * activation, each element as before */
            fc_int kr = 0;                  /* the residual's channels read by transposes */
#if FC_VECTORS
            if (res != NULL && rowwise)
                for (; kr + FC_TL <= nk; kr += FC_TL)
                    for (fc_int i0 = 0; i0 < np; i0 += FC_TL)
                        FN(transpose_rows)(res + o0 + po[0] + kr * plane + i0, plane,
                                           rt + i0 * DKB + kr, DKB, FC_TL);
#endif
            if (res != NULL)
                for (fc_int k = kr; k < nk; k++)
                    for (fc_int j = 0; j < np; j++)
                        rt[tj[j] * DKB + k] = res[o0 + po[j] + k * plane];
            for (fc_int j = 0; j < np; j++) {
                T *t = tmp + tj[j] * DKB;
                for (int v = 0; v < FC_DNV; v++) {
                    FN(dvec) x = FN(dload)(t + v * DVL) + bv[v];
                    if (res != NULL) x += FN(dload)(rt + tj[j] * DKB + v * DVL);
                    FN(dstore)(t + v * DVL, FN(dvact)(x, d->act));
                }
            }
        }
#if FC_VECTORS
        if (rowwise) {
            for (fc_int i0 = 0; i0 < np; i0 += FC_TL)
                for (fc_int k = 0; k < nk; k += FC_TL)
                    FN(transpose_rows)(tmp + i0 * DKB + k, DKB, out + o0 + po[0] + k * plane + i0,
                                       plane, nk - k < FC_TL ? nk - k : FC_TL);
            continue;
        }
#endif
#if FC_MASKED
        if (runwise) {
            for (fc_int i0 = 0; i0 < FC_DMRT; i0 += FC_TL)
                for (fc_int k = 0; k < nk; k += FC_TL)
                    FN(transpose_rows)(tmp + i0 * DKB + k, DKB, ct + k * FC_DMRT + i0, FC_DMRT,
                                       nk - k < FC_TL ? nk - k : FC_TL);
            for (fc_int k = 0; k < nk; k++)
                for (fc_int r = 0; r < nr; r++) {
                    const fc_int o = o0 + po[rj[r]] + k * plane;
                    if (ep)
                        FN(store_run_ep)(out + o, ct + k * FC_DMRT + tj[rj[r]], rn[r], bpad[k],
                                         res == NULL ? NULL : res + o, d->act);
                    else
                        FN(copy_run)(out + o, ct + k * FC_DMRT + tj[rj[r]], rn[r]);
                }
            continue;
        }
#endif
        for (fc_int k = 0; k < nk; k++) {
            T *y = out + o0 + k * plane;
            for (fc_int j = 0; j < np; j++) y[po[j]] = tmp[tj[j] * DKB + k];
        }
    }
}

/* Work item it = ((n*G + g)*Kb + kb)*brow + bp of the forward (``lanes``): direct_band
 * with the cached weight layout wb[g, kb, c, r, s, DKB]. */
static void FN(direct_item)(const T *xb, const T *wb, T *out, const fc_direct *d, fc_int it)
{
    const fc_int bp = it % d->brow, kb = it / d->brow % d->Kb;
    const fc_int g = it / d->brow / d->Kb % d->G, n = it / d->brow / d->Kb / d->G;
    FN(direct_band)(xb, wb + (g * d->Kb + kb) * d->R * d->S * d->Cg * DKB, out, d, n, g, kb,
                    bp);
}

/* Work item it = g*Kb + kb of the forward that takes the weight as it is
 * (``lanes_streamed``: a weight too large to keep a second, laid-out copy of and check
 * it on every call): the item lays out its block of w into wl[c, r, s, DKB] (scratch
 * of Cg*R*S*DKB elements, zero past the group's Kg channels), which stays in the
 * thread's L2, then runs every band of the slice's ``N`` images with it. w is (G*Kg,
 * Cg, R, S), or with ``flip`` (the input gradient's) (G*Cg, Kg, R, S) rotated by 180
 * degrees with its two channel axes swapped. The weight is read once per call. */
static void FN(direct_streamed_item)(const T *xb, const T *w, T *out, const fc_direct *d,
                                     fc_int N, int flip, fc_int it, T *wl)
{
    const fc_int kb = it % d->Kb, g = it / d->Kb, k0 = kb * DKB;
    const fc_int nk = d->Kg - k0 < DKB ? d->Kg - k0 : DKB, RS = d->R * d->S;
    const fc_int J = d->Cg * RS;                   /* the block's rows j = (c*R + r)*S + s */
    if (!flip) {
        /* wl[j, k] = w[g*Kg + k0 + k, j]: the (nk, J) matrix transposed, its nk rows
         * (nk streams, J apart) prefetched 16 lines ahead: left to the hardware
         * prefetchers, the transposes took a third of 512 -> 512 3x3 at 7 x 7, N=1 */
        FN(transpose_matrix_ahead)(w + (g * d->Kg + k0) * J, J, wl, DKB, nk, J,
                                   1024 / sizeof(T));
        for (fc_int j = 0; j < J && nk < DKB; j++)
            for (fc_int k = nk; k < DKB; k++) wl[j * DKB + k] = 0;
    } else {
        /* wl[c, r, s, k] = w[g*Cg + c, k0 + k, R-1-r, S-1-s]: per c the (k, rs) block
         * (rows RS apart) transposed, rs reversed, by register transposes of FC_TL k x
         * FC_TL columns (a block's columns past RS read the next rows: stored only
         * while the read stays inside w), the rest element by element */
        const fc_int L = FC_TL, end = d->G * d->Cg * d->Kg * RS;   /* w's elements */
        for (fc_int c = 0; c < d->Cg; c++) {
            const fc_int base = ((g * d->Cg + c) * d->Kg + k0) * RS;
            const T *src = w + base;
            T *dst = wl + c * RS * DKB;
            fc_int kdone = 0;
            for (fc_int kk = 0; kk + L <= nk; kk += L) {
                if (base + (kk + L - 1) * RS + (RS - 1) / L * L + L > end) break;
                for (fc_int c0 = 0; c0 < RS; c0 += L)
                    FN(transpose_rows)(src + kk * RS + c0, RS, dst + (RS - 1 - c0) * DKB + kk,
                                       -DKB, RS - c0 < L ? RS - c0 : L);
                kdone = kk + L;
            }
            for (fc_int k = kdone; k < nk; k++)
                for (fc_int rs = 0; rs < RS; rs++)
                    dst[(RS - 1 - rs) * DKB + k] = src[k * RS + rs];
            for (fc_int rs = 0; rs < RS; rs++)
                for (fc_int k = nk; k < DKB; k++) dst[rs * DKB + k] = 0;
        }
    }
    for (fc_int n = 0; n < N; n++)
        for (fc_int bp = 0; bp < d->brow; bp++)
            FN(direct_band)(xb, wl, out, d, n, g, kb, bp);
}

/* -- forward, the flat core: FJ consecutive pixels x FC_FKB output channels -------- */

#define FJ (FC_FNV * DVL)                                /* pixels of a flat block */

static fc_int FN(direct_flat_pixels)(void) { return FJ; }

/* Row it = (n*C + c)*sh*Hq + hp of the flat core's phase planes dst[n, c, a, b, i, wq]
 * (Hq x Wq each, sh x sw of them per channel) = src padded by (pt, pl) at row i*sh + a
 * = hp, column wq*sw + b (0 outside src, H x W planes); stride 1: one padded plane. */
static void FN(direct_flat_row)(const T *src, fc_int H, fc_int W, T *dst, fc_int Hq,
                                fc_int sh, fc_int sw, fc_int Wq, fc_int pt, fc_int pl,
                                fc_int it)
{
    const fc_int hp = it % (sh * Hq), nc = it / (sh * Hq), a = hp % sh, i = hp / sh;
    const fc_int h = hp - pt;
    const T *row = src + (nc * H + (h >= 0 && h < H ? h : 0)) * W;
#if FC_MASKED
    if (sw == 2 && h >= 0 && h < H) {              /* phase b: columns 2*wq + b - pl */
        T *d0 = dst + (nc * sh + a) * sw * Hq * Wq + i * Wq;
        FN(split_phases2)(d0, d0 + Hq * Wq, row, W, -pl, Wq);
        return;
    }
#endif
    for (fc_int b = 0; b < sw; b++) {
        T *d = dst + ((nc * sh + a) * sw + b) * Hq * Wq + i * Wq;
        fc_int lo = 0, hi = 0;                     /* wq with 0 <= wq*sw + b - pl < W */
        if (h >= 0 && h < H) fc_valid_range(Wq, W, sw, b - pl, &lo, &hi);
        for (fc_int wq = 0; wq < lo; wq++) d[wq] = 0;
        FN(gather)(d + lo, row + lo * sw + b - pl, hi - lo, sw);
        for (fc_int wq = hi; wq < Wq; wq++) d[wq] = 0;
    }
}

/* Work item it of the flat forward (N*G*Kb*nf items; ``kb_inner``: it = ((n*G + g)*nf +
 * fb)*Kb + kb, else ((n*G + g)*Kb + kb)*nf + fb): flattened pixels f = fb*FJ .. of the
 * output grid (f = p*Wq + q; pixels with q >= Q are computed and dropped) x output
 * channels kb*FC_FKB .. of group g. Tap t of input channel c reads the FJ pixels at
 * xb[(n*C + g*Cg + c)*plane + f + toff[t]]: a vector load per FC_FNV, a broadcast of
 * each channel's weight wb[g, kb, c, t, FC_FKB]. Kept pixel (p, q) goes to out[n, k,
 * oh0 + p*ohs, ow0 + q*ows] through the epilogue. */
static void FN(direct_flat_item)(const T *xb, const T *wb, T *out, const fc_direct *d,
                                 fc_int it)
{
    fc_int kb, fb, t;
    if (d->kb_inner) {
        kb = it % d->Kb; t = it / d->Kb; fb = t % d->nf; t /= d->nf;
    } else {
        fb = it % d->nf; t = it / d->nf; kb = t % d->Kb; t /= d->Kb;
    }
    const fc_int g = t % d->G, n = t / d->G, f0 = fb * FJ, k0 = kb * FC_FKB;
    const fc_int nk = d->Kg - k0 < FC_FKB ? d->Kg - k0 : FC_FKB, T_ = d->R * d->S;
    const T *w = wb + (g * d->Kb + kb) * d->Cg * T_ * FC_FKB;
    const T *xc = xb + (n * d->G + g) * d->Cg * d->plane + f0;
    FN(dvec) acc[FC_FKB][FC_FNV];
    for (int k = 0; k < FC_FKB; k++)
        for (int v = 0; v < FC_FNV; v++) acc[k][v] = (FN(dvec)){0};
    for (fc_int c = 0; c < d->Cg; c++, xc += d->plane) {
        for (fc_int tap = 0; tap < T_; tap++, w += FC_FKB) {
            const T *xt = xc + d->toff[tap];
            FN(dvec) xv[FC_FNV];
            for (int v = 0; v < FC_FNV; v++) xv[v] = FN(dload)(xt + v * DVL);
            for (int k = 0; k < FC_FKB; k++) {
                const T wk = w[k];
                for (int v = 0; v < FC_FNV; v++) acc[k][v] += xv[v] * wk;
            }
        }
    }
    T tmp[FC_FKB * FJ];
    for (int k = 0; k < FC_FKB; k++)
        for (int v = 0; v < FC_FNV; v++) FN(dstore)(tmp + k * FJ + v * DVL, acc[k][v]);
    const T *bias = (const T *)d->bias, *res = (const T *)d->res;
#if FC_MASKED
    /* outputs along rows (ows 1): each run stored by masked vectors (element by element,
     * the flat forward of 3->32 3x3/2 stems and a 32->64 5x5 had run 5-9% slower, AMD
     * EPYC Zen 4) */
    const int ep = bias != NULL || res != NULL || d->act != 0, runs = d->ows == 1;
#endif
    /* runs of kept pixels of one output row: [j0, j1) with p = f / Wq, q = f - p*Wq */
    for (fc_int j0 = 0; j0 < FJ;) {
        const fc_int f = f0 + j0, p = f / d->Wq, q0 = f - p * d->Wq;
        if (p >= d->P) break;
        const fc_int run = d->Wq - q0 < FJ - j0 ? d->Wq - q0 : FJ - j0;
        const fc_int nq = q0 < d->Q ? (d->Q - q0 < run ? d->Q - q0 : run) : 0;
        for (fc_int k = 0; k < nk; k++) {
            const fc_int ko = g * d->Kg + k0 + k;
            const fc_int o = ((n * d->K + ko) * d->OH + d->oh0 + p * d->ohs) * d->OW
                             + d->ow0 + q0 * d->ows;
            const T *s = tmp + k * FJ + j0;
            T *y = out + o;
            const T b = bias != NULL ? bias[ko] : 0;
#if FC_MASKED
            if (runs) {
                if (ep)
                    FN(store_run_ep)(y, s, nq, b, res == NULL ? NULL : res + o, d->act);
                else
                    FN(copy_run)(y, s, nq);
                continue;
            }
#endif
            for (fc_int q = 0; q < nq; q++) {
                T v = s[q];
                if (bias != NULL) v += b;
                if (res != NULL) v += res[o + q * d->ows];
                y[q * d->ows] = FN(dact)(v, d->act);
            }
        }
        j0 += run;
    }
}

#undef FJ

/* -- weight gradient: WGK output channels x WGR input channels ---------------------- */

/* Work item it = ((g*Cb + cb)*Kb + kb), image n: adds to acc (the item's R*S x WGR x
 * WGK accumulators, in order image after image) image n's share of gw[k, c, r, s] for
 * output channels kb*WGK .. and input channels cb*WGR .. of group g: the sum over p,
 * q of dyb[n, g, kb, p, q, k] * xn[p*sh + r*dh, q*sw + s*dw, c] (xn: the block (n, g,
 * cb) of the layout direct_xblock_row makes, the padded input, a block of channels per
 * pixel). Tap by tap, the tap's register block is
 * loaded from acc, runs the image's P*Q pixels and is stored back. The caller
 * (direct.pyx's _weight_run) runs either every item of one image before the next, the
 * output-channel blocks of an input-channel block one after another, so that the
 * image's x and dy blocks stay in cache across them (ResNet-50's res3 3x3/2 at N=8
 * read them from memory once per item otherwise), or every image of one item, so that
 * its accumulators do (512 channels on 7x7). */
static void FN(direct_weight_item)(const T *xn, const T *dyb, const fc_dweight *d, fc_int n,
                                   fc_int it, T *acc)
{
    const fc_int kb = it % d->Kb, g = it / d->Kb / d->Cb;
    const fc_int Wp = d->Wp, P = d->P, Q = d->Q, R = d->R, S = d->S;
    const fc_int qs = d->sw * WGR;
    const T *dn = dyb + ((n * d->G + g) * d->Kb + kb) * P * Q * WGK;
    for (fc_int r = 0; r < R; r++) {
        for (fc_int s = 0; s < S; s++) {
            T *at = acc + (r * S + s) * WGR * WGK;
            FN(dvec) a[WGR][WGV];
            for (int j = 0; j < WGR; j++)
                for (int v = 0; v < WGV; v++) a[j][v] = FN(dload)(at + j * WGK + v * DVL);
            for (fc_int p = 0; p < P; p++) {
                const T *xr = xn + ((p * d->sh + r * d->dh) * Wp + s * d->dw) * WGR;
                const T *dr = dn + p * Q * WGK;
                for (fc_int q = 0; q < Q; q++) {
                    const T *xq = xr + q * qs;
                    FN(dvec) dv[WGV];
                    for (int v = 0; v < WGV; v++) dv[v] = FN(dload)(dr + q * WGK + v * DVL);
                    for (int j = 0; j < WGR; j++) {
                        const T x = xq[j];
                        for (int v = 0; v < WGV; v++) a[j][v] += dv[v] * x;
                    }
                }
            }
            for (int j = 0; j < WGR; j++)
                for (int v = 0; v < WGV; v++) FN(dstore)(at + j * WGK + v * DVL, a[j][v]);
        }
    }
}

static fc_int FN(direct_weight_rows)(void) { return WGR; }
static fc_int FN(direct_weight_cols)(void) { return WGK; }

/* Work item it's sums (acc, as direct_weight_item leaves them) into gw[k, c, r, s] (K x
 * Cg x R x S), within the group's channels. */
static void FN(direct_weight_store)(T *gw, const fc_dweight *d, fc_int it, const T *acc)
{
    const fc_int kb = it % d->Kb, cb = it / d->Kb % d->Cb, g = it / d->Kb / d->Cb;
    const fc_int c0 = cb * WGR, k0 = kb * WGK, RS = d->R * d->S;
    const fc_int nk = d->Kg - k0 < WGK ? d->Kg - k0 : WGK;
    const fc_int nc = d->Cg - c0 < WGR ? d->Cg - c0 : WGR;
    for (fc_int k = 0; k < nk; k++)
        for (fc_int c = 0; c < nc; c++)
            for (fc_int rs = 0; rs < RS; rs++)
                gw[((g * d->Kg + k0 + k) * d->Cg + c0 + c) * RS + rs] =
                    acc[(rs * WGR + c) * WGK + k];
}

/* -- depthwise (C == groups) ----------------------------------------------------------- */

/* Short runs are copied by loops, not memcpy/memset calls (GCC turns such loops into
 * calls unless told not to): planes of 7-28 columns run many of them. */
#if defined(__GNUC__) && !defined(__clang__)
#  define FC_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#  define FC_NO_LIBCALLS
#endif

/* The phase tile of one H x W plane x: t[a, b, i, j] = x padded by (pt, pl) at row
 * i*sh + a, column j*sw + b (0 outside x), for the i < Hn, j < Wn the outputs' taps read;
 * the rest of its Hq x Wq per phase (read only for pixels past the plane's, which are
 * dropped) is left as it is (zero: direct.pyx zeroes the tiles once per call). Each
 * row of x is split into its sw column phases in one pass, the columns where every
 * phase reads inside x by a loop with no tests (vectorised), the others one by one. */
FC_NO_LIBCALLS static void FN(dw_tile)(const T *restrict x, fc_int H, fc_int W, fc_int sh,
                                       fc_int sw, fc_int pt, fc_int pl, fc_int Hq,
                                       fc_int Wq, fc_int Hn, fc_int Wn, T *restrict t)
{
    /* [jl, jh): the j whose columns j*sw + b - pl (b < sw) all lie in [0, W) (pl < 0:
     * the input gradient's padding dil*(S-1) - pad, a crop) */
    fc_int jl = pl > 0 ? (pl + sw - 1) / sw : 0;
    fc_int jh = W + pl - sw < 0 ? 0 : (W + pl - sw) / sw + 1;
    if (jh > Wn) jh = Wn;
    if (jl > jh) jl = jh;
    const fc_int ph = Hq * Wq;                      /* elements per phase plane */
    for (fc_int a = 0; a < sh; a++) {
        for (fc_int i = 0; i < Hn; i++) {
            const fc_int h = i * sh + a - pt;
            T *restrict d = t + a * sw * ph + i * Wq;       /* phase (a, 0), row i */
            if (h < 0 || h >= H) {
                for (fc_int b = 0; b < sw; b++)
                    for (fc_int j = 0; j < Wn; j++) d[b * ph + j] = 0;
                continue;
            }
            const T *restrict src = x + h * W - pl;       /* src[u]: padded column u */
            for (fc_int b = 0; b < sw; b++) {
                for (fc_int j = 0; j < jl; j++) {
                    const fc_int u = j * sw + b;
                    d[b * ph + j] = u >= pl && u < W + pl ? src[u] : 0;
                }
                for (fc_int j = jh; j < Wn; j++) {
                    const fc_int u = j * sw + b;
                    d[b * ph + j] = u >= pl && u < W + pl ? src[u] : 0;
                }
            }
            if (sw == 1) {
                for (fc_int j = jl; j < jh; j++) d[j] = src[j];
            } else if (sw == 2) {
                T *restrict d1 = d + ph;
                for (fc_int j = jl; j < jh; j++) {
                    d[j] = src[2 * j];
                    d1[j] = src[2 * j + 1];
                }
            } else {
                for (fc_int b = 0; b < sw; b++)
                    for (fc_int j = jl; j < jh; j++) d[b * ph + j] = src[j * sw + b];
            }
        }
    }
}

/* acc[i] = the depthwise block of `rows` output rows x one vector whose tap (0, 0) is at
 * base in the tile (rows Wq apart), taps at toff, weight wk (rotated when `flip`). */
static inline __attribute__((always_inline)) void FN(dw_block)(
    const T *base, fc_int Wq, const fc_int *toff, const T *wk, fc_int RS, int flip,
    const int rows, FN(dvec) *acc)
{
    for (int i = 0; i < rows; i++) acc[i] = (FN(dvec)){0};
    for (fc_int t = 0; t < RS; t++) {
        const T wv = wk[flip ? RS - 1 - t : t];
        const T *b = base + toff[t];
        for (int i = 0; i < rows; i++) acc[i] += FN(dload)(b + i * Wq) * wv;
    }
}

/* dw_block for 9 taps (3 x 3), their weights broadcast (wv) and their offsets (to)
 * held across the plane's blocks: the taps unrolled, no weight reloaded per block */
static inline __attribute__((always_inline)) void FN(dw_block9)(
    const T *base, fc_int Wq, const fc_int *to, const FN(dvec) *wv, const int rows,
    FN(dvec) *acc)
{
    for (int i = 0; i < rows; i++) acc[i] = (FN(dvec)){0};
    for (int t = 0; t < 9; t++) {
        const T *b = base + to[t];
        for (int i = 0; i < rows; i++) acc[i] += FN(dload)(b + i * Wq) * wv[t];
    }
}

#if FC_MASKED
/* x read as it is: the most rows past a block's first that its taps reach, (R-1)*dh */
#define FC_DW_REACH 16
/* dw_block on x as it is (stride 1): input row j of the block (its first output row's
 * tap row 0 is j = 0) at row[j] (W wide; a zero row outside x), tap s's vector at
 * column offset coff[s] by a load masked to the lanes inside the row (mk[s]; the
 * others, the padding, read as 0); R x S taps, their rows dh apart. */
static inline __attribute__((always_inline)) void FN(dw_block_x)(
    const T *const *row, const int R, const int S, fc_int dh, const fc_int *coff,
    const unsigned *mk, const T *wk, int flip, const int rows, FN(dvec) *acc)
{
    /* every loop unrolled (R, S, rows and, at dilation 1, dh constants), so acc stays
     * in registers and the taps of one input row share its loads (GCC's default limits
     * stop short of 63 FMAs: the accumulators went through the stack each tap) */
#pragma GCC unroll 16
    for (int i = 0; i < rows; i++) acc[i] = (FN(dvec)){0};
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int s = 0; s < S; s++) {
            const T wv = wk[flip ? R * S - 1 - (r * S + s) : r * S + s];
#pragma GCC unroll 16
            for (int i = 0; i < rows; i++)
                acc[i] += (FN(dvec))FC_MLOAD(mk[s], row[i + r * dh] + coff[s]) * wv;
        }
}

/* The block of `rows` rows (a constant) at output row p0 on the plane xp, as it is:
 * its input rows outside x read from `zero` (W zeros); a 3 x 3 or 5 x 5 filter, its
 * taps unrolled. */
static inline __attribute__((always_inline)) void FN(dw_rows_x)(
    const T *xp, const T *zero, const fc_dw *d, fc_int p0, const fc_int *coff,
    const unsigned *mk, const T *wk, int flip, const int rows, FN(dvec) *acc)
{
    const T *row[FC_DWR + FC_DW_REACH];
    const fc_int h0 = p0 - d->pt;
    for (fc_int j = 0; j < rows + (d->R - 1) * d->dh; j++)
        row[j] = h0 + j >= 0 && h0 + j < d->H ? xp + (h0 + j) * d->W : zero;
    if (d->R == 3 && d->dh == 1)
        FN(dw_block_x)(row, 3, 3, 1, coff, mk, wk, flip, rows, acc);
    else if (d->R == 3)
        FN(dw_block_x)(row, 3, 3, d->dh, coff, mk, wk, flip, rows, acc);
    else
        FN(dw_block_x)(row, 5, 5, d->dh, coff, mk, wk, flip, rows, acc);
}

/* The 3 x 3 stride-2 block of `rows` rows (a constant) at output row p0, output
 * columns q0 + lane, on the plane xp as it is (dilation 1): input row p0*2 - pt + j
 * (j < 2*rows + 1; a zero row outside x) read once, its columns c0 + 2*lane + s (c0 =
 * 2*q0 - pl) for the taps s = 0, 1, 2 deinterleaved from masked loads at c0 and c0 + 2
 * (lanes outside [0, W) read as 0), and added to the output rows that read it
 * (2*i + r = j). Copying each plane into a phase tile first had taken half the 144 ->
 * 144 3x3/2 layer's time (AMD EPYC Zen 4). */
static inline __attribute__((always_inline)) void FN(dw_rows_x2)(
    const T *xp, const T *zero, const fc_dw *d, fc_int p0, fc_int q0, const FN(dvec) *wv,
    const int rows, FN(dvec) *acc)
{
    const fc_int c0 = 2 * q0 - d->pl, h0 = 2 * p0 - d->pt;
    unsigned mk[4];                     /* loads at c0, c0 + DVL, c0 + 2, c0 + 2 + DVL */
    for (int u = 0; u < 4; u++) {
        const fc_int c = c0 + (u & 1) * DVL + (u >> 1) * 2;
        const fc_int lo = c < 0 ? -c : 0, hi = d->W - c < DVL ? d->W - c : DVL;
        mk[u] = hi <= lo ? 0u : (unsigned)FC_MASK(hi) & ~(unsigned)FC_MASK(lo);
    }
    for (int i = 0; i < rows; i++) acc[i] = (FN(dvec)){0};
#pragma GCC unroll 17
    for (int j = 0; j < 2 * rows + 1; j++) {
        /* rw[u]: input column c0 + u of row j (masked to [0, W)) */
        const T *rw = (h0 + j >= 0 && h0 + j < d->H ? xp + (h0 + j) * d->W : zero) + c0;
        FN(dvec) x0, x1, x2, unused;
        FC_DEINTERLEAVE(FC_MLOAD(mk[0], rw), FC_MLOAD(mk[1], rw + DVL), x0, x1);
        FC_DEINTERLEAVE(FC_MLOAD(mk[2], rw + 2), FC_MLOAD(mk[3], rw + 2 + DVL), x2, unused);
        (void)unused;
#pragma GCC unroll 3
        for (int r = 0; r < 3; r++) {
            if ((j - r) % 2 != 0 || (j - r) / 2 < 0 || (j - r) / 2 >= rows) continue;
            const int i = (j - r) / 2;         /* the taps in dw_block9's order */
            acc[i] += x0 * wv[r * 3];
            acc[i] += x1 * wv[r * 3 + 1];
            acc[i] += x2 * wv[r * 3 + 2];
        }
    }
}
#endif

/* Plane it = n*K + k of the depthwise forward: out[n, k] (P x Q) = the correlation of
 * x[n, k / Kg] (padded by pt, pl) with w[k] (R x S; rotated by 180 degrees when
 * `flip`), through the epilogue. tile: scratch of sh*sw*Hq*Wq + W elements, zero
 * (Hq, Wq: whole blocks plus the taps' reach); d->toff[r*S + s]: tap (r, s)'s offset in
 * the tile. With masked loads (AVX-512), stride 1 reads x as it is instead, the tile
 * its zero row (dw_rows_x).
 * Blocks of d->rows rows (FC_DWR, or 7 where P is a multiple of 7 and not of FC_DWR:
 * no rows computed in vain on 56, 28, 14, 7) x one vector, a weight broadcast per tap. */
FC_NO_LIBCALLS static void FN(dw_plane)(const T *x, const T *w, T *out, const fc_dw *d, int flip,
                         const T *bias, const T *res, int act, T *tile, fc_int it)
{
    const fc_int n = it / d->K, k = it % d->K, C = d->K / d->Kg;
    const fc_int RS = d->R * d->S, P = d->P, Q = d->Q, Wq = d->Wq, rows = d->rows;
    const T *xp = x + (n * C + k / d->Kg) * d->H * d->W;
#if FC_MASKED
    /* 3 x 3 and 5 x 5 at stride 1: read from x as it is, by masked loads (copying each
     * plane into a padded tile first had taken a quarter of 28 x 28 planes' time; with
     * the taps in loops, not unrolled, it ran slower than the tile: AMD EPYC Zen 4) */
    const int direct = d->sh == 1 && d->sw == 1 && d->R == d->S
                       && (d->R == 3 || d->R == 5) && (d->R - 1) * d->dh <= FC_DW_REACH;
    /* 3 x 3 at stride 2, dilation 1, not flipped: x as it is, deinterleaved (dw_rows_x2) */
    const int direct2 = d->sh == 2 && d->sw == 2 && d->R == 3 && d->S == 3 && d->dh == 1
                        && d->dw == 1 && !flip;
#else
    const int direct = 0, direct2 = 0;
#endif
    if (!direct && !direct2)
        FN(dw_tile)(xp, d->H, d->W, d->sh, d->sw, d->pt, d->pl, d->Hq, Wq, d->Hn, d->Wn,
                    tile);
    T *y = out + it * P * Q;
    const T *rp = res != NULL ? res + it * P * Q : NULL;
    const T *wk = w + k * RS;
    const int plain = bias == NULL && res == NULL && act == 0;
    const FN(dvec) bk = (FN(dvec)){0} + (bias != NULL ? bias[k] : (T)0);
    /* 3 x 3 (RS 9): the taps' weights and offsets for every block of the plane
     * (per block and tap, reloading them had cost as much as the FMAs) */
    FN(dvec) wv[9];
    fc_int to[9];
    for (int t = 0; t < 9 && RS == 9; t++) {
        wv[t] = (FN(dvec)){0} + wk[flip ? 8 - t : t];
        to[t] = d->toff[t];
    }
    for (fc_int p0 = 0; p0 < P; p0 += rows) {
        for (fc_int q0 = 0; q0 < Q; q0 += DVL) {
            FN(dvec) acc[FC_DWR];
            const T *base = tile + p0 * Wq + q0;
#if FC_MASKED
            if (direct) {
                /* per tap column s: the input columns q0 + j - pl + s*dw of the lanes
                 * j, and the lanes inside [0, W) */
                fc_int coff[FC_DW_REACH];
                unsigned mk[FC_DW_REACH];
                for (fc_int s = 0; s < d->S; s++) {
                    const fc_int c0 = q0 - d->pl + s * d->dw;
                    const fc_int lo = c0 < 0 ? -c0 : 0;
                    const fc_int hi = d->W - c0 < DVL ? d->W - c0 : DVL;
                    coff[s] = c0;
                    mk[s] = hi <= lo ? 0u : (unsigned)FC_MASK(hi) & ~(unsigned)FC_MASK(lo);
                }
                if (rows == 7)
                    FN(dw_rows_x)(xp, tile, d, p0, coff, mk, wk, flip, 7, acc);
                else
                    FN(dw_rows_x)(xp, tile, d, p0, coff, mk, wk, flip, FC_DWR, acc);
            } else if (direct2) {
                if (rows == 7)
                    FN(dw_rows_x2)(xp, tile, d, p0, q0, wv, 7, acc);
                else
                    FN(dw_rows_x2)(xp, tile, d, p0, q0, wv, FC_DWR, acc);
            } else
#endif
            if (RS == 9 && rows == 7)
                FN(dw_block9)(base, Wq, to, wv, 7, acc);
            else if (RS == 9)
                FN(dw_block9)(base, Wq, to, wv, FC_DWR, acc);
            else if (rows == 7)
                FN(dw_block)(base, Wq, d->toff, wk, RS, flip, 7, acc);
            else
                FN(dw_block)(base, Wq, d->toff, wk, RS, flip, FC_DWR, acc);
            const fc_int nq = Q - q0 < DVL ? Q - q0 : DVL;
            for (fc_int i = 0; i < rows && p0 + i < P; i++) {
                T *yr = y + (p0 + i) * Q + q0;
                FN(dvec) o = acc[i];
                if (!plain) {              /* the epilogue on the vector, lane by lane */
                    if (bias != NULL) o += bk;
                    if (rp != NULL) {
                        const T *rr = rp + (p0 + i) * Q + q0;
                        T r[DVL];
                        for (fc_int q = 0; q < DVL; q++) r[q] = q < nq ? rr[q] : 0;
                        o += FN(dload)(r);
                    }
                    o = FN(dvact)(o, act);
                }
                if (nq == DVL) {
                    FN(dstore)(yr, o);
                } else {
                    T v[DVL];
                    FN(dstore)(v, o);
                    for (fc_int q = 0; q < nq; q++) yr[q] = v[q];
                }
            }
        }
    }
}

/* Plane it = n*C + c of the depthwise input gradient by scatter: dx[n, c] = the sum over
 * its Kg output channels k and their taps of w[k, r, s] * dy[n, k] placed at each
 * tap's input position (any stride, dilation, padding). */
static void FN(dw_scatter)(const T *dy, const T *w, T *dx, const fc_dw *d, fc_int it)
{
    const fc_int n = it / (d->K / d->Kg), c = it % (d->K / d->Kg);
    const fc_int H = d->H, W = d->W, P = d->P, Q = d->Q, sw = d->sw;
    T *o = dx + it * H * W;
    memset(o, 0, (size_t)(H * W) * sizeof(T));
    for (fc_int k = c * d->Kg; k < (c + 1) * d->Kg; k++) {
        for (fc_int p = 0; p < P; p++) {
            const T *dr = dy + ((n * d->K + k) * P + p) * Q;
            for (fc_int r = 0; r < d->R; r++) {
                const fc_int h = p * d->sh - d->pt + r * d->dh;
                if (h < 0 || h >= H) continue;
                T *orow = o + h * W;
                for (fc_int s = 0; s < d->S; s++) {
                    const fc_int off = s * d->dw - d->pl;
                    fc_int lo, hi;
                    fc_valid_range(Q, W, sw, off, &lo, &hi);
                    const T wv = w[(k * d->R + r) * d->S + s];
                    if (sw == 1)
                        for (fc_int q = lo; q < hi; q++) orow[q + off] += wv * dr[q];
                    else
                        for (fc_int q = lo; q < hi; q++) orow[q * sw + off] += wv * dr[q];
                }
            }
        }
    }
}

/* Output channel k of the depthwise weight gradient: gw[k, r, s] = sum over n, p, q of
 * dy[n, k, p, q] * x[n, k / Kg] padded at (p*sh + r*dh, q*sw + s*dw), image by image on
 * the phase tile (scratch as dw_plane's), each tap's sum in vectors of a row's pixels
 * added up in a fixed order. */
static void FN(dw_weight)(const T *x, const T *dy, T *gw, const fc_dw *d, T *tile, fc_int k)
{
    enum { TG = 3 };                                /* taps at a time, 6 sums in flight */
    const fc_int RS = d->R * d->S, P = d->P, Q = d->Q, Wq = d->Wq;
    const fc_int C = d->K / d->Kg, q1 = Q / DVL * DVL, Qr = (Q + DVL - 1) / DVL * DVL;
    T *g = gw + k * RS;
    T *dyp = tile + d->sh * d->sw * d->Hq * Wq;    /* dy's plane, rows zero-padded to Qr */
    for (fc_int t = 0; t < RS; t++) g[t] = 0;
    for (fc_int n = 0; n < d->N; n++) {
        FN(dw_tile)(x + (n * C + k / d->Kg) * d->H * d->W, d->H, d->W, d->sh, d->sw, d->pt,
                    d->pl, d->Hq, Wq, d->Hn, d->Wn, tile);
        const T *dk = dy + (n * d->K + k) * P * Q;
        for (fc_int p = 0; p < P; p++) {
            memcpy(dyp + p * Qr, dk + p * Q, (size_t)Q * sizeof(T));
            memset(dyp + p * Qr + Q, 0, (size_t)(Qr - Q) * sizeof(T));
        }
        for (fc_int t0 = 0; t0 < RS; t0 += TG) {
            const T *tt[TG];                        /* past the last tap: the last again */
            FN(dvec) acc[TG], tail[TG];             /* full vectors; the rows' last */
            for (int u = 0; u < TG; u++) {
                tt[u] = tile + d->toff[t0 + u < RS ? t0 + u : RS - 1];
                acc[u] = (FN(dvec)){0};
                tail[u] = (FN(dvec)){0};
            }
            for (fc_int p = 0; p < P; p++) {
                const T *dr = dyp + p * Qr;
                for (fc_int q = 0; q < q1; q += DVL) {
                    const FN(dvec) dv = FN(dload)(dr + q);
                    for (int u = 0; u < TG; u++) acc[u] += FN(dload)(tt[u] + p * Wq + q) * dv;
                }
                if (q1 < Q) {
                    const FN(dvec) dv = FN(dload)(dr + q1);
                    for (int u = 0; u < TG; u++)
                        tail[u] += FN(dload)(tt[u] + p * Wq + q1) * dv;
                }
            }
            for (int u = 0; u < TG && t0 + u < RS; u++) {
                T v[DVL], e[DVL];
                FN(dstore)(v, acc[u]);
                FN(dstore)(e, tail[u]);
                T sum = 0;
                for (fc_int l = 0; l < DVL; l++) sum += v[l];
                /* the tail's lanes past Q are dropped: the tile may hold Inf or NaN there */
                for (fc_int l = 0; l < Q - q1; l++) sum += e[l];
                g[t0 + u] += sum;
            }
        }
    }
}

#undef DKB
#undef FC_DMRT
#undef DVL
