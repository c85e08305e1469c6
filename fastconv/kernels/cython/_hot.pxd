# The table of hot loops (src/fc_kernels.h), compiled once per instruction set; the
# Cython modules take the variant _isa.py chose (fc_table(name)) at import.
from libc.stdint cimport int64_t

cdef extern from "fc_kernels.h" nogil:
    ctypedef int64_t fc_int

    ctypedef struct fc_conv:
        fc_int N, C, H, W, K, R, S, G
        fc_int sh, sw, pt, pl, dh, dw, P, Q

    ctypedef struct fc_pool:
        fc_int H, W, kh, kw, sh, sw, ph, pw, dh, dw, P, Q

    ctypedef struct fc_kernels:
        const char *name
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
        void (*patch_gemm_f32)(const float *xf, const fc_int *offs, const float *U, float *A,
                               fc_int rows, fc_int Kp, fc_int nb, fc_int Q, fc_int pitch,
                               fc_int step) noexcept nogil
        void (*patch_gemm_f64)(const double *xf, const fc_int *offs, const double *U,
                               double *A, fc_int rows, fc_int Kp, fc_int nb, fc_int Q,
                               fc_int pitch, fc_int step) noexcept nogil
        void (*pixel_major_f32)(const float *src, fc_int ld, fc_int Kg, fc_int npx, float *D,
                                fc_int Kgp) noexcept nogil
        void (*pixel_major_f64)(const double *src, fc_int ld, fc_int Kg, fc_int npx,
                                double *D, fc_int Kgp) noexcept nogil
        void (*wino_slab_f32)(const float *x, fc_int C, fc_int H, fc_int W, fc_int h0,
                              fc_int ow, fc_int rows, fc_int Sw, float *S) noexcept nogil
        void (*wino_input_f32)(const float *S, fc_int Sw, fc_int C, fc_int m, fc_int tw,
                               fc_int nt, float *V, fc_int ldt, float *tmp) noexcept nogil
        void (*wino_dy_f32)(const float *D, fc_int Dw, fc_int K, fc_int m, fc_int tw,
                            fc_int nt, float *dM, fc_int ldt, float *tmp) noexcept nogil
        void (*wino_output_f32)(const float *M, fc_int ldt, fc_int kp, fc_int nk, fc_int m,
                                fc_int tw, fc_int nt, float *y, fc_int P, fc_int Q,
                                fc_int p0, const float *bias, const float *res, int act,
                                float *tmp) noexcept nogil
        void (*wino_slab_f64)(const double *x, fc_int C, fc_int H, fc_int W, fc_int h0,
                              fc_int ow, fc_int rows, fc_int Sw, double *S) noexcept nogil
        void (*wino_input_f64)(const double *S, fc_int Sw, fc_int C, fc_int m, fc_int tw,
                               fc_int nt, double *V, fc_int ldt, double *tmp) noexcept nogil
        void (*wino_dy_f64)(const double *D, fc_int Dw, fc_int K, fc_int m, fc_int tw,
                            fc_int nt, double *dM, fc_int ldt, double *tmp) noexcept nogil
        void (*wino_output_f64)(const double *M, fc_int ldt, fc_int kp, fc_int nk, fc_int m,
                                fc_int tw, fc_int nt, double *y, fc_int P, fc_int Q,
                                fc_int p0, const double *bias, const double *res, int act,
                                double *tmp) noexcept nogil
        void (*wino_filter_f32)(const float *w, fc_int Kw, fc_int Cw, int rot, fc_int m,
                                fc_int c, fc_int kp, float *U) noexcept nogil
        void (*wino_filter_t_f32)(float *dU, fc_int parts, fc_int K, fc_int C, fc_int m,
                                  fc_int k, double *tmp, float *dw) noexcept nogil
        void (*wino_filter_f64)(const double *w, fc_int Kw, fc_int Cw, int rot, fc_int m,
                                fc_int c, fc_int kp, double *U) noexcept nogil
        void (*wino_filter_t_f64)(double *dU, fc_int parts, fc_int K, fc_int C, fc_int m,
                                  fc_int k, double *tmp, double *dw) noexcept nogil

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
