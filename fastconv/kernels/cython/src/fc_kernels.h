/* The hot loops of fastconv's Cython backend, reached through a table of function
 * pointers.
 *
 * The loops (fc_impl.h) are compiled once per instruction set, each build in its own
 * object with its own flags (isa_*.c): baseline x86-64 (SSE2), AVX2 + FMA, AVX-512
 * (F, BW, DQ, VL at 512-bit width); elsewhere (or with FASTCONV_NATIVE=1: -march=native)
 * one portable build. Each object exports only its table (fc_kernels_<isa>()); every
 * loop in it is static, so code built for a wider instruction set can run only through
 * its table. The Cython modules take the table _isa.py chooses at import
 * (fc_table(name)): the widest the CPU runs, or FASTCONV_ISA's lower one.
 *
 * Which variants are built comes from the build (setup.py): FC_NATIVE, or FC_HAVE_AVX2
 * and FC_HAVE_AVX512 beside the baseline.
 */
#ifndef FASTCONV_KERNELS_H
#define FASTCONV_KERNELS_H

#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#  include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(_WIN32)
#  define FC_HIDDEN __attribute__((visibility("hidden")))
#else
#  define FC_HIDDEN
#endif

typedef int64_t fc_int;

/* Output channels per register block of patch_gemm and pointwise_panel (fc_impl.h),
 * in every instruction-set variant. */
#define FC_MR 6
/* elements of the unpadded lanes core's zero-padded window of a border block (fc_direct) */
#define FC_DTILE 2048

/* A convolution's geometry (fastconv._geometry.ConvParams): input (N, C, H, W), weight
 * (K, C/G, R, S), output (N, K, P, Q), stride (sh, sw), top/left padding (pt, pl),
 * dilation (dh, dw). */
typedef struct {
    fc_int N, C, H, W, K, R, S, G;
    fc_int sh, sw, pt, pl, dh, dw, P, Q;
} fc_conv;

/* A pooling sweep's geometry (fastconv._geometry.PoolParams) for one (H, W) plane:
 * window (kh, kw), stride (sh, sw), padding (ph, pw), dilation (dh, dw), output (P, Q). */
typedef struct {
    fc_int H, W, kh, kw, sh, sw, ph, pw, dh, dw, P, Q;
} fc_pool;

/* Direct convolution (fc_direct.h): one forward call on a slice of images in the phase
 * layout xb[n, c, hp, b, wq] (rp = sw*Wq elements per row, plane = Hp*rp per channel),
 * blocks of `rows` x FC_DMR/rows output pixels (brow x bcol of them) x the variant's
 * channel block (Kb blocks per group); output pixel (p, q) stored at out[n, k, oh0 +
 * p*ohs, ow0 + q*ows] (OH x OW planes, K channels); toff[r*S + s] tap (r, s)'s offset
 * in a channel's planes (either core's); bias (K) and res (out's shape) NULL when
 * absent, act the activation. */
typedef struct {
    fc_int G, Cg, Kg, Kb, R, S, sh, dh, rp, plane, P, Q, rows, brow, bcol;
    fc_int K, OH, OW, oh0, ohs, ow0, ows;
    const void *bias, *res;
    int act;
    /* the flat core: nf blocks of pixels of the flattened output grid (rows of Wq
     * columns); kb_inner: an item's channel blocks vary fastest (they share its
     * pixels) */
    fc_int Wq, nf;
    const fc_int *toff;
    int kb_inner;
    /* unpadded (the lanes core, one-row blocks): xb is the input itself (N, C, H, W;
     * plane = H*W), toff[r*S + s] = r*dh*W + s*dw; a block whose taps all fall inside
     * reads it in place (pixel j at column stride sw), any other reads a zero-padded
     * copy of its Cg x TR x TW window made on the stack (toff_tile: r*dh*TW + s*dw) */
    int unpadded;
    fc_int H, W, sw, dw, pt, pl, TR, TW;
    const fc_int *toff_tile;
} fc_direct;

/* The direct weight gradient: input xf[n, g, cb, hp, wp, c] (Hp x Wp pixels of blocks of
 * FC_DMR channels, zero-padded), dy as dyb[n, g, kb, p, q, k]; Cb blocks of FC_DMR input
 * channels and Kb of the channel block per group. */
typedef struct {
    fc_int G, Cg, Kg, Cb, Kb, R, S, sh, sw, dh, dw, Hp, Wp, P, Q;
} fc_dweight;

/* Depthwise (C == groups, Kg = K / C outputs per input channel): input (N, C, H, W),
 * output (N, K, P, Q), phase tiles of Hq x Wq per phase, of which the valid outputs
 * read Hn x Wn; toff[r*S + s]: the offset of tap (r, s) in the tile; blocks of `rows`
 * output rows (FC_DWR or 7). */
