/* Winograd F(2x2,3x3) and F(4x4,3x3) transforms for one element type T (included by
 * fc_isa.h with T and X defined, after fc_impl.h), the hot loops of winograd.pyx.
 * The Numba backend's winograd.py holds the same arithmetic (Lavin & Gray 2016; the
 * matrices BT, AT of wincnn for the points 0, 1, -1 (, 2, -2), inf).
 *
 * Layouts, channels last so that every loop runs over contiguous channels, which the
 * compiler vectorises at the variant's width:
 *   slab  S[(r*Sw + w)*C + c]              input rows of a block of tile rows, zero padded
 *   V     V[(xi*ldt + u)*C + c]            input transform of tile u, xi = a*alpha + b
 *   M     M[(xi*ldt + u)*kp + k]           the GEMMs' products
 *   tmp   alpha*alpha*max(C, kp) elements of scratch
 * Tile u of a block covers slab rows m*i .. m*i + alpha - 1 and columns m*j ..,
 * i = u / tw, j = u % tw.
 */

/* The transforms' loops over channels read and write different arrays (or different
 * parts of one): telling GCC so lets it vectorise them, which its alias checks (too many
 * pointer pairs) otherwise forbid. */
#ifndef FC_IVDEP
#  if defined(__GNUC__) && !defined(__clang__)
#    define FC_IVDEP _Pragma("GCC ivdep")
#  else
#    define FC_IVDEP
#  endif
#endif

/* S[r, w, c] = x[c, h0 + r, w + ow] (one image, C x H x W; nhwc: x[h0 + r, w + ow, c],
 * H x W x C) for r < rows, w < Sw; zeros outside x: each row the (C, columns) matrix
 * of x transposed (transpose_matrix), or (nhwc) a copy of the row's pixels. */
static void FN(wino_slab)(const T *x, fc_int C, fc_int H, fc_int W, fc_int h0, fc_int ow,
                          fc_int rows, fc_int Sw, T *S, int nhwc)
{
    for (fc_int r = 0; r < rows; r++) {
        T *row = S + r * Sw * C;
        const fc_int h = h0 + r;
        if (h < 0 || h >= H) {
            memset(row, 0, (size_t)(Sw * C) * sizeof(T));
            continue;
        }
        fc_int lo = -ow > 0 ? -ow : 0, hi = W - ow < Sw ? W - ow : Sw;
        if (hi < lo) hi = lo;
        if (lo > 0) memset(row, 0, (size_t)(lo * C) * sizeof(T));
        if (hi < Sw) memset(row + hi * C, 0, (size_t)((Sw - hi) * C) * sizeof(T));
        if (nhwc) {        /* pixels w + ow, w in [lo, hi), of row h: contiguous */
            memcpy(row + lo * C, x + (h * W + ow + lo) * C, (size_t)((hi - lo) * C) * sizeof(T));
        } else if (hi - lo < FC_TL && C >= FC_TL && h * W + ow + lo + FC_TL <= H * W) {
            /* a row shorter than a register transpose (14x14 planes): whole transposes
             * of FC_TL channels, reading on into the next row (inside x's last plane
             * too, by the condition), the row's columns stored; the last block of
             * channels overlaps the one before. transpose_matrix went element by
             * element: 8% of VGG-16 conv5_2's weight gradient at N=8 (AMD EPYC Zen 4). */
            for (fc_int c0 = 0; c0 < C; c0 += FC_TL) {
                const fc_int c = c0 + FC_TL <= C ? c0 : C - FC_TL;
                FN(transpose_rows)(x + c * H * W + h * W + ow + lo, H * W, row + lo * C + c, C,
                                   hi - lo);
            }
        } else             /* x[c, h, w + ow] for w in [lo, hi): rows c, H*W apart,
                            * read 16 lines ahead (VGG-16's 64-channel 224x224 3x3, all
                            * three passes: 1.13-1.34x, AMD EPYC Zen 4) */
            FN(transpose_matrix_ahead)(x + h * W + ow + lo, H * W, row + lo * C, C, C,
                                       hi - lo, 1024 / sizeof(T));
    }
}

