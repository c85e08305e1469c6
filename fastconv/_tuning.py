"""Every tuning threshold of fastconv, in one place: its default, its unit and why.

The selector (``fastconv._plan``) reads these when it makes a plan; the kernels never
decide anything from them. Change one for an experiment with :func:`set`, put them all
back with :func:`reset` (the tests do, as stumpy's ``config._reset`` does). The figures
behind each default are in the benchmarks' output and the issue notes, not here.

Each rule was measured on the CPUs named in its line (Zen 4/5: AMD EPYC Zen 4 and Zen
5; Xeon: the Intel Xeon with AVX-512 that LLVM calls ``rocketlake``); on another CPU it
is a starting point, which ``fastconv.autotune(True)`` replaces by measurement.
"""

#: name -> (default, unit, why)
DEFAULTS = {
    # -- which algorithm auto runs (fastconv._plan._algorithm) -------------------------
    "WINOGRAD_MIN_CHANNELS": (16, "channels",
        "Winograd needs C and K of at least this: below, the transforms outweigh the saving (Zen 5)"),
    "F4_MIN_IMAGE": (400, "outputs per image",
        "F(4x4,3x3) beats F(2x2,3x3) from this P*Q (Zen 5)"),
    "F2_MIN_OUTPUTS": (100, "outputs per batch",
        "below this N*P*Q Winograd's tiles are too few: direct or im2col (Zen 5) ..."),
    "F2_FEW_MIN_CHANNELS": (256, "channels",
        "... except forwards and input gradients with C and K of at least this (their "
        "weight gradients: im2col): "
        "F(2x2,3x3) unfused ran 1.2-1.6x im2col's channels-last GEMM on 256-1024 "
        "channels on 7x7 at N = 1, 1 and 2 threads, warm or with the caches flushed, "
        "1.3-1.4x in ResNet-18 and -50 at N = 1, and the input gradient 1.08-1.46x "
        "direct's (Zen 4). Direct's NCHW forward on 7x7 at N = 1: 512 channels, a "
        "prepared weight 1.6x direct's time on 1 and 2 threads, a plain array (whose "
        "cached filter is checked) 1.2x on 1 thread and about the same on 2; 256 channels "
        "1.3-1.5x either way (Zen 4, session 36)"),
    "BLOCKS_MIN_SAVING": (2.0, "multiply-adds ratio",
        "stride-1 kernels other than 3x3 run Winograd on their 3x3 blocks (where the 3x3 "
        "rules choose it for the blocks' convolution) when R*S is at least this many times "
        "F(4x4,3x3)'s 2.25 multiply-adds per block: 5x5 (2.8) and 7x7 (2.4), not 4x4 (1.8) "
        "or 1x7 (1.0); weight gradients only in float32 with tiles for two partial sums "
        "(WEIGHT_PART_MIN_TILES; fewer are summed on one thread). "
        "32->64 5x5 on 28x28 against direct, N = 1 and 8, 1 and 2 threads: forward "
        "1.14-1.62x, input gradient 1.06-1.28x; weight gradient at N = 4 and 8 1.22-1.48x, "
        "at N = 1 0.43x on 2 threads; float64: forward 1.4-1.7x, input gradient 1.2-1.8x, "
        "weight gradient at N = 8 0.81x on 2 threads (Zen 4)"),
    "BLOCKS_CACHE_SHARE": (0.5, "of the L2",
        "a blocked Winograd plan's forward and input gradient run its 3x3 kernel on groups "
        "of images whose stacked input (its gradient) fits this share of the L2: 32->64 5x5 "
        "on 28x28 at N = 8 (one image a group) ran the forward 4.71 -> 3.90 ms and the "
        "input gradient 6.29 -> 4.90 ms on 1 thread, 2.97 -> 2.60 and 3.14 -> 3.30 ms on "
        "2 (Zen 4)"),
    "DIRECT_MAX_PATCH": (256, "inputs per output",
        "forwards with C/groups*R*S below this (RGB stems; R*S > 1) run direct (Zen 5, Xeon), "
        "on any CPU; with BLAS_BELOW_REGISTERS vector registers every forward with R*S > 1 "
        "that Winograd does not take does (1.12-3.0x im2col on 5x5, 7x7, dilated and grouped "
        "layers, Zen 4); "
        "1x1 layers with stride or padding run im2col: 2.5-4x direct's speed at N = 1 and 8 "
        "(Zen 3); weight gradients at stride 1 or 2 with patches of at least this and "
        "C/groups >= DIRECT_MIN_OUTPUTS run direct (1.3-1.9x im2col on 5x5, 7x7, 1x7, "
        "dilated and grouped layers, Zen 4)"),
    "BLAS_BELOW_REGISTERS": (32, "vector registers",
        "on CPUs with fewer (AVX2: 16), the forwards direct runs on the others (stride 2, "
        "5x5, dilated, grouped) and 3x3 forwards on images "
        "under F4_MIN_IMAGE outputs run im2col's BLAS GEMM, not direct's lanes kernel (a 4 x 24 "
        "block there) or Winograd: 1.3-3.3x faster on ResNet-18's layers, N = 1 and 8, "
        "1 thread, and 1.1-1.3x at N = 1 on 2 threads (Zen 3); 0 turns it off. AVX-512 CPUs "
        "keep direct and Winograd (Zen 5, Xeon)"),
    "WINOGRAD_BELOW_REGISTERS": (32, "vector registers",
        "on CPUs with fewer (AVX2: 16), float32 3x3 stride-1 forwards on images under "
        "F4_MIN_IMAGE outputs run Winograd, F(4x4,3x3) from F4_MIN_IMAGE outputs over the "
        "batch and F(2x2,3x3) below (its filter is smaller and read by more tiles), before "
        "BLAS_BELOW_REGISTERS sends them to im2col: 1.4-2.3x im2col's speed on ResNet-50's "
        "14x14 and 7x7 layers, N = 1 and 8, 1 and 2 threads (Zen 3); 0 turns it off. "
        "AVX-512 CPUs keep direct and Winograd F4 (Zen 5, Xeon)"),
    "UNFUSED_BELOW_REGISTERS": (32, "vector registers",
        "on CPUs with fewer (AVX2: 16), float32 Winograd forwards and input gradients whose "
        "unfused path multiplies by fastconv's own GEMM run it, not fused or split, when a "
        "batch of its transformed tiles (alpha^2 (C + K) values each) fits the L3 "
        "(fastconv._machine.caches()): the fused path's small BLAS GEMMs, one per block of "
        "tiles, pack both operands on every call with OpenBLAS's AVX2 kernels. 1.13-1.57x "
        "on ResNet's 3x3 layers (64-256 channels, 56x56-14x14), N = 1 and 8, 1 and 2 threads; "
        "larger transforms (VGG-16's 64 channels on 224x224) keep fused (Zen 3); 0 turns it "
        "off. AVX-512 CPUs keep fused and split (Zen 5, Xeon)"),
    "DIRECT_MIN_OUTPUTS": (16, "output channels per group",
        "direct keeps 16 output channels in registers: fewer go to im2col (Zen 5); the "
        "gradients of direct's layers (input at stride 1, weight) need C/groups of this too "
        "(Zen 4)"),
    "PHASES_MIN_OUTPUTS": (1500, "outputs per batch",
        "float32 input gradients of stride 2 (dilation 1) with C/groups of a lanes block at "
        "least (two vectors) and N*P*Q of at least this run direct, one lanes forward per "
        "residue class, not im2col's GEMM and scatter: ResNet's 3x3/2 layers (64-256 "
        "channels, 56x56 and 28x28 inputs) at N = 8 ran 1.07-1.10x faster on 1 thread and "
        "1.11-1.28x on 2; at N = 1 (784 and 196 outputs) 0.79-1.08x on 1 thread and "
        "0.6-0.92x on 2 (Zen 4, session 39)"),
    "PHASES_MIN_CHANNELS": (128, "input channels per group",
        "... and at any N*P*Q with C/groups of at least this, since the classes share one "
        "weight check (session 44): at N = 1, 128-1024 channels (3x3/2 on 56x56 to 14x14 "
        "inputs, 1x1/2 on 56x56 and 14x14) ran 1.06-1.28x im2col's speed on 1 and 2 "
        "threads (bench_plans), 1.00-1.29x on 1 thread in ab.py but 0.78-1.41x on 2, where "
        "a worker had run 1-thread cases first; 32-96 channels 0.5-1.17x (Zen 4)"),
    "POINTWISE_MIN_IMAGES": (4, "images",
        "direct's pointwise GEMM runs 1x1 forwards of at least this many images (Zen 5)"),
    "POINTWISE_MAX_IMAGE": (100, "pixels per image",
        "... of planes smaller than this (im2col's one GEMM wins on larger ones; Zen 5)"),
    "POINTWISE_MIN_REDUCTION": (4, "C / K",
        "... with C at least this many times K (Zen 5)"),
    "POINTWISE_MIN_OUTPUTS": (64, "output channels",
        "... and K at least its block of 64 output channels (Zen 5)"),
    # -- direct (fastconv._plan._direct) ----------------------------------------------
    "DIRECT_SLICE_BYTES": (2 * 2**20, "bytes per thread",
        "the forward lays out and convolves the batch in slices of images this big, so the "
        "kernel reads the layout from L2 (Zen 5)"),
    "LANES_MIN_PATCH": (256, "inputs per output",
        "the 2 x 7 lanes kernel (rows of 7-13 pixels) needs a reduction this long to beat "
        "the flat and row kernels (Zen 5)"),
    "LANES_STREAM_MIN_WEIGHT": (8 * 2**20, "bytes",
        "weights this big are laid out per work item by the 2 x 7 lanes kernel, not cached: "
        "checking a cached layout reads the weight twice more (Zen 5)"),
    "LANES_WRAP_MAX_WORK": (0.9, "fraction",
        "Cython's lanes core runs blocks of consecutive pixels that wrap from one output row "
        "to the next where they compute at most this fraction of the pixels its blocks of "
        "whole rows compute: per pixel they ran 2-5% slower, and 1.2x faster on 7 x 7 "
        "outputs with 6-pixel blocks (54 pixels against 63; Zen 3)"),
    "POINTWISE_ROWS": (96, "pixels",
        "pixels of the batch per work item of the pointwise GEMM (Zen 5)"),
    "POINTWISE_KC": (256, "input channels",
        "input channels per call of the pointwise GEMM: the weight slice stays in L2 (Zen 5)"),
    "PAD_SERIAL_ROWS": (8192, "rows",
        "zero-padded copies of fewer rows run on the calling thread: waking OpenMP's "
        "workers costs more (Zen 5)"),
    "DIRECT_WEIGHT_GRAD_ITEMS": (16, "work items",
        "the weight gradient splits the batch until it has this many items for the threads (Zen 5)"),
    # -- im2col (fastconv._plan._im2col) ---------------------------------------------
    "BLOCK_BAND_BYTES": (512 * 1024, "bytes per thread",
        "the fused inverted residual block (fastconv.inverted_residual) runs its depthwise "
        "output in bands of rows whose expanded input rows and depthwise output take about "
        "this much, so both stay in L2 between its three steps; bands of 4, 8 and 16 rows "
        "of MobileNet-v2's blocks ran within 5% of each other (Zen 4)"),
    "NHWC_GEMM_BYTES": (1 << 20, "bytes of output",
        "a channels-last 1x1 layer's GEMM over the batch runs in slices of rows of about "
        "this much output, each given its epilogue while it is in cache (Xeon)"),
    "NHWC_BAND_PIXELS": (28, "output pixels",
        "the Cython channels-last im2col kernel (nhwc_tiled) sums bands of output rows of "
        "about this many pixels as one run of register blocks, which may span rows: a "
        "7-pixel row alone ran as blocks of 4 and 3. ResNet's 3x3/2 layers to 7x7, "
        "256 and 512 channels: 1.08-1.23x at N = 1 and 8, 1 and 2 threads; rows of 14 "
        "pixels and more the same (Zen 4)"),
    "POINTWISE_PANEL_BYTES": (64 * 2**10, "bytes",
        "the Cython NCHW 1x1 forward (im2col's image_gemm, direct's pointwise) copies its "
        "pixels in panels of as many "
        "register blocks as fit this with all input channels (at most 256 bytes of a row: "
        "one block with AVX-512, four with AVX2): wider panels store longer runs of each "
        "output row (Zen 3)"),
    "TRANSPOSED_INPUT_MAX_L1": (2.0, "x L1d",
        "the Cython 1x1 stride-1 input gradient on 2+ threads runs the forward's kernel "
        "(pointwise_panel) on dy, reading the float32 weight transposed where it is, when "
        "the group's weight takes at most this many times L1d's bytes; pointwise_input "
        "otherwise. On ResNet-50's 1x1 shapes at 2 threads, 64 KiB weights (64 <- 256, "
        "256 <- 64, 128 <- 128, C <- K) ran 1.10-1.95x pointwise_input's speed; 128-256 "
        "KiB weights 0.87-1.20x and 1 MiB and more 0.60-0.82x; float64 0.86-0.95x "
        "throughout (Intel Xeon Ice Lake, 48 KiB L1d)"),
    "POINTWISE_INPUT_BYTES": (128 * 2**10, "bytes",
        "... and its 1x1 input gradient (on more than one thread) copies dy in chunks of "
        "as many pixels as fit this with all of dy's channels (64 KiB-1 MiB within 10-25% "
        "of each other on ResNet-50's res2, res4 and res5 1x1 layers, no size best on all; "
        "Zen 3)"),
    "POINTWISE_WEIGHT_BYTES": (256 * 2**10, "bytes",
        "... and its 1x1 weight gradient without padding, strided too (no BLAS; the sum "
        "over the batch's pixels in "
        "chunks, spanning images where they are small) lays out x's pixels in chunks "
        "whose panel of pointwise_cols() input channels takes this, so the panel stays in "
        "L2 while each band of dy's channels runs over it: against NumPy's BLAS (OpenBLAS) "
        "on ResNet-50's eight 1x1 stride-1 shapes at N = 1 and 8, 1.03-1.24x on 1 thread, "
        "0.96-1.25x on 2 (most cells 1.0-1.15x; 2-thread cells moved 0.77-1.05 between "
        "runs here); with the AVX2 objects 1.02-1.24x on 1 thread. 1 024 pixels (256 KiB) "
        "ran 0.96-1.09x 512 and 0.97-1.03x 4 096; also capping dy's chunk at 512 KiB "
        "(fewer pixels for many output channels) ran 0.88-0.97x on 512->2048 at N = 8 "
        "(Zen 4)"),
    "POINTWISE_ONE_GEMM_BELOW": (100, "pixels per image",
        "1x1 layers with smaller planes and N > 1 run one GEMM over the batch (Zen 5): on "
        "Numba, and on Cython the input gradient on one thread (its forward and its input "
        "gradient on more threads run the own kernels per image, which span small images: "
        "Intel Xeon Ice Lake)"),
    "WEIGHT_FUSED_MIN_RATIO": (16, "output pixels per patch row",
        "im2col's weight gradient reads patch rows in place (own GEMM) from this ratio: "
        "BLAS splits a long sum of small products badly (Zen 5)"),
    "WEIGHT_FUSED_MIN_CHANNELS": (16, "output channels per group",
        "... and from this many output channels, one vector of its GEMM's columns: 1.3-3.2x "
        "the tiled GEMM's speed on 3->16, 3->32, 3->48 stems and a 1->32 5x5, both backends "
        "(Zen 4; 64 before Cython's narrow column blocks, Zen 5)"),
    "WEIGHT_BAND_COLUMNS": (128, "output pixels",
        "... in bands of rows of about this many pixels, so dy's band stays in L1 (Zen 5)"),
    "WEIGHT_SLICES": (16, "slices",
        "... summed in this many fixed slices: the result does not depend on the threads (Zen 5)"),
    # -- Winograd (fastconv._plan._winograd) -----------------------------------------
    "BLOCK_TILES": (64, "tiles",
        "tiles per block of the fused path, one GEMM per alpha^2 position: its V and M stay "
        "near the thread's L2; an image with at most half this many tiles shares its block "
        "with others, so a large filter is read once per block of images, not per image "
        "(ResNet-18's 7x7 512-channel layers at N=8, 1 thread: Intel Xeon rocketlake)"),
    "FUSED_MAX_FILTER_BYTES": (3 * 2**20, "bytes",
        "transformed filters up to this size run fused per thread; larger ones would be "
        "re-read for every block of tiles. 1 MiB (Zen 5) had sent 2.2-2.4 MB F(4x4) "
        "filters (128 -> 128, 96 -> 160) unfused, where fused ran 1.07-1.47x faster on 1 "
        "thread and 1.05-1.12x on 2 (forward and input gradient, N = 1 and 8, 28x28 and "
        "112x112 images, a 5x5 layer's blocks; VGG-16 1.03-1.10x; Zen 4, session 41)"),
    "SPLIT_MAX_SLICE_BYTES": (3 * 2**19, "bytes",
        "on 2+ threads the fused work is shared by output channels when a thread's filter "
        "slice stays in its L2 ... (Zen 5)"),
    "SPLIT_MAX_STREAM_BYTES": (3 * 2**20, "bytes",
        "... or when the slices it streams over all blocks total at most this ...: 6 MiB "
        "(Zen 5) had split 192 -> 192 on 14x14 at N = 8 (5.3 MB streamed per thread) and "
        "256 -> 256 at N = 4 (4.7 MB), whose unfused path ran 1.33x and 1.09-1.12x "
        "faster on 2 threads; split kept 192 -> 192 at N = 4 (2.7 MB), 1.03-1.05x "
        "unfused's speed (Zen 4, session 41)"),
    "SPLIT_MIN_TILES": (64, "tiles",
        "... and there are at least this many tiles: on fewer the unfused path ran "
        "1.3-1.5x faster on 2 threads (F4 on 256 channels on 14x14, F2 on 256-512 on "
        "7x7 and 14x14, at N = 1; Zen 4)"),
    "STREAM_MIN_FILTER_BYTES": (2**40, "bytes",
        "F4 transforms filters this big on the fly (streamed), not reading the cached one "
        "from memory ...: none by default. The unfused path, reading the cached filter, ran "
        "1.13-2.3x faster on every layer that 16 MiB here had streamed (VGG-16 conv4_2 "
        "and conv5_2 at N = 1, res5 3x3 at N = 8; forward and input gradient, 1 and 2 "
        "threads; Zen 4, session 41); streaming had won on Zen 5 against an earlier "
        "unfused path"),
    "STREAM_MAX_TILES": (64, "tiles",
        "... when there are at most this many tiles to reuse it on (Zen 5)"),
    "STREAM_SERIAL_TILES": (16, "tiles",
        "the streamed path's transforms run on one thread up to this many tiles (Zen 5)"),
    "GEMM_MAX_PADDING": (1.125, "padded / real output channels",
        "the unfused path uses fastconv's GEMM (64 columns) while padding K costs at most "
        "this, else BLAS (Zen 5)"),
    "GEMM_ROWS_BYTES": (256 * 1024, "bytes",
        "rows of V the unfused GEMM keeps in cache while it runs through U (Zen 5)"),
    "WEIGHT_FUSED_MAX_FILTER_BYTES": (4 * 2**20, "bytes",
        "Winograd weight gradients with transformed filters up to this run fused (Zen 5)"),
    "WEIGHT_PARTS": (4, "partial sums",
        "the fused weight gradient sums into at most this many parts, fixed by the shape "
        "(the same result on any thread count; Zen 5)"),
    "WEIGHT_PART_MIN_TILES": (64, "tiles",
        "... one part below twice this many tiles (Zen 5)"),
    "WEIGHT_FOUR_PARTS_TILES": (4096, "tiles",
        "... WEIGHT_PARTS parts from this many tiles, else 2 (Zen 5)"),
    "WEIGHT_FUSED_MIN_TILES": (128, "tiles",
        "... and on at least this many tiles (two parts); fewer with WEIGHT_UNFUSED_MIN_MACS "
        "of GEMM work or more run unfused, whose GEMMs use every thread: 1.1-1.8x faster at "
        "N = 1 on 14x14 and 28x28 layers of 96-256 channels on 2 threads, the same speed on "
        "1 (Zen 4)"),
    "WEIGHT_UNFUSED_MIN_MACS": (16 * 10**6, "multiply-adds",
        "... below this much GEMM work (tiles * alpha^2 * C * K) one thread's fused sum is "
        "the faster: CIFAR's 64 channels on 32x32 at N = 1 (9.4M) ran 0.7x as fast "
        "unfused on 2 threads (Zen 4)"),
    "WEIGHT_BLOCK_TILES": (64, "tiles",
        "tiles per work item of the fused weight gradient (Zen 5)"),
    "SERIAL_FILTER_T_MAX_BYTES": (2**20, "bytes",
        "partial dU up to this size are summed and transformed back on one thread (Zen 5)"),
}


def _apply(values):
    globals().update(values)
    global generation
    generation += 1


generation = 0
"""Bumped by every change, so plans memoised under old values are not reused."""


def set(name, value):
    """Set threshold ``name`` (one of :data:`DEFAULTS`) to ``value`` for this process."""
    if name not in DEFAULTS:
        raise ValueError(f"fastconv._tuning: unknown threshold {name!r}; "
                         f"known: {', '.join(sorted(DEFAULTS))}")
    _apply({name: value})


def get(name):
    """The current value of threshold ``name``."""
    if name not in DEFAULTS:
        raise ValueError(f"fastconv._tuning: unknown threshold {name!r}")
    return globals()[name]


def reset():
    """Every threshold back to its default."""
    _apply({name: spec[0] for name, spec in DEFAULTS.items()})


def describe():
    """One line per threshold: name, value, unit, why."""
    return "\n".join(f"{n} = {globals()[n]!r} ({u}): {why}"
                     for n, (_, u, why) in DEFAULTS.items())


reset()
