/* Direct convolution for one element type T (included by fc_isa.h with T, X and FN
 * defined, after fc_impl.h): the hot loops of direct.pyx. The layouts and the order
 * of work are direct.pyx's docstring; the index arithmetic is the Numba backend's
 * (fastconv/kernels/numba/direct.py), and is commented where it is used.
 *
 * The register block of the forward (and of the weight gradient) is FC_DMR pixels x
 * FC_DNV vectors of output channels (DKB channels): 14 x 2 zmm with AVX-512, 6 x 2
 * ymm with AVX2, 6 x 2 xmm in the baseline; per tap and input channel FC_DNV vector
 * loads of the weight and FC_DMR broadcasts of the input feed FC_DMR * FC_DNV FMAs.
 */

#if FC_VECTORS
typedef T FN(dvec) __attribute__((vector_size(FC_VB)));
#else
typedef T FN(dvec);
#endif
#define DVL ((fc_int)(sizeof(FN(dvec)) / sizeof(T)))   /* lanes of a vector */
#define DKB (FC_DNV * DVL)                              /* channels of a block */

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

/* -- layouts ------------------------------------------------------------------------- */

/* Row it = (n*C + c)*Hp + hp of the phase layout dst[n, c, hp, b, wq] (sw phases of
 * Wq columns): src[n, c, hp - pt, wq*sw + b - pl], 0 outside src (H x W planes). */
static void FN(direct_phase_row)(const T *src, fc_int H, fc_int W, T *dst, fc_int Hp,
                                 fc_int sw, fc_int Wq, fc_int pt, fc_int pl, fc_int it)
{
    T *d = dst + it * sw * Wq;
    const fc_int h = it % Hp - pt;
    memset(d, 0, (size_t)(sw * Wq) * sizeof(T));
    if (h < 0 || h >= H) return;
    const T *row = src + (it / Hp * H + h) * W;
    for (fc_int b = 0; b < sw; b++) {
        fc_int lo, hi;                             /* wq with 0 <= wq*sw + b - pl < W */
        fc_valid_range(Wq, W, sw, b - pl, &lo, &hi);
        T *db = d + b * Wq;
        const T *r = row + b - pl;
        if (sw == 1)
            memcpy(db + lo, r + lo, (size_t)(hi - lo) * sizeof(T));
        else
            for (fc_int wq = lo; wq < hi; wq++) db[wq] = r[wq * sw];
    }
}

/* Row it = (n*Hp + hp) of the channels-last padded input xf[n, hp, wp, c] (Wp columns,
 * Cp >= C channels, the rest 0): x[n, c, hp - pt, wp - pl], 0 outside x. */
static void FN(direct_nhwc_row)(const T *x, fc_int C, fc_int H, fc_int W, T *xf, fc_int Hp,
                                fc_int Wp, fc_int Cp, fc_int pt, fc_int pl, fc_int it)
{
    T *d = xf + it * Wp * Cp;
    const fc_int h = it % Hp - pt;
    memset(d, 0, (size_t)(Wp * Cp) * sizeof(T));
    if (h < 0 || h >= H) return;
    fc_int lo, hi;
    fc_valid_range(Wp, W, 1, -pl, &lo, &hi);
    const T *src = x + (it / Hp * C * H + h) * W - pl;
    for (fc_int c = 0; c < C; c++)
        for (fc_int wp = lo; wp < hi; wp++) d[wp * Cp + c] = src[c * H * W + wp];
}

/* Row it = ((n*G + g)*Kb + kb)*P + p of dyb[n, g, kb, p, q, k] = dy[n, g*Kg + kb*DKB + k,
 * p, q], 0 for k past the group's Kg channels. */
static void FN(direct_dy_row)(const T *dy, fc_int K, fc_int P, fc_int Q, fc_int G, fc_int Kg,
                              T *dyb, fc_int it)
{
    const fc_int Kb = (Kg + DKB - 1) / DKB;
    const fc_int p = it % P, kb = it / P % Kb, g = it / P / Kb % G, n = it / P / Kb / G;
    const fc_int k0 = g * Kg + kb * DKB, nk = Kg - kb * DKB < DKB ? Kg - kb * DKB : DKB;
    T *d = dyb + it * Q * DKB;
    if (nk < DKB) memset(d, 0, (size_t)(Q * DKB) * sizeof(T));
    const T *src = dy + ((n * K + k0) * P + p) * Q;
    for (fc_int k = 0; k < nk; k++)
        for (fc_int q = 0; q < Q; q++) d[q * DKB + k] = src[k * P * Q + q];
}

/* -- forward: a block of pixels x DKB output channels -------------------------------- */