/* V[xi, u, :] = (B^T d B)[xi] for the tiles u < nt of slab S (Sw columns, C channels). */
static void FN(wino_input)(const T *S, fc_int Sw, fc_int C, fc_int m, fc_int tw, fc_int nt,
                           T *V, fc_int ldt, T *tmp)
{
    const fc_int al = m + 2;
    for (fc_int u = 0; u < nt; u++) {
        const fc_int i = u / tw, j = u % tw;
        /* B^T along w, row by row: tmp[a, b, c] */
        for (fc_int a = 0; a < al; a++) {
            const T *d = S + ((m * i + a) * Sw + m * j) * C;
            T *t = tmp + a * al * C;
            if (m == 2) {
                FC_IVDEP
                for (fc_int c = 0; c < C; c++) {
                    T d0 = d[c], d1 = d[C + c], d2 = d[2 * C + c], d3 = d[3 * C + c];
                    t[c] = d0 - d2;
                    t[C + c] = d1 + d2;
                    t[2 * C + c] = d2 - d1;
                    t[3 * C + c] = d1 - d3;
                }
            } else {
                FC_IVDEP
                for (fc_int c = 0; c < C; c++) {
                    T d0 = d[c], d1 = d[C + c], d2 = d[2 * C + c], d3 = d[3 * C + c],
                      d4 = d[4 * C + c], d5 = d[5 * C + c];
                    T pa = d4 - (T)4 * d2, pb = d3 - (T)4 * d1, pc = d4 - d2,
                      pe = (T)2 * (d3 - d1);
                    t[c] = (T)4 * d0 - (T)5 * d2 + d4;
                    t[C + c] = pa + pb;
                    t[2 * C + c] = pa - pb;
                    t[3 * C + c] = pc + pe;
                    t[4 * C + c] = pc - pe;
                    t[5 * C + c] = (T)4 * d1 - (T)5 * d3 + d5;
                }
            }
        }
        /* then along h: V[a*al + b] */
        for (fc_int b = 0; b < al; b++) {
            const T *t = tmp + b * C;              /* t[a*al*C + c] = tmp[a, b, c] */
            const fc_int s = al * C;
            T *v = V + u * C;
            const fc_int vs = ldt * C;             /* from xi to xi + 1 */
            if (m == 2) {
                FC_IVDEP
                for (fc_int c = 0; c < C; c++) {
                    T d0 = t[c], d1 = t[s + c], d2 = t[2 * s + c], d3 = t[3 * s + c];
                    v[(0 * 4 + b) * vs + c] = d0 - d2;
                    v[(1 * 4 + b) * vs + c] = d1 + d2;
                    v[(2 * 4 + b) * vs + c] = d2 - d1;
                    v[(3 * 4 + b) * vs + c] = d1 - d3;
                }
            } else {
                FC_IVDEP
                for (fc_int c = 0; c < C; c++) {
                    T d0 = t[c], d1 = t[s + c], d2 = t[2 * s + c], d3 = t[3 * s + c],
                      d4 = t[4 * s + c], d5 = t[5 * s + c];
                    T pa = d4 - (T)4 * d2, pb = d3 - (T)4 * d1, pc = d4 - d2,
                      pe = (T)2 * (d3 - d1);
                    v[(0 * 6 + b) * vs + c] = (T)4 * d0 - (T)5 * d2 + d4;
                    v[(1 * 6 + b) * vs + c] = pa + pb;
                    v[(2 * 6 + b) * vs + c] = pa - pb;
                    v[(3 * 6 + b) * vs + c] = pc + pe;
                    v[(4 * 6 + b) * vs + c] = pc - pe;
                    v[(5 * 6 + b) * vs + c] = (T)4 * d1 - (T)5 * d3 + d5;
                }
            }
        }
    }
}

/* dM[xi, u, :] = (A d A^T)[xi] for the m x m tiles u < nt of the dy slab D (Dw columns,
 * K channels; zeros past the output's edge). */
