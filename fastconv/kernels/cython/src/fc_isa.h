/* The body of one instruction-set variant (isa_<name>.c defines FC_ISA and is compiled
 * with that variant's flags): the loops of fc_impl.h for float and double, and the
 * table that is this object's only exported symbol. */
#include "fc_kernels.h"

#define FC_CAT_(a, b) a##_##b
#define FC_CAT(a, b) FC_CAT_(a, b)

/* The register block of the patch GEMM: FC_MR rows x FC_NV vectors of FC_VB bytes,
 * as wide as the variant's registers, within their number (16 xmm/ymm, 32 zmm). */
#if defined(__GNUC__) || defined(__clang__)
#  define FC_VECTORS 1
/* An empty asm that may change v: the compiler keeps v as it is in a register and
 * derives nothing from it across this point (each use says what it prevents) */
#  define FC_OPAQUE(v) __asm__("" : "+r"(v))
#  if defined(__AVX512F__)
#    define FC_VB 64
#    define FC_NV 4
#  elif defined(__AVX__)
#    define FC_VB 32
#    define FC_NV 2
#  else
#    define FC_VB 16
#    define FC_NV 2
#  endif
#else
#  define FC_VECTORS 0
#endif

/* Direct's register block (fc_direct.h): FC_DMR pixels x FC_DNV vectors of output
 * channels, 28 of 32 zmm, 12 of 16 ymm or xmm */
#define FC_DNV 2
#if FC_VECTORS && defined(__AVX512F__)
#  define FC_DMR 14
#else
#  define FC_DMR 6
#endif
/* Direct's flat block (fc_direct.h): FC_FNV vectors of consecutive pixels x FC_FKB
 * output channels broadcast, 24 of 32 zmm, 12 of 16 ymm or xmm (the Numba backend's
 * FLAT_BLOCKS, kernels/layouts.py) */
#if FC_VECTORS && defined(__AVX512F__)
#  define FC_FNV 2
#  define FC_FKB 12
#else
#  define FC_FNV 3
#  define FC_FKB 4
#endif
/* Depthwise's block: FC_DWR output rows x one vector */
#define FC_DWR 8

#if !defined(__GNUC__) && !defined(__clang__) && !defined(restrict)
#  define restrict __restrict
#endif

/* [lo, hi): the j in [0, n) whose position j*step + off lies in [0, size) (the Numba
 * backend's _ranges.valid_range, with lo also capped at n) */
static inline void fc_valid_range(fc_int n, fc_int size, fc_int step, fc_int off,
                                  fc_int *lo, fc_int *hi)
{
    fc_int l = off >= 0 ? 0 : (-off + step - 1) / step;
    fc_int h = size - 1 - off < 0 ? 0 : (size - 1 - off) / step + 1;
    if (l > n) l = n;
    if (h > n) h = n;
    *lo = l;
    *hi = h > l ? h : l;
}

/* [j_lo, j_hi): the outputs whose window of k taps (dilation d) lies inside [0, size) */
static inline void fc_inner_range_(fc_int Q, fc_int size, fc_int s, fc_int pad, fc_int d,
                                   fc_int k, fc_int *j_lo, fc_int *j_hi)
{
    fc_int lo = 0;
    while (lo < Q && lo * s - pad < 0) lo++;
    fc_int hi = lo;
    while (hi < Q && hi * s - pad + (k - 1) * d <= size - 1) hi++;
    *j_lo = lo;
    *j_hi = hi;
}

/* Window (i, j) of average pooling clipped to the input, and its divisor (PyTorch's
 * rule); the Numba kernel's _avg_window. */
static inline void fc_avg_window_(const fc_pool *g, fc_int i, fc_int j, int cip, fc_int dov,
                                  fc_int *h0, fc_int *h1, fc_int *w0, fc_int *w1, fc_int *div)
{
    fc_int a0 = i * g->sh - g->ph, b0 = j * g->sw - g->pw;
    fc_int a1 = a0 + g->kh < g->H + g->ph ? a0 + g->kh : g->H + g->ph;
    fc_int b1 = b0 + g->kw < g->W + g->pw ? b0 + g->kw : g->W + g->pw;
    const fc_int padded = (a1 - a0) * (b1 - b0);
    a0 = a0 > 0 ? a0 : 0;
    b0 = b0 > 0 ? b0 : 0;
    a1 = a1 < g->H ? a1 : g->H;
    b1 = b1 < g->W ? b1 : g->W;
    *div = dov > 0 ? dov : (cip ? padded : (a1 - a0) * (b1 - b0));
    *h0 = a0; *h1 = a1; *w0 = b0; *w1 = b1;
}