/* acc[j] for the block's FC_DMR pixels, `rows` rows (1 or 2) of FC_DMR / rows: pixel
 * j reads x[j % CB + (j / CB)*r2] at each tap (x: tap (0, 0) of the block's first
 * pixel, input channel 0); input channel c, tap (r, s) at c*cp + r*rs + soff[s]; the
 * weight w[c, r, s, DKB] block by block. */
static inline __attribute__((always_inline)) void FN(direct_block_rows)(
    const T *restrict x, const T *restrict w, fc_int Cg, fc_int R, fc_int S, fc_int cp,
    fc_int rs, const fc_int *soff, fc_int r2, const int rows, T *restrict tmp)
{
    enum { CB2 = FC_DMR / 2 };
    FN(dvec) acc[FC_DMR][FC_DNV];
    for (int j = 0; j < FC_DMR; j++)
        for (int v = 0; v < FC_DNV; v++) acc[j][v] = (FN(dvec)){0};
    for (fc_int c = 0; c < Cg; c++) {
        for (fc_int r = 0; r < R; r++) {
            const T *xr = x + c * cp + r * rs;
            for (fc_int s = 0; s < S; s++) {
                const T *xs = xr + soff[s];
                FN(dvec) wv[FC_DNV];
                for (int v = 0; v < FC_DNV; v++) wv[v] = FN(dload)(w + v * DVL);
                w += DKB;
                for (int j = 0; j < FC_DMR; j++) {
                    const T a = rows == 1 ? xs[j] : (j < CB2 ? xs[j] : xs[r2 + j - CB2]);
                    for (int v = 0; v < FC_DNV; v++) acc[j][v] += wv[v] * a;
                }
            }
        }
    }
    for (int j = 0; j < FC_DMR; j++)
        for (int v = 0; v < FC_DNV; v++) FN(dstore)(tmp + j * DKB + v * DVL, acc[j][v]);
}

static void FN(direct_block1)(const T *x, const T *w, fc_int Cg, fc_int R, fc_int S,
                              fc_int cp, fc_int rs, const fc_int *soff, T *tmp)
{
    FN(direct_block_rows)(x, w, Cg, R, S, cp, rs, soff, 0, 1, tmp);
}

static void FN(direct_block2)(const T *x, const T *w, fc_int Cg, fc_int R, fc_int S,
                              fc_int cp, fc_int rs, const fc_int *soff, fc_int r2, T *tmp)
{
    FN(direct_block_rows)(x, w, Cg, R, S, cp, rs, soff, r2, 2, tmp);
}

/* Work item it = (((n*G + g)*Kb + kb)*brow + bp)*bcol + bq of the forward on the
 * phase layout xb (d->plane elements per channel plane): output channels kb*DKB ..
 * of group g, the block of pixels (bp, bq), stored to out[n, k, oh0 + p*ohs,
 * ow0 + q*ows] through the epilogue (bias[k], res at out's index, act). */
static void FN(direct_item)(const T *xb, const T *wb, T *out, const fc_direct *d, fc_int it)
{
    const fc_int bq = it % d->bcol, bp = it / d->bcol % d->brow;
    const fc_int kb = it / d->bcol / d->brow % d->Kb;
    const fc_int g = it / d->bcol / d->brow / d->Kb % d->G;
    const fc_int n = it / d->bcol / d->brow / d->Kb / d->G;
    const fc_int CB = FC_DMR / d->rows, p0 = bp * d->rows, q0 = bq * CB;
    const fc_int RSC = d->R * d->S * d->Cg;
    const T *x = xb + (n * d->G + g) * d->Cg * d->plane + p0 * d->sh * d->rp + q0;
    const T *w = wb + (g * d->Kb + kb) * RSC * DKB;
    T tmp[FC_DMR * DKB];
    if (d->rows == 1)
        FN(direct_block1)(x, w, d->Cg, d->R, d->S, d->plane, d->dh * d->rp, d->soff, tmp);
    else
        FN(direct_block2)(x, w, d->Cg, d->R, d->S, d->plane, d->dh * d->rp, d->soff,
                          d->sh * d->rp, tmp);
    const T *bias = (const T *)d->bias, *res = (const T *)d->res;
    const fc_int k0 = kb * DKB, nk = d->Kg - k0 < DKB ? d->Kg - k0 : DKB;
    const fc_int nq = d->Q - q0 < CB ? d->Q - q0 : CB, ows = d->ows;
    for (fc_int i = 0; i < d->rows && p0 + i < d->P; i++) {
        for (fc_int k = 0; k < nk; k++) {
            const fc_int ko = g * d->Kg + k0 + k;
            const fc_int o = ((n * d->K + ko) * d->OH + d->oh0 + (p0 + i) * d->ohs) * d->OW
                             + d->ow0 + q0 * ows;
            const T *t = tmp + i * CB * DKB + k;
            T *y = out + o;
            if (bias == NULL && res == NULL && d->act == 0) {
                for (fc_int q = 0; q < nq; q++) y[q * ows] = t[q * DKB];
                continue;
            }
            const T b = bias != NULL ? bias[ko] : 0;
            for (fc_int q = 0; q < nq; q++) {
                T v = t[q * DKB];
                if (bias != NULL) v += b;
                if (res != NULL) v += res[o + q * ows];
                y[q * ows] = FN(dact)(v, d->act);
            }
        }
    }
}

