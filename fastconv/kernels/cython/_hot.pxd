# The table of hot loops (src/fc_kernels.h), compiled once per instruction set; the
# Cython modules take the variant _isa.py chose (fc_table(name)) at import.
from libc.stdint cimport int64_t

cdef extern from "fc_kernels.h" nogil:
    ctypedef int64_t fc_int
    enum: FC_MR
    enum: FC_DTILE

    ctypedef struct fc_conv:
        fc_int N, C, H, W, K, R, S, G
        fc_int sh, sw, pt, pl, dh, dw, P, Q

    ctypedef struct fc_pool:
        fc_int H, W, kh, kw, sh, sw, ph, pw, dh, dw, P, Q

    ctypedef struct fc_direct:
        fc_int G, Cg, Kg, Kb, R, S, sh, dh, rp, plane, P, Q, rows, brow, bcol
        fc_int K, OH, OW, oh0, ohs, ow0, ows
        const void *bias
        const void *res
        int act
        fc_int Wq, nf
        const fc_int *toff
        int kb_inner
        int unpadded
        fc_int H, W, sw, dw, pt, pl, TR, TW
        const fc_int *toff_tile

    ctypedef struct fc_dweight:
        fc_int G, Cg, Kg, Cb, Kb, R, S, sh, sw, dh, dw, Hp, Wp, P, Q

    ctypedef struct fc_dw:
        fc_int N, K, Kg, H, W, R, S, sh, sw, pt, pl, dh, dw, P, Q, Hq, Wq, Hn, Wn, rows
        const fc_int *toff

    ctypedef struct fc_kernels:
        const char *name
        fc_int direct_pixels
        fc_int direct_flat_channels
        fc_int depthwise_rows
        void (*im2col_row_f32)(const float *x, float *col, const fc_conv *g, fc_int row,
                               fc_int n0, fc_int nt, fc_int p0, fc_int pr) noexcept nogil
        void (*im2col_row_f64)(const double *x, double *col, const fc_conv *g, fc_int row,
                               fc_int n0, fc_int nt, fc_int p0, fc_int pr) noexcept nogil
        void (*col2im_plane_f32)(const float *col, float *dx, const fc_conv *g, fc_int t,
                                 fc_int c, fc_int n0, fc_int nt, fc_int p0, fc_int pr,
                                 float *ph) noexcept nogil
        void (*col2im_plane_f64)(const double *col, double *dx, const fc_conv *g, fc_int t,
                                 fc_int c, fc_int n0, fc_int nt, fc_int p0, fc_int pr,
                                 double *ph) noexcept nogil
        void (*max_pool_plane_f32)(const float *x, float *y, int64_t *idx, const fc_pool *g) noexcept nogil
        void (*max_pool_plane_f64)(const double *x, double *y, int64_t *idx, const fc_pool *g) noexcept nogil
        void (*max_pool_nhwc_row_f32)(const float *x, float *y, const fc_pool *g, fc_int C,
                                      fc_int i) noexcept nogil
        void (*max_pool_nhwc_row_f64)(const double *x, double *y, const fc_pool *g, fc_int C,
                                      fc_int i) noexcept nogil
        void (*max_pool_backward_plane_f32)(const float *dy, const int64_t *idx, float *dx,
                                            fc_int HW, fc_int PQ) noexcept nogil
        void (*max_pool_backward_plane_f64)(const double *dy, const int64_t *idx, double *dx,
                                            fc_int HW, fc_int PQ) noexcept nogil
        void (*avg_pool_plane_f32)(const float *x, float *y, const fc_pool *g, int cip,
                                   fc_int divisor_override, double *acc) noexcept nogil
        void (*avg_pool_plane_f64)(const double *x, double *y, const fc_pool *g, int cip,
                                   fc_int divisor_override, double *acc) noexcept nogil
        void (*avg_pool_backward_plane_f32)(const float *dy, float *dx, const fc_pool *g,
                                            int cip, fc_int divisor_override) noexcept nogil
        void (*avg_pool_backward_plane_f64)(const double *dy, double *dx, const fc_pool *g,
                                            int cip, fc_int divisor_override) noexcept nogil
        void (*adaptive_avg_plane_f32)(const float *x, float *y, fc_int H, fc_int W,
                                       const int64_t *hs, const int64_t *he, fc_int P,
                                       const int64_t *ws, const int64_t *we, fc_int Q) noexcept nogil
        void (*adaptive_avg_plane_f64)(const double *x, double *y, fc_int H, fc_int W,
                                       const int64_t *hs, const int64_t *he, fc_int P,
                                       const int64_t *ws, const int64_t *we, fc_int Q) noexcept nogil
        void (*adaptive_avg_nhwc_f32)(const float *x, float *y, fc_int W, fc_int C,
                                      const int64_t *hs, const int64_t *he, const int64_t *ws,
                                      const int64_t *we, fc_int i, fc_int j,
                                      double *acc) noexcept nogil
        void (*adaptive_avg_nhwc_f64)(const double *x, double *y, fc_int W, fc_int C,
                                      const int64_t *hs, const int64_t *he, const int64_t *ws,
                                      const int64_t *we, fc_int i, fc_int j,
                                      double *acc) noexcept nogil
        void (*patch_gemm_f32)(const float *xf, const fc_int *offs, const float *U, float *A,
                               fc_int rows, fc_int Kp, fc_int kn, fc_int nb, fc_int Q,
                               fc_int pitch, fc_int step) noexcept nogil
        void (*patch_gemm_f64)(const double *xf, const fc_int *offs, const double *U,
                               double *A, fc_int rows, fc_int Kp, fc_int kn, fc_int nb,
                               fc_int Q, fc_int pitch, fc_int step) noexcept nogil
        void (*pixel_major_f32)(const float *src, fc_int ld, fc_int Kg, fc_int npx, float *D,
                                fc_int Kgp) noexcept nogil
        void (*pixel_major_f64)(const double *src, fc_int ld, fc_int Kg, fc_int npx,
                                double *D, fc_int Kgp) noexcept nogil
        void (*pointwise_panel_f32)(const float *x, fc_int C, fc_int HW, fc_int p0,
                                    fc_int np, const float *W, fc_int wk, fc_int wc,
                                    fc_int K, fc_int kb0, fc_int kb1, float *y,
                                    const float *bias,
                                    const float *res, int act, float *panel,
                                    fc_int cw, int fill) noexcept nogil
        void (*pointwise_panel_f64)(const double *x, fc_int C, fc_int HW, fc_int p0,
                                    fc_int np, const double *W, fc_int wk, fc_int wc,
                                    fc_int K, fc_int kb0, fc_int kb1, double *y,
                                    const double *bias,
                                    const double *res, int act, double *panel,
                                    fc_int cw, int fill) noexcept nogil
        void (*pointwise_input_f32)(const float *dy, fc_int HW, fc_int K, const float *W,
                                    fc_int C, fc_int c0, fc_int c1, fc_int p0, fc_int p1,
                                    float *dx, float *wpack, int fillw,
                                    float *dpack) noexcept nogil
        void (*pointwise_input_f64)(const double *dy, fc_int HW, fc_int K, const double *W,
                                    fc_int C, fc_int c0, fc_int c1, fc_int p0, fc_int p1,
                                    double *dx, double *wpack, int fillw,
                                    double *dpack) noexcept nogil
        fc_int (*pointwise_panel_cols_f32)() noexcept nogil
        fc_int (*pointwise_cols_f32)() noexcept nogil
        void (*pointwise_gather_f32)(const float *x, fc_int C, fc_int HW, fc_int W, fc_int Q,
                                     fc_int sh, fc_int sw, fc_int p0, fc_int np,
                                     float *panel, fc_int cw) noexcept nogil
        fc_int (*pointwise_panel_cols_f64)() noexcept nogil
        fc_int (*pointwise_cols_f64)() noexcept nogil
        void (*pointwise_gather_f64)(const double *x, fc_int C, fc_int HW, fc_int W, fc_int Q,
                                     fc_int sh, fc_int sw, fc_int p0, fc_int np,
                                     double *panel, fc_int cw) noexcept nogil
        void (*pointwise_nhwc_f32)(const float *x, fc_int C, const float *Wt, fc_int K,
                                   fc_int p0, fc_int p1, fc_int k0, float *y,
                                   const float *bias, const float *res, int act) noexcept nogil
        void (*pointwise_nhwc_f64)(const double *x, fc_int C, const double *Wt, fc_int K,
                                   fc_int p0, fc_int p1, fc_int k0, double *y,
                                   const double *bias, const double *res, int act) noexcept nogil
        void (*pointwise_weight_f32)(const float *x, fc_int xstep, fc_int n,
                                     const float *Wp, fc_int K, fc_int q0, fc_int q1,
                                     fc_int k0, float *y, int add) noexcept nogil
        void (*pointwise_weight_f64)(const double *x, fc_int xstep, fc_int n,
                                     const double *Wp, fc_int K, fc_int q0, fc_int q1,
                                     fc_int k0, double *y, int add) noexcept nogil
        void (*conv_nhwc_f32)(const float *x, fc_int rowstep, fc_int rows, fc_int xstep,
                              const fc_int *offs, fc_int n, const float *Wt, fc_int K,
                              fc_int Q, fc_int k0, float *y, const float *bias, const float *res,
                              int act) noexcept nogil
        void (*conv_nhwc_f64)(const double *x, fc_int rowstep, fc_int rows, fc_int xstep,
                              const fc_int *offs, fc_int n, const double *Wt, fc_int K,
                              fc_int Q, fc_int k0, double *y, const double *bias, const double *res,
                              int act) noexcept nogil
        void (*depthwise_nhwc_row_f32)(const float *x, fc_int H, fc_int W, fc_int C,
                                       fc_int cn, const float *w, fc_int R, fc_int S, fc_int h0,
                                       fc_int sh, fc_int sw, fc_int pl, fc_int dh, fc_int dw,
                                       fc_int Q, fc_int qa, fc_int qb, const fc_int *cols, float *y,
                                       const float *bias, const float *res,
                                       int act) noexcept nogil
        void (*depthwise_nhwc_row_f64)(const double *x, fc_int H, fc_int W, fc_int C,
                                       fc_int cn, const double *w, fc_int R, fc_int S, fc_int h0,
                                       fc_int sh, fc_int sw, fc_int pl, fc_int dh, fc_int dw,
                                       fc_int Q, fc_int qa, fc_int qb, const fc_int *cols, double *y,
                                       const double *bias, const double *res,
                                       int act) noexcept nogil
        void (*wino_slab_f32)(const float *x, fc_int C, fc_int H, fc_int W, fc_int h0,
                              fc_int ow, fc_int rows, fc_int Sw, float *S,
                              int nhwc) noexcept nogil
        void (*wino_input_f32)(const float *S, fc_int Sw, fc_int C, fc_int m, fc_int tw,
                               fc_int nt, float *V, fc_int ldt, float *tmp) noexcept nogil
        void (*wino_dy_f32)(const float *D, fc_int Dw, fc_int K, fc_int m, fc_int tw,
                            fc_int nt, float *dM, fc_int ldt, float *tmp) noexcept nogil
        void (*wino_output_f32)(const float *M, fc_int ldt, fc_int kp, fc_int nk, fc_int m,
                                fc_int tw, fc_int nt, float *y, fc_int P, fc_int Q,
                                fc_int p0, const float *bias, const float *res, int act,
                                float *tmp, fc_int ky) noexcept nogil
        void (*wino_slab_f64)(const double *x, fc_int C, fc_int H, fc_int W, fc_int h0,
                              fc_int ow, fc_int rows, fc_int Sw, double *S,
                              int nhwc) noexcept nogil
        void (*wino_input_f64)(const double *S, fc_int Sw, fc_int C, fc_int m, fc_int tw,
                               fc_int nt, double *V, fc_int ldt, double *tmp) noexcept nogil
        void (*wino_dy_f64)(const double *D, fc_int Dw, fc_int K, fc_int m, fc_int tw,
                            fc_int nt, double *dM, fc_int ldt, double *tmp) noexcept nogil
        void (*wino_output_f64)(const double *M, fc_int ldt, fc_int kp, fc_int nk, fc_int m,
                                fc_int tw, fc_int nt, double *y, fc_int P, fc_int Q,
                                fc_int p0, const double *bias, const double *res, int act,
                                double *tmp, fc_int ky) noexcept nogil
        void (*wino_filter_f32)(const float *w, fc_int Kw, fc_int Cw, int rot, fc_int m,
                                fc_int c, fc_int kp, float *U) noexcept nogil
        void (*wino_filter_t_f32)(float *dU, fc_int parts, fc_int K, fc_int C, fc_int m,
                                  fc_int k, double *tmp, float *dw) noexcept nogil
        void (*wino_streamed_f32)(const float *V, fc_int rows, fc_int C,
                                  const float *w, fc_int Kw, fc_int Cw, int rot, fc_int m,
                                  fc_int K, fc_int k0, fc_int cb_max, float *M,
                                  float *scratch) noexcept nogil
        fc_int (*wino_streamed_scratch_f32)(fc_int m, fc_int cb_max) noexcept nogil
        void (*wino_filter_f64)(const double *w, fc_int Kw, fc_int Cw, int rot, fc_int m,
                                fc_int c, fc_int kp, double *U) noexcept nogil
        void (*wino_filter_t_f64)(double *dU, fc_int parts, fc_int K, fc_int C, fc_int m,
                                  fc_int k, double *tmp, double *dw) noexcept nogil
        void (*wino_streamed_f64)(const double *V, fc_int rows, fc_int C,
                                  const double *w, fc_int Kw, fc_int Cw, int rot, fc_int m,
                                  fc_int K, fc_int k0, fc_int cb_max, double *M,
                                  double *scratch) noexcept nogil
        fc_int (*wino_streamed_scratch_f64)(fc_int m, fc_int cb_max) noexcept nogil
        fc_int (*direct_block_f32)() noexcept nogil
        void (*direct_phase_row_f32)(const float *src, fc_int H, fc_int W, float *dst, fc_int Hp,
                                     fc_int sw, fc_int Wq, fc_int pt, fc_int pl,
                                     fc_int it) noexcept nogil
        void (*direct_xblock_row_f32)(const float *x, fc_int C, fc_int H, fc_int W, fc_int G,
                                      fc_int Cg, float *d, fc_int Hp, fc_int Wp, fc_int pt,
                                      fc_int pl, fc_int it) noexcept nogil
        void (*direct_dy_row_f32)(const float *dy, fc_int K, fc_int P, fc_int Q, fc_int G,
                                  fc_int Kg, float *dyb, fc_int it) noexcept nogil
        void (*direct_item_f32)(const float *xb, const float *wb, float *out, const fc_direct *d,
                                fc_int it) noexcept nogil
        void (*direct_streamed_item_f32)(const float *xb, const float *w, float *out,
                                         const fc_direct *d, fc_int N, int flip, fc_int it,
                                         float *wl) noexcept nogil
        void (*direct_flat_row_f32)(const float *src, fc_int H, fc_int W, float *dst, fc_int Hq,
                                    fc_int sh, fc_int sw, fc_int Wq, fc_int pt, fc_int pl,
                                    fc_int it) noexcept nogil
        fc_int (*direct_flat_pixels_f32)() noexcept nogil
        void (*direct_flat_item_f32)(const float *xb, const float *wb, float *out,
                                     const fc_direct *d, fc_int it) noexcept nogil
        void (*direct_weight_item_f32)(const float *xn, const float *dyb, const fc_dweight *d,
                                       fc_int n, fc_int it, float *acc) noexcept nogil
        void (*direct_weight_store_f32)(float *gw, const fc_dweight *d, fc_int it,
                                        const float *acc) noexcept nogil
        fc_int (*direct_weight_rows_f32)() noexcept nogil
        fc_int (*direct_weight_cols_f32)() noexcept nogil
        void (*dw_plane_f32)(const float *x, const float *w, float *out, const fc_dw *d, int flip,
                             const float *bias, const float *res, int act, float *tile,
                             fc_int it) noexcept nogil
        void (*dw_scatter_f32)(const float *dy, const float *w, float *dx, const fc_dw *d,
                               fc_int it) noexcept nogil
        void (*dw_weight_f32)(const float *x, const float *dy, float *gw, const fc_dw *d,
                              float *tile, fc_int k) noexcept nogil
        fc_int (*direct_block_f64)() noexcept nogil
        void (*direct_phase_row_f64)(const double *src, fc_int H, fc_int W, double *dst, fc_int Hp,
                                     fc_int sw, fc_int Wq, fc_int pt, fc_int pl,
                                     fc_int it) noexcept nogil
        void (*direct_xblock_row_f64)(const double *x, fc_int C, fc_int H, fc_int W, fc_int G,
                                      fc_int Cg, double *d, fc_int Hp, fc_int Wp, fc_int pt,
                                      fc_int pl, fc_int it) noexcept nogil
        void (*direct_dy_row_f64)(const double *dy, fc_int K, fc_int P, fc_int Q, fc_int G,
                                  fc_int Kg, double *dyb, fc_int it) noexcept nogil
        void (*direct_item_f64)(const double *xb, const double *wb, double *out, const fc_direct *d,
                                fc_int it) noexcept nogil
        void (*direct_streamed_item_f64)(const double *xb, const double *w, double *out,
                                         const fc_direct *d, fc_int N, int flip, fc_int it,
                                         double *wl) noexcept nogil
        void (*direct_flat_row_f64)(const double *src, fc_int H, fc_int W, double *dst, fc_int Hq,
                                    fc_int sh, fc_int sw, fc_int Wq, fc_int pt, fc_int pl,
                                    fc_int it) noexcept nogil
        fc_int (*direct_flat_pixels_f64)() noexcept nogil
        void (*direct_flat_item_f64)(const double *xb, const double *wb, double *out,
                                     const fc_direct *d, fc_int it) noexcept nogil
        void (*direct_weight_item_f64)(const double *xn, const double *dyb, const fc_dweight *d,
                                       fc_int n, fc_int it, double *acc) noexcept nogil
        void (*direct_weight_store_f64)(double *gw, const fc_dweight *d, fc_int it,
                                        const double *acc) noexcept nogil
        fc_int (*direct_weight_rows_f64)() noexcept nogil
        fc_int (*direct_weight_cols_f64)() noexcept nogil
        void (*dw_plane_f64)(const double *x, const double *w, double *out, const fc_dw *d, int flip,
                             const double *bias, const double *res, int act, double *tile,
                             fc_int it) noexcept nogil
        void (*dw_scatter_f64)(const double *dy, const double *w, double *dx, const fc_dw *d,
                               fc_int it) noexcept nogil
        void (*dw_weight_f64)(const double *x, const double *dy, double *gw, const fc_dw *d,
                              double *tile, fc_int k) noexcept nogil

    const char *FC_BUILT
    const fc_kernels *fc_table(const char *name)


cdef extern from "fc_cpu.h" nogil:
    int fc_cpu_runs(const char *name)


ctypedef fused real:
    float
    double


cdef inline const fc_kernels *load_table(module, isa) except NULL:
    """The table of hot loops for instruction set ``isa`` (``_isa.ISA``), looked up by
    ``module`` at its import; ImportError naming the module if this build lacks it."""
    cdef const fc_kernels *table = fc_table(isa.encode("ascii"))
    if table == NULL:
        raise ImportError(f"{module}: no hot loops for ISA {isa!r}")
    return table