#define T float
#define X f32
#define FC_TSIZE 4
#include "fc_impl.h"
#define FN(name) FC_CAT(name, X)
#include "fc_winograd.h"
#include "fc_direct.h"
#undef FN
#undef T
#undef X
#undef FC_TSIZE

#define T double
#define X f64
#define FC_TSIZE 8
#include "fc_impl.h"
#define FN(name) FC_CAT(name, X)
#include "fc_winograd.h"
#include "fc_direct.h"
#undef FN
#undef T
#undef X
#undef FC_TSIZE

#define FC_STR_(s) #s
#define FC_STR(s) FC_STR_(s)
#define FC_ENTRIES(X)                                  \
    .im2col_row_##X = im2col_row_##X,                  \
    .col2im_plane_##X = col2im_plane_##X,              \
    .max_pool_plane_##X = max_pool_plane_##X,          \
    .max_pool_nhwc_row_##X = max_pool_nhwc_row_##X,    \
    .max_pool_backward_plane_##X = max_pool_backward_plane_##X, \
    .avg_pool_plane_##X = avg_pool_plane_##X,          \
    .avg_pool_backward_plane_##X = avg_pool_backward_plane_##X, \
    .adaptive_avg_plane_##X = adaptive_avg_plane_##X,  \
    .adaptive_avg_nhwc_##X = adaptive_avg_nhwc_##X,    \
    .patch_gemm_##X = patch_gemm_##X,                  \
    .pixel_major_##X = pixel_major_##X,                \
    .pointwise_panel_##X = pointwise_panel_##X,        \
    .pointwise_input_##X = pointwise_input_##X,        \
    .pointwise_panel_cols_##X = pointwise_panel_cols_##X, \
    .pointwise_cols_##X = pointwise_cols_##X,          \
    .pointwise_gather_##X = pointwise_gather_##X,      \
    .pointwise_nhwc_##X = pointwise_nhwc_##X,          \
    .pointwise_weight_##X = pointwise_weight_##X,      \
    .conv_nhwc_##X = conv_nhwc_##X,                    \
    .depthwise_nhwc_row_##X = depthwise_nhwc_row_##X,  \
    .wino_slab_##X = wino_slab_##X,                    \
    .wino_input_##X = wino_input_##X,                  \
    .wino_dy_##X = wino_dy_##X,                        \
    .wino_output_##X = wino_output_##X,                \
    .wino_filter_##X = wino_filter_##X,                \
    .wino_filter_t_##X = wino_filter_t_##X,            \
    .wino_streamed_##X = wino_streamed_##X,            \
    .wino_streamed_scratch_##X = wino_streamed_scratch_##X, \
    .direct_block_##X = direct_block_##X,              \
    .direct_phase_row_##X = direct_phase_row_##X,      \
    .direct_xblock_row_##X = direct_xblock_row_##X,    \
    .direct_dy_row_##X = direct_dy_row_##X,            \
    .direct_item_##X = direct_item_##X,                \
    .direct_flat_row_##X = direct_flat_row_##X,        \
    .direct_flat_pixels_##X = direct_flat_pixels_##X,  \
    .direct_flat_item_##X = direct_flat_item_##X,      \
    .direct_streamed_item_##X = direct_streamed_item_##X, \
    .direct_weight_item_##X = direct_weight_item_##X,  \
    .direct_weight_store_##X = direct_weight_store_##X, \
    .direct_weight_rows_##X = direct_weight_rows_##X,  \
    .direct_weight_cols_##X = direct_weight_cols_##X,  \
    .dw_plane_##X = dw_plane_##X,                      \
    .dw_scatter_##X = dw_scatter_##X,                  \
    .dw_weight_##X = dw_weight_##X,

static const fc_kernels fc_table_ = {
    .name = FC_STR(FC_ISA),
    .direct_pixels = FC_DMR,
    .direct_flat_channels = FC_FKB,
    .depthwise_rows = FC_DWR,
    FC_ENTRIES(f32)
    FC_ENTRIES(f64)
};

FC_HIDDEN const fc_kernels *FC_CAT(fc_kernels, FC_ISA)(void) { return &fc_table_; }