static void FN(wino_dy)(const T *D, fc_int Dw, fc_int K, fc_int m, fc_int tw, fc_int nt,
                        T *dM, fc_int ldt, T *tmp)
{
    const fc_int al = m + 2;
    for (fc_int u = 0; u < nt; u++) {
        const fc_int i = u / tw, j = u % tw;
        for (fc_int a = 0; a < m; a++) {           /* A along w: tmp[a, b, k] */
            const T *d = D + ((m * i + a) * Dw + m * j) * K;
            T *t = tmp + a * al * K;
            if (m == 2) {
                FC_IVDEP
                for (fc_int k = 0; k < K; k++) {
                    T d0 = d[k], d1 = d[K + k];
                    t[k] = d0;
                    t[K + k] = d0 + d1;
                    t[2 * K + k] = d0 - d1;
                    t[3 * K + k] = -d1;
                }
            } else {
                FC_IVDEP
                for (fc_int k = 0; k < K; k++) {
                    T d0 = d[k], d1 = d[K + k], d2 = d[2 * K + k], d3 = d[3 * K + k];
                    T e = d0 + d2, o = d1 + d3, e4 = d0 + (T)4 * d2,
                      o4 = (T)2 * d1 + (T)8 * d3;
                    t[k] = d0;
                    t[K + k] = e + o;
                    t[2 * K + k] = e - o;
                    t[3 * K + k] = e4 + o4;
                    t[4 * K + k] = e4 - o4;
                    t[5 * K + k] = d3;
                }
            }
        }
        for (fc_int b = 0; b < al; b++) {          /* then along h */
            const T *t = tmp + b * K;
            const fc_int s = al * K;
            T *v = dM + u * K;
            const fc_int vs = ldt * K;
            if (m == 2) {
                FC_IVDEP
                for (fc_int k = 0; k < K; k++) {
                    T d0 = t[k], d1 = t[s + k];
                    v[(0 * 4 + b) * vs + k] = d0;
                    v[(1 * 4 + b) * vs + k] = d0 + d1;
                    v[(2 * 4 + b) * vs + k] = d0 - d1;
                    v[(3 * 4 + b) * vs + k] = -d1;
                }
            } else {
                FC_IVDEP
                for (fc_int k = 0; k < K; k++) {
                    T d0 = t[k], d1 = t[s + k], d2 = t[2 * s + k], d3 = t[3 * s + k];
                    T e = d0 + d2, o = d1 + d3, e4 = d0 + (T)4 * d2,
                      o4 = (T)2 * d1 + (T)8 * d3;
                    v[(0 * 6 + b) * vs + k] = d0;
                    v[(1 * 6 + b) * vs + k] = e + o;
                    v[(2 * 6 + b) * vs + k] = e - o;
                    v[(3 * 6 + b) * vs + k] = e4 + o4;
                    v[(4 * 6 + b) * vs + k] = e4 - o4;
                    v[(5 * 6 + b) * vs + k] = d3;
                }
            }
        }
    }
}

/* y[k, a, q] = act((O[a, q, k] + bias[k]) + res[k, a, q]) for k < nk, a < ra, q < Q:
 * the channels-last slab O (rows of Wr pixels, kp channels) of output rows stored to
 * NCHW planes P*Q apart (y, res: row 0, channel 0 of the slice), each row's (Q, nk)
 * matrix transposed (transpose_matrix). The bias, and the
 * activation without a residual, are applied on the slab (along its contiguous
 * channels) before the stores; a residual and the activation after it on the rows
 * stored, once all are (reading a row right after its transposes stalls on them).
 * The same arithmetic in the same order either way. O is modified. */