/* -- weight gradient: DKB output channels x FC_DMR input channels of one tap ---------- */

/* Work item it = ((((g*Cb + cb)*Kb + kb)*R + r)*S + s) over images [n0, n1): gw[k, c, r,
 * s] (K x Cg x R x S, the split's own) = sum over n, p, q of dyb[n, g, kb, p, q, k] *
 * xf[n, p*sh + r*dh, q*sw + s*dw, g*Cg + c] (the padded channels-last input), pixel by
 * pixel in order. */
static void FN(direct_weight_item)(const T *xf, const T *dyb, T *gw, const fc_dweight *d,
                                   fc_int n0, fc_int n1, fc_int it)
{
    const fc_int s = it % d->S, r = it / d->S % d->R, kb = it / d->S / d->R % d->Kb;
    const fc_int cb = it / d->S / d->R / d->Kb % d->Cb, g = it / d->S / d->R / d->Kb / d->Cb;
    const fc_int Cp = d->Cp, Wp = d->Wp, P = d->P, Q = d->Q;
    const fc_int c0 = cb * FC_DMR, k0 = kb * DKB;
    FN(dvec) acc[FC_DMR][FC_DNV];
    for (int j = 0; j < FC_DMR; j++)
        for (int v = 0; v < FC_DNV; v++) acc[j][v] = (FN(dvec)){0};
    for (fc_int n = n0; n < n1; n++) {
        const T *dn = dyb + ((n * d->G + g) * d->Kb + kb) * P * Q * DKB;
        for (fc_int p = 0; p < P; p++) {
            const T *xr = xf + ((n * d->Hp + p * d->sh + r * d->dh) * Wp + s * d->dw) * Cp
                          + g * d->Cg + c0;
            const T *dr = dn + p * Q * DKB;
            for (fc_int q = 0; q < Q; q++) {
                const T *xq = xr + q * d->sw * Cp;
                FN(dvec) dv[FC_DNV];
                for (int v = 0; v < FC_DNV; v++) dv[v] = FN(dload)(dr + q * DKB + v * DVL);
                for (int j = 0; j < FC_DMR; j++) {
                    const T a = xq[j];
                    for (int v = 0; v < FC_DNV; v++) acc[j][v] += dv[v] * a;
                }
            }
        }
    }
    T tmp[FC_DMR * DKB];
    for (int j = 0; j < FC_DMR; j++)
        for (int v = 0; v < FC_DNV; v++) FN(dstore)(tmp + j * DKB + v * DVL, acc[j][v]);
    const fc_int nk = d->Kg - k0 < DKB ? d->Kg - k0 : DKB;
    const fc_int nc = d->Cg - c0 < FC_DMR ? d->Cg - c0 : FC_DMR;
    for (fc_int k = 0; k < nk; k++)
        for (fc_int c = 0; c < nc; c++)
            gw[(((g * d->Kg + k0 + k) * d->Cg + c0 + c) * d->R + r) * d->S + s] =
                tmp[c * DKB + k];
}

/* -- depthwise (C == groups) ----------------------------------------------------------- */

/* The phase tile of one H x W plane x: t[a, b, i, j] = x padded by (pt, pl) at row
 * i*sh + a, column j*sw + b (0 outside x), Hq x Wq per phase. */
static void FN(dw_tile)(const T *x, fc_int H, fc_int W, fc_int sh, fc_int sw, fc_int pt,
                        fc_int pl, fc_int Hq, fc_int Wq, T *t)
{
    memset(t, 0, (size_t)(sh * sw * Hq * Wq) * sizeof(T));
    for (fc_int a = 0; a < sh; a++) {
        fc_int ilo, ihi, jlo, jhi;
        fc_valid_range(Hq, H, sh, a - pt, &ilo, &ihi);
        for (fc_int b = 0; b < sw; b++) {
            fc_valid_range(Wq, W, sw, b - pl, &jlo, &jhi);
            T *tb = t + (a * sw + b) * Hq * Wq;
            for (fc_int i = ilo; i < ihi; i++) {
                const T *row = x + (i * sh + a - pt) * W + b - pl;
                T *d = tb + i * Wq;
                if (sw == 1)
                    memcpy(d + jlo, row + jlo, (size_t)(jhi - jlo) * sizeof(T));
                else
                    for (fc_int j = jlo; j < jhi; j++) d[j] = row[j * sw];
            }
        }
    }
}