typedef struct {
    fc_int N, K, Kg, H, W, R, S, sh, sw, pt, pl, dh, dw, P, Q, Hq, Wq, Hn, Wn, rows;
    const fc_int *toff;
} fc_dw;

#define FC_SIGNATURES(T, X)                                                              \
    /* col row `row` = (c*R + r)*S + s of a tile of nt images from n0, output rows     \
     * p0 .. p0+pr: col[row*cols + (t*pr + i)*Q + q], cols = nt*pr*Q (0 outside x) */  \
    void (*im2col_row_##X)(const T *x, T *col, const fc_conv *g, fc_int row,            \
                           fc_int n0, fc_int nt, fc_int p0, fc_int pr);                 \
    /* dx[n0 + t, c] += the patches of channel c in col, added back where gathered;    \
     * ph: sw * ceil(W / sw) elements of scratch */                                     \
    void (*col2im_plane_##X)(const T *col, T *dx, const fc_conv *g, fc_int t, fc_int c, \
                             fc_int n0, fc_int nt, fc_int p0, fc_int pr, T *ph);        \
    /* one (image, channel) plane of max pooling: values and flat indices */           \
    void (*max_pool_plane_##X)(const T *x, T *y, int64_t *idx, const fc_pool *g);       \
    /* channels last, values only: output row i (Q, C) of one image (H, W, C) */         \
    void (*max_pool_nhwc_row_##X)(const T *x, T *y, const fc_pool *g, fc_int C,          \
                                  fc_int i);                                             \
    void (*max_pool_backward_plane_##X)(const T *dy, const int64_t *idx, T *dx,         \
                                        fc_int HW, fc_int PQ);                           \
    /* acc: Q doubles of scratch */                                                     \
    void (*avg_pool_plane_##X)(const T *x, T *y, const fc_pool *g, int count_include_pad, \
                               fc_int divisor_override, double *acc);                   \
    void (*avg_pool_backward_plane_##X)(const T *dy, T *dx, const fc_pool *g,           \
                                        int count_include_pad, fc_int divisor_override); \
    void (*adaptive_avg_plane_##X)(const T *x, T *y, fc_int H, fc_int W,                \
                                   const int64_t *hs, const int64_t *he, fc_int P,      \
                                   const int64_t *ws, const int64_t *we, fc_int Q);     \
    /* channels last: window (i, j)'s C means; acc: C doubles of scratch */              \
    void (*adaptive_avg_nhwc_##X)(const T *x, T *y, fc_int W, fc_int C,                  \
                                  const int64_t *hs, const int64_t *he,                 \
                                  const int64_t *ws, const int64_t *we, fc_int i,       \
                                  fc_int j, double *acc);                               \
    /* A (rows, Kp) += V @ U in columns k < kn: V's row i, pixel (b, q) is           \
     * xf[offs[i] + b*pitch + q*step] (patch rows read in place), U (nb*Q, Kp)          \
     * row-major, Kp a multiple of pointwise_cols() */                                  \
    void (*patch_gemm_##X)(const T *xf, const fc_int *offs, const T *U, T *A,           \
                           fc_int rows, fc_int Kp, fc_int kn, fc_int nb, fc_int Q,      \
                           fc_int pitch, fc_int step);                                   \
    /* D[px*Kgp + k] = src[k*ld + px] for k < Kg, px < npx */                           \
    void (*pixel_major_##X)(const T *src, fc_int ld, fc_int Kg, fc_int npx, T *D,       \
                            fc_int Kgp);                                                \
    /* 1x1 stride-1 convolution of pixels [p0, p0+np) of one image and group, output   \
     * row blocks [kb0, kb1), the epilogue in its store (fc_impl.h); W[k, c] of the     \
     * group at W[k*wk + c*wc]; panel: C * cw elements of scratch, cw pixels a         \
     * multiple of pointwise_cols() up to pointwise_panel_cols() */                     \
    void (*pointwise_panel_##X)(const T *x, fc_int C, fc_int HW, fc_int p0, fc_int np,  \
                                const T *W, fc_int wk, fc_int wc, fc_int K, fc_int kb0, \
                                fc_int kb1, T *y,                                       \
                                const T *bias, const T *res, int act, T *panel,         \
                                fc_int cw, int fill);                                   \
    /* 1x1 stride-1 input gradient of one image and group, channels [c0, c1) (c0 a     \
     * multiple of pointwise_cols()) x pixels [p0, p1), W (K, C) read as it is, its    \
     * columns copied to wpack (K * (c1 - c0) rounded up to pointwise_cols(): fillw 1  \
     * all first, 0 kept from the call before, 2 a panel at a time), dy's to dpack     \
     * (K * (p1 - p0)) */                                                               \
    void (*pointwise_input_##X)(const T *dy, fc_int HW, fc_int K, const T *W, fc_int C, \
                                fc_int c0, fc_int c1, fc_int p0, fc_int p1, T *dx,     \
                                T *wpack, int fillw, T *dpack);                         \
    fc_int (*pointwise_panel_cols_##X)(void);                                           \
    fc_int (*pointwise_cols_##X)(void);                                                 \
    void (*pointwise_gather_##X)(const T *x, fc_int C, fc_int HW, fc_int W, fc_int Q,  \
                                 fc_int sh, fc_int sw, fc_int p0, fc_int np, T *panel,  \
                                 fc_int cw);                                            \
    /* channels last: pixels [p0, p1) x output channels [k0, k0 + pointwise_cols()),  \
     * Wt in panels of pointwise_cols() channels, each (C, pointwise_cols()), the     \
     * epilogue in the store (fc_impl.h) */                                            \
    void (*pointwise_nhwc_##X)(const T *x, fc_int C, const T *Wt, fc_int K, fc_int p0,  \
                               fc_int p1, fc_int k0, T *y, const T *bias, const T *res, \
                               int act);                                                \
    /* 1x1 weight gradient: rows [q0, q1) of y (dy's channels, n pixels xstep apart) \
     * x a panel's columns [k0, k0 + pointwise_cols()) (fc_impl.h), added to y where  \
     * add */                                                                          \
    void (*pointwise_weight_##X)(const T *x, fc_int xstep, fc_int n, const T *Wp,       \
                                 fc_int K, fc_int q0, fc_int q1, fc_int k0, T *y,       \
                                 int add);                                              \
    /* channels last, any kernel: output rows x output channels [k0, k0 +             \
     * pointwise_cols()), patches read in place through offs (fc_impl.h) */           \
    void (*conv_nhwc_##X)(const T *x, fc_int rowstep, fc_int rows, fc_int xstep,        \
                          const fc_int *offs, fc_int n, const T *Wt, fc_int K,          \
                          fc_int Q, fc_int k0, T *y, const T *bias, const T *res,       \
                          int act);                                                     \
    /* depthwise, channels last: one output row (fc_impl.h) */                       \
    void (*depthwise_nhwc_row_##X)(const T *x, fc_int H, fc_int W, fc_int C, fc_int cn, \
                                   const T *w,                                          \
                                   fc_int R, fc_int S, fc_int h0, fc_int sh,            \
                                   fc_int sw, fc_int pl,                                \
                                   fc_int dh, fc_int dw, fc_int Q, fc_int qa, fc_int qb, \
                                   const fc_int *cols, T *y, const T *bias,             \
                                   const T *res, int act);                              \
    /* Winograd (fc_winograd.h): channels-last slab of one image's rows (from NCHW or, \
     * nhwc, channels-last input), the input and dy transforms of a block of tiles, the \
     * output transform into NCHW (ky 0) or channels last (ky: a pixel's stride), with \
     * the epilogue */                                                                  \
    void (*wino_slab_##X)(const T *x, fc_int C, fc_int H, fc_int W, fc_int h0,          \
                          fc_int ow, fc_int rows, fc_int Sw, T *S, int nhwc);           \
    void (*wino_input_##X)(const T *S, fc_int Sw, fc_int C, fc_int m, fc_int tw,        \
                           fc_int nt, T *V, fc_int ldt, T *tmp);                        \
    void (*wino_dy_##X)(const T *D, fc_int Dw, fc_int K, fc_int m, fc_int tw,           \
                        fc_int nt, T *dM, fc_int ldt, T *tmp);                          \
    void (*wino_output_##X)(const T *M, fc_int ldt, fc_int kp, fc_int nk, fc_int m,     \
                            fc_int tw, fc_int nt, T *y, fc_int P, fc_int Q, fc_int p0,  \
                            const T *bias, const T *res, int act, T *tmp, fc_int ky);   \
    /* the filter transform of input channel c; the weight gradient's of output k */    \
    void (*wino_filter_##X)(const T *w, fc_int Kw, fc_int Cw, int rot, fc_int m,        \
                            fc_int c, fc_int kp, T *U);                                 \
    void (*wino_filter_t_##X)(T *dU, fc_int parts, fc_int K, fc_int C, fc_int m,        \
                              fc_int k, double *tmp, T *dw);                   \
    /* the streamed variant's GEMMs for a panel of output channels, and its scratch */  \
    void (*wino_streamed_##X)(const T *V, fc_int rows, fc_int C, const T *w, fc_int Kw, \
                              fc_int Cw, int rot, fc_int m, fc_int K, fc_int k0,        \
                              fc_int cb_max, T *M, T *scratch);                         \
    fc_int (*wino_streamed_scratch_##X)(fc_int m, fc_int cb_max);                       \
    /* direct (fc_direct.h): the channel block; layouts row by row; a forward work    \
     * item, a weight-gradient item; depthwise planes (forward, scatter, weight) */    \
    fc_int (*direct_block_##X)(void);                                                   \
    void (*direct_phase_row_##X)(const T *src, fc_int H, fc_int W, T *dst, fc_int Hp,  \
                                 fc_int sw, fc_int Wq, fc_int pt, fc_int pl, fc_int it); \
    void (*direct_xblock_row_##X)(const T *x, fc_int C, fc_int H, fc_int W, fc_int G,   \
                                  fc_int Cg, T *d, fc_int Hp, fc_int Wp, fc_int pt,     \
                                  fc_int pl, fc_int it);                                \
    void (*direct_dy_row_##X)(const T *dy, fc_int K, fc_int P, fc_int Q, fc_int G,      \
                              fc_int Kg, T *dyb, fc_int it);                            \
    void (*direct_item_##X)(const T *xb, const T *wb, T *out, const fc_direct *d,       \
                            fc_int it);                                                 \
    void (*direct_streamed_item_##X)(const T *xb, const T *w, T *out, const fc_direct *d, \
                                     fc_int N, int flip, fc_int it, T *wl);             \
    void (*direct_flat_row_##X)(const T *src, fc_int H, fc_int W, T *dst, fc_int Hq,   \
                                fc_int sh, fc_int sw, fc_int Wq, fc_int pt, fc_int pl,  \
                                fc_int it);                                             \
    fc_int (*direct_flat_pixels_##X)(void);                                             \
    void (*direct_flat_item_##X)(const T *xb, const T *wb, T *out, const fc_direct *d,  \
                                 fc_int it);                                            \
    void (*direct_weight_item_##X)(const T *xn, const T *dyb, const fc_dweight *d,      \
                                   fc_int n, fc_int it, T *acc);                        \
    void (*direct_weight_store_##X)(T *gw, const fc_dweight *d, fc_int it, const T *acc); \
    fc_int (*direct_weight_rows_##X)(void);                                             \
    fc_int (*direct_weight_cols_##X)(void);                                             \
    void (*dw_plane_##X)(const T *x, const T *w, T *out, const fc_dw *d, int flip,      \
                         const T *bias, const T *res, int act, T *tile, fc_int it);     \
    void (*dw_scatter_##X)(const T *dy, const T *w, T *dx, const fc_dw *d, fc_int it);  \
    void (*dw_weight_##X)(const T *x, const T *dy, T *gw, const fc_dw *d, T *tile,      \
                          fc_int k);

typedef struct {
    const char *name;
    fc_int direct_pixels;          /* pixels of direct's register block (FC_DMR) */
    fc_int direct_flat_channels;   /* output channels of direct's flat block (FC_FKB) */
    fc_int depthwise_rows;         /* output rows of depthwise's block (FC_DWR) */
    FC_SIGNATURES(float, f32)
    FC_SIGNATURES(double, f64)
} fc_kernels;

FC_HIDDEN const fc_kernels *fc_kernels_baseline(void);
FC_HIDDEN const fc_kernels *fc_kernels_avx2(void);
FC_HIDDEN const fc_kernels *fc_kernels_avx512(void);
FC_HIDDEN const fc_kernels *fc_kernels_native(void);

/* The variants this build holds, narrowest first, comma-separated. */
#if defined(FC_NATIVE)
#  define FC_BUILT "native"
#elif defined(FC_HAVE_AVX2) && defined(FC_HAVE_AVX512)
#  define FC_BUILT "baseline,avx2,avx512"
#elif defined(FC_HAVE_AVX2)
#  define FC_BUILT "baseline,avx2"
#else
#  define FC_BUILT "baseline"
#endif

/* The table of variant `name` (one of FC_BUILT), or NULL. */
static inline const fc_kernels *fc_table(const char *name)
{
#if defined(FC_NATIVE)
    if (strcmp(name, "native") == 0) return fc_kernels_native();
#else
    if (strcmp(name, "baseline") == 0) return fc_kernels_baseline();
#  if defined(FC_HAVE_AVX2)
    if (strcmp(name, "avx2") == 0) return fc_kernels_avx2();
#  endif
#  if defined(FC_HAVE_AVX512)
    if (strcmp(name, "avx512") == 0) return fc_kernels_avx512();
#  endif
#endif
    return NULL;
}

#endif