static void FN(wino_store)(T *O, fc_int Wr, fc_int kp, fc_int nk, fc_int ra, T *y,
                           fc_int P, fc_int Q, const T *bias, const T *res, int act)
{
    const fc_int PQ = P * Q;
    if (bias || (act != 0 && !res))
        for (fc_int a = 0; a < ra; a++)
            for (fc_int q = 0; q < Q; q++) {
                T *o = O + (a * Wr + q) * kp;
                if (bias)
                    for (fc_int k = 0; k < nk; k++) o[k] = o[k] + bias[k];
                if (act != 0 && !res)
                    for (fc_int k = 0; k < nk; k++) {
                        T w = o[k] < 0 ? (T)0 : o[k];      /* NaN < 0 is false: kept */
                        o[k] = (act == 2 && w > 6) ? (T)6 : w;
                    }
            }
#if FC_VECTORS
    if (Q < FC_TL && 2 * Q >= FC_TL && Wr >= FC_TL && kp % FC_TL == 0) {
        /* rows shorter than a register transpose (14x14 planes): whole transposes of
         * the slab's first FC_TL pixels of the row (its Wr include the cropped
         * columns); each channel's vector stored whole where its last lanes fall on
         * the next row (2Q >= FC_TL: on no row past it), which is stored next, else
         * (the last row) through a copy cut to Q (transpose_matrix went element by
         * element here: 11% of ResNet-50 res4's 3x3 at N=8, AMD EPYC Zen 4). Rows of
         * Q < FC_TL / 2 (one column under AVX2's double or SSE's float vectors) go
         * element by element: a whole vector would reach rows past the next, of
         * another tile row, channel or image, which other threads may have stored. */
        T cut[FC_TL * FC_TL];
        for (fc_int a = 0; a < ra; a++)
            for (fc_int k0 = 0; k0 < nk; k0 += FC_TL) {
                const fc_int mk = nk - k0 < FC_TL ? nk - k0 : FC_TL;
                const T *src = O + a * Wr * kp + k0;
                T *dst = y + a * Q + k0 * PQ;
                if (a + 1 < ra) {
                    FN(transpose_rows)(src, kp, dst, PQ, mk);
                } else {
                    FN(transpose_rows)(src, kp, cut, FC_TL, mk);
                    for (fc_int j = 0; j < mk; j++)
                        memcpy(dst + j * PQ, cut + j * FC_TL, (size_t)Q * sizeof(T));
                }
            }
    } else
#endif
    for (fc_int a = 0; a < ra; a++)
        FN(transpose_matrix)(O + a * Wr * kp, kp, y + a * Q, PQ, Q, nk);
    if (res)
        for (fc_int a = 0; a < ra; a++)
            for (fc_int k = 0; k < nk; k++) {
                T *yr = y + k * PQ + a * Q;
                const T *rr = res + k * PQ + a * Q;
                for (fc_int q = 0; q < Q; q++) {
                    T v = yr[q] + rr[q];
                    if (act != 0) {
                        v = v < 0 ? (T)0 : v;
                        v = (act == 2 && v > 6) ? (T)6 : v;
                    }
                    yr[q] = v;
                }
            }
}

/* y[(a*Q + q)*ky + k] = act((O[a, q, k] + bias[k]) + res[(a*Q + q)*ky + k]) for k < nk,
 * a < ra, q < Q: the channels-last slab O (rows of Wr pixels, kp channels) of output
 * rows stored to a channels-last output (pixels ky apart; y, res: row 0, channel 0 of
 * the slice). The arithmetic of wino_store, in its order: the same bits. */
static void FN(wino_store_nhwc)(const T *O, fc_int Wr, fc_int kp, fc_int nk, fc_int ra,
                                T *y, fc_int Q, fc_int ky, const T *bias, const T *res,
                                int act)
{
    for (fc_int a = 0; a < ra; a++)
        for (fc_int q = 0; q < Q; q++) {
            const T *o = O + (a * Wr + q) * kp;
            T *yq = y + (a * Q + q) * ky;
            const T *rq = res ? res + (a * Q + q) * ky : NULL;
            FC_IVDEP
            for (fc_int k = 0; k < nk; k++) {
                T v = o[k];
                if (bias) v = v + bias[k];
                if (rq) v = v + rq[k];
                if (act != 0) {
                    v = v < 0 ? (T)0 : v;                  /* NaN < 0 is false: kept */
                    v = (act == 2 && v > 6) ? (T)6 : v;
                }
                yq[k] = v;
            }
        }
}