/* Plane it = n*K + k of the depthwise forward: out[n, k] (P x Q) = the correlation of
 * x[n, k / Kg] (padded by pt, pl) with w[k] (R x S; rotated by 180 degrees when
 * `flip`), through the epilogue. tile: scratch of sh*sw*Hq*Wq elements, Wq a multiple
 * of 2 vectors past Q plus the taps' reach. Blocks of 2 vectors of a row. */
static void FN(dw_plane)(const T *x, const T *w, T *out, const fc_dw *d, int flip,
                         const T *bias, const T *res, int act, T *tile, fc_int it)
{
    const fc_int n = it / d->K, k = it % d->K, C = d->K / d->Kg;
    const fc_int R = d->R, S = d->S, P = d->P, Q = d->Q, Hq = d->Hq, Wq = d->Wq;
    FN(dw_tile)(x + (n * C + k / d->Kg) * d->H * d->W, d->H, d->W, d->sh, d->sw, d->pt,
                d->pl, Hq, Wq, tile);
    T *y = out + it * P * Q;
    const T *rp = res != NULL ? res + it * P * Q : NULL;
    const T b = bias != NULL ? bias[k] : 0;
    const T *wk = w + k * R * S;
    for (fc_int p = 0; p < P; p++) {
        for (fc_int q0 = 0; q0 < Q; q0 += 2 * DVL) {
            FN(dvec) a0 = (FN(dvec)){0}, a1 = (FN(dvec)){0};
            for (fc_int r = 0; r < R; r++) {
                for (fc_int s = 0; s < S; s++) {
                    /* tap (r, s): phase ((r*dh) % sh, (s*dw) % sw), offset (r*dh) / sh,
                     * (s*dw) / sw in it */
                    const fc_int rr = r * d->dh, ss = s * d->dw;
                    const T *t = tile + ((rr % d->sh) * d->sw + ss % d->sw) * Hq * Wq
                                 + (p + rr / d->sh) * Wq + q0 + ss / d->sw;
                    const T wv = flip ? wk[(R - 1 - r) * S + S - 1 - s] : wk[r * S + s];
                    a0 += FN(dload)(t) * wv;
                    a1 += FN(dload)(t + DVL) * wv;
                }
            }
            T v[2 * DVL];
            FN(dstore)(v, a0);
            FN(dstore)(v + DVL, a1);
            const fc_int nq = Q - q0 < 2 * DVL ? Q - q0 : 2 * DVL;
            for (fc_int q = 0; q < nq; q++) {
                T o = v[q];
                if (bias != NULL) o += b;
                if (rp != NULL) o += rp[p * Q + q0 + q];
                y[p * Q + q0 + q] = FN(dact)(o, act);
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
 * the phase tile (scratch as dw_plane's), each tap's sum in vectors of pixels of a row
 * and added up in a fixed order. */
static void FN(dw_weight)(const T *x, const T *dy, T *gw, const fc_dw *d, T *tile, fc_int k)
{
    const fc_int R = d->R, S = d->S, P = d->P, Q = d->Q, Hq = d->Hq, Wq = d->Wq;
    const fc_int C = d->K / d->Kg, q1 = Q / DVL * DVL;
    T *g = gw + k * R * S;
    for (fc_int rs = 0; rs < R * S; rs++) g[rs] = 0;
    for (fc_int n = 0; n < d->N; n++) {
        FN(dw_tile)(x + (n * C + k / d->Kg) * d->H * d->W, d->H, d->W, d->sh, d->sw, d->pt,
                    d->pl, Hq, Wq, tile);
        const T *dk = dy + (n * d->K + k) * P * Q;
        for (fc_int r = 0; r < R; r++) {
            for (fc_int s = 0; s < S; s++) {
                const fc_int rr = r * d->dh, ss = s * d->dw;
                const T *t = tile + ((rr % d->sh) * d->sw + ss % d->sw) * Hq * Wq
                             + rr / d->sh * Wq + ss / d->sw;
                FN(dvec) acc = (FN(dvec)){0};
                T tail = 0;
                for (fc_int p = 0; p < P; p++) {
                    const T *tr = t + p * Wq, *dr = dk + p * Q;
                    for (fc_int q = 0; q < q1; q += DVL)
                        acc += FN(dload)(tr + q) * FN(dload)(dr + q);
                    for (fc_int q = q1; q < Q; q++) tail += tr[q] * dr[q];
                }
                T v[DVL];
                FN(dstore)(v, acc);
                T sum = 0;
                for (fc_int l = 0; l < DVL; l++) sum += v[l];
                g[r * S + s] += sum + tail;
            }
        }
    }
}

#undef DKB
#undef DVL