/* The output tiles u < nt, whole rows of tw tiles: y[k, p0 + m*i + a, m*j + b] =
 * act((A^T M[:, u, k] A)[a, b] + bias[k] + res[k, p0 + m*i + a, m*j + b]) for k < nk,
 * cropped to P x Q (the epilogue of fastconv.kernels.epilogue: act 0 none, 1 relu,
 * 2 relu6, comparisons that keep NaN; bias and res NULL when absent). y and res point
 * at channel 0 of this slice in one image (planes P*Q apart), bias at its first
 * channel. A row of tiles is transformed into a channels-last slab of its m output
 * rows, then stored by wino_store (long runs, not m elements per plane); ky > 0: y
 * and res are channels last, pixels ky apart (row 0, channel 0 of the slice), stored
 * by wino_store_nhwc. tmp: m*alpha*kp + m*m*tw*kp elements. */
static void FN(wino_output)(const T *M, fc_int ldt, fc_int kp, fc_int nk, fc_int m,
                            fc_int tw, fc_int nt, T *y, fc_int P, fc_int Q, fc_int p0,
                            const T *bias, const T *res, int act, T *tmp, fc_int ky)
{
    const fc_int al = m + 2, Wr = m * tw;
    T *slab = tmp + m * al * kp;                   /* slab[(a*Wr + q)*kp + k] */
    for (fc_int i = 0; i * tw < nt; i++) {
        const fc_int r0 = p0 + m * i;
        if (r0 >= P) break;
        for (fc_int j = 0; j < tw; j++) {
            const fc_int u = i * tw + j;
            const T *v = M + u * kp;
            const fc_int vs = ldt * kp;
            for (fc_int b = 0; b < al; b++) {      /* A^T along h: tmp[a, b, k] */
                if (m == 2) {
                    FC_IVDEP
                    for (fc_int k = 0; k < nk; k++) {
                        T m0 = v[(0 * 4 + b) * vs + k], m1 = v[(1 * 4 + b) * vs + k],
                          m2 = v[(2 * 4 + b) * vs + k], m3 = v[(3 * 4 + b) * vs + k];
                        tmp[(0 * al + b) * kp + k] = m0 + m1 + m2;
                        tmp[(1 * al + b) * kp + k] = m1 - m2 - m3;
                    }
                } else {
                    FC_IVDEP
                    for (fc_int k = 0; k < nk; k++) {
                        T m0 = v[(0 * 6 + b) * vs + k], m1 = v[(1 * 6 + b) * vs + k],
                          m2 = v[(2 * 6 + b) * vs + k], m3 = v[(3 * 6 + b) * vs + k],
                          m4 = v[(4 * 6 + b) * vs + k], m5 = v[(5 * 6 + b) * vs + k];
                        T pa = m1 + m2, pb = m1 - m2, pc = m3 + m4, pe = m3 - m4;
                        tmp[(0 * al + b) * kp + k] = m0 + pa + pc;
                        tmp[(1 * al + b) * kp + k] = pb + (T)2 * pe;
                        tmp[(2 * al + b) * kp + k] = pa + (T)4 * pc;
                        tmp[(3 * al + b) * kp + k] = pb + (T)8 * pe + m5;
                    }
                }
            }
            for (fc_int a = 0; a < m; a++) {       /* then along w: slab[a, m*j + b, k] */
                const T *t = tmp + a * al * kp;
                T *oa = slab + (a * Wr + m * j) * kp;
                if (m == 2) {
                    FC_IVDEP
                    for (fc_int k = 0; k < nk; k++) {
                        T m0 = t[k], m1 = t[kp + k], m2 = t[2 * kp + k], m3 = t[3 * kp + k];
                        oa[k] = m0 + m1 + m2;
                        oa[kp + k] = m1 - m2 - m3;
                    }
                } else {
                    FC_IVDEP
                    for (fc_int k = 0; k < nk; k++) {
                        T m0 = t[k], m1 = t[kp + k], m2 = t[2 * kp + k], m3 = t[3 * kp + k],
                          m4 = t[4 * kp + k], m5 = t[5 * kp + k];
                        T pa = m1 + m2, pb = m1 - m2, pc = m3 + m4, pe = m3 - m4;
                        oa[k] = m0 + pa + pc;
                        oa[kp + k] = pb + (T)2 * pe;
                        oa[2 * kp + k] = pa + (T)4 * pc;
                        oa[3 * kp + k] = pb + (T)8 * pe + m5;
                    }
                }
            }
        }
        const fc_int ra = P - r0 < m ? P - r0 : m;
        if (ky)
            FN(wino_store_nhwc)(slab, Wr, kp, nk, ra, y + r0 * Q * ky, Q, ky, bias,
                                res ? res + r0 * Q * ky : NULL, act);
        else
            FN(wino_store)(slab, Wr, kp, nk, ra, y + r0 * Q, P, Q, bias,
                           res ? res + r0 * Q : NULL, act);
    }
}

/* -- filter transforms, in double (as the Numba backend's) ----------------------------- */

/* G of F(2x2,3x3) and F(4x4,3x3) */
#ifndef FC_WINO_G
#define FC_WINO_G
static const double fc_wino_g2[4][3] = {
    {1.0, 0.0, 0.0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0.0, 0.0, 1.0}};
static const double fc_wino_g4[6][3] = {
    {1.0 / 4, 0.0, 0.0}, {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0.0, 0.0, 1.0}};
#endif

/* Input channel c of the transformed filter U (nsplit, alpha^2, C, kp), zero-padded
 * beforehand: U[k / kp, a*alpha + b, c, k % kp] = (G g[k, c] G^T)[a, b] for every output
 * channel k, where g = w (Kw, Cw, 3, 3), or with `rot` w rotated 180 degrees with its
 * two channel axes swapped (g[k, c, r, s] = w[c, k, 2 - r, 2 - s]). */
static void FN(wino_filter)(const T *w, fc_int Kw, fc_int Cw, int rot, fc_int m, fc_int c,
                            fc_int kp, T *U)
{
    const fc_int al = m + 2, al2 = al * al;
    const fc_int K = rot ? Cw : Kw, C = rot ? Kw : Cw;
    const double (*G)[3] = m == 2 ? fc_wino_g2 : fc_wino_g4;
    for (fc_int k = 0; k < K; k++) {
        double g[3][3], t[6][3];
        for (int r = 0; r < 3; r++)
            for (int s = 0; s < 3; s++)
                g[r][s] = rot ? (double)w[((c * Cw + k) * 3 + 2 - r) * 3 + 2 - s]
                              : (double)w[((k * Cw + c) * 3 + r) * 3 + s];
        for (fc_int a = 0; a < al; a++)            /* G g */
            for (int s = 0; s < 3; s++)
                t[a][s] = G[a][0] * g[0][s] + G[a][1] * g[1][s] + G[a][2] * g[2][s];
        T *u = U + ((k / kp) * al2 * C + c) * kp + k % kp;
        for (fc_int a = 0; a < al; a++)            /* (G g) G^T */
            for (fc_int b = 0; b < al; b++)
                u[(a * al + b) * C * kp] =
                    (T)(t[a][0] * G[b][0] + t[a][1] * G[b][1] + t[a][2] * G[b][2]);
    }
}

/* Ut[xi*pitch + c*J + kk] = (G g G^T)[xi] for the cb channels c of a chunk, g[r, s] =
 * Wt[(c*9 + r*3 + s)*J + kk] (``rot``: Wt's row 8 - r*3 - s), kk < J (a multiple of the
 * vector length where there are vectors: J lanes at a time), in T's arithmetic: G g
 * (alpha x 3) along the rows, then (G g) G^T, one vector of the alpha^2 at a time. */
static void FN(wino_filter_chunk)(const T *Wt, fc_int cb, fc_int J, int rot, fc_int m,
                                  T *Ut, fc_int pitch)
{
    const fc_int al = m + 2;
    T G[6][3];
    for (fc_int a = 0; a < al; a++)
        for (int r = 0; r < 3; r++) G[a][r] = (T)(m == 2 ? fc_wino_g2 : fc_wino_g4)[a][r];
#if FC_VECTORS
    typedef FN(vec) V;
    const fc_int L = (fc_int)(FC_VB / sizeof(T));
#else
    typedef T V;
    const fc_int L = 1;
#endif
    for (fc_int c = 0; c < cb; c++)
        for (fc_int kk = 0; kk < J; kk += L) {
            V g[9];
            for (int rs = 0; rs < 9; rs++) {
                const T *src = Wt + (c * 9 + (rot ? 8 - rs : rs)) * J + kk;
#if FC_VECTORS
                g[rs] = FN(vload)(src);
#else
                g[rs] = *src;
#endif
            }
            for (fc_int a = 0; a < al; a++) {
                const T g0 = G[a][0], g1 = G[a][1], g2 = G[a][2];
                const V t0 = g0 * g[0] + g1 * g[3] + g2 * g[6];      /* (G g)[a, s] */
                const V t1 = g0 * g[1] + g1 * g[4] + g2 * g[7];
                const V t2 = g0 * g[2] + g1 * g[5] + g2 * g[8];
                for (fc_int b = 0; b < al; b++) {
                    const V u = t0 * G[b][0] + t1 * G[b][1] + t2 * G[b][2];
                    T *dst = Ut + (a * al + b) * pitch + c * J + kk;
#if FC_VECTORS
                    FN(vstore)(dst, u);
#else
                    *dst = u;
#endif
                }
            }
        }
}

/* The GEMMs of the streamed variant, for the output channels [k0, k0 + J) ∩ [0, K),
 * J = pointwise_cols (the 1x1 kernel's panel): M[xi] (rows x K) = V[xi] (rows x C) @ U[xi] (C x K)
 * for every xi, with U = G g G^T made here from the weight, cb_max input
 * channels at a time, in this thread's cache (``scratch``: wino_streamed_scratch
 * elements): the weight is read once per call, and no transformed filter is kept or
 * read from memory. g = w (Kw, Cw, 3, 3), or with ``rot`` w rotated 180 degrees with
 * its two channel axes swapped. The filter chunk's arithmetic is T's (as the Numba
 * backend's streamed). Each chunk's products are added to M by the channels-last 1x1
 * kernel (nhwc_pixels, the previous chunks' sum as its residual), so every sum runs in
 * one order, whatever the thread count. V[xi] at V + xi*rows*C, M[xi] at M + xi*rows*K. */
static void FN(wino_streamed)(const T *V, fc_int rows, fc_int C, const T *w,
                              fc_int Kw, fc_int Cw, int rot, fc_int m, fc_int K, fc_int k0,
                              fc_int cb_max, T *M, T *scratch)
{
    const fc_int al = m + 2, al2 = al * al, J = FN(pointwise_cols)();
    const fc_int nk = K - k0 < J ? K - k0 : J;
    /* Ut[xi] one line more than (cb_max, J) apart: 36 panels a multiple of 4 KiB apart
     * would put a channel's 36 stores in one L1 set */
    const fc_int pitch = cb_max * J + 64 / (fc_int)sizeof(T);
    T *Ut = scratch;                               /* Ut[xi*pitch + c*J + kk] */
    T *Wt = Ut + al2 * pitch;                      /* Wt[(c*9 + rs)*J + kk] */
    for (fc_int c0 = 0; c0 < C; c0 += cb_max) {
        const fc_int cb = C - c0 < cb_max ? C - c0 : cb_max;
        /* Wt[c, rs, kk] = w[k0 + kk, c0 + c, rs]: the (kk, c*9 + rs) matrix (rows Cw*9
         * apart) transposed; rotated: w[c0 + c, k0 + kk, rs], each channel's (kk, rs)
         * block (contiguous) transposed, the 180-degree turn left to the transform's
         * reads (row 8 - rs). Zeros past K. */
        if (!rot)
            FN(transpose_matrix)(w + (k0 * Cw + c0) * 9, Cw * 9, Wt, J, nk, cb * 9);
        else
            for (fc_int c = 0; c < cb; c++)
                FN(transpose_matrix)(w + ((c0 + c) * Cw + k0) * 9, 9, Wt + c * 9 * J, J, nk,
                                     9);
        if (nk < J)
            for (fc_int c = 0; c < cb * 9; c++)
                for (fc_int kk = nk; kk < J; kk++) Wt[c * J + kk] = (T)0;
        FN(wino_filter_chunk)(Wt, cb, J, rot, m, Ut, pitch);
        for (fc_int xi = 0; xi < al2; xi++) {
            T *Mx = M + xi * rows * K;
            FN(nhwc_pixels)(V + xi * rows * C + c0, C, 0, 0, NULL, cb, Ut + xi * pitch, K, 0,
                            rows, k0, Mx, NULL, c0 > 0 ? Mx : NULL, 0, 1);
        }
    }
}

/* The scratch of one wino_streamed call, in elements. */
static fc_int FN(wino_streamed_scratch)(fc_int m, fc_int cb_max)
{
    const fc_int al = m + 2, J = FN(pointwise_cols)();
    return al * al * (cb_max * J + 64 / (fc_int)sizeof(T)) + cb_max * 9 * J;
}

/* Output channel k of the weight gradient: dU (parts, alpha^2, K, C) summed over its
 * parts in order into dU[0], then dw[k, c] = G^T dU[0][:, k, c] G (in double) for every
 * c, each element of dU read once; tmp: 3*alpha*C doubles. m is a constant where the
 * body is inlined (below), so G's entries fold and the loops over alpha unroll. */
static inline void FN(wino_filter_t_body)(T *dU, fc_int parts, fc_int K, fc_int C,
                                          const fc_int m, fc_int k, double *tmp, T *dw)
{
    const fc_int al = m + 2, al2 = al * al;
    const double (*G)[3] = m == 2 ? fc_wino_g2 : fc_wino_g4;
    for (fc_int g = 1; g < parts; g++)
        for (fc_int xi = 0; xi < al2; xi++) {
            T *dst = dU + (xi * K + k) * C;
            const T *src = dU + ((g * al2 + xi) * K + k) * C;
            for (fc_int c = 0; c < C; c++)
                dst[c] += src[c];
        }
    for (fc_int a = 0; a < al; a++) {              /* tmp[a, s, c] = (dU G)[a, s] */
        const T *row = dU + (a * al * K + k) * C;   /* dU[0][a*al + b, k, :] at row + b*K*C */
        double *t = tmp + a * 3 * C;
        for (fc_int c = 0; c < C; c++) {
            double v0 = 0.0, v1 = 0.0, v2 = 0.0;
            for (fc_int b = 0; b < al; b++) {
                const double u = (double)row[b * K * C + c];
                v0 += u * G[b][0];
                v1 += u * G[b][1];
                v2 += u * G[b][2];
            }
            t[c] = v0;
            t[C + c] = v1;
            t[2 * C + c] = v2;
        }
    }
    T *d = dw + k * C * 9;                         /* dw[k, c, r, s] = (G^T tmp)[r, s] */
    for (int s = 0; s < 3; s++)
        for (fc_int c = 0; c < C; c++) {
            double o0 = 0.0, o1 = 0.0, o2 = 0.0;
            for (fc_int a = 0; a < al; a++) {
                const double u = tmp[(a * 3 + s) * C + c];
                o0 += G[a][0] * u;
                o1 += G[a][1] * u;
                o2 += G[a][2] * u;
            }
            d[c * 9 + s] = (T)o0;
            d[c * 9 + 3 + s] = (T)o1;
            d[c * 9 + 6 + s] = (T)o2;
        }
}

static void FN(wino_filter_t)(T *dU, fc_int parts, fc_int K, fc_int C, fc_int m, fc_int k,
                              double *tmp, T *dw)
{
    if (m == 2)
        FN(wino_filter_t_body)(dU, parts, K, C, 2, k, tmp, dw);
    else
        FN(wino_filter_t_body)(dU, parts, K, C, 4, k, tmp, dw);
}
