"""Generators of direct convolution's register-tiled kernels (see
:mod:`fastconv.kernels.numba.direct` for where each runs): the row, flat and lanes
forward kernels (and the lanes kernel that lays out its weight as it streams it), the
weight gradient, the depthwise kernel and its weight gradient, and the stride-2 column
phase split of the forward's input layout.

Each public function is the generator of one family of ``codegen.FAMILIES``: it takes
the function's name and the family's blocking as keywords and returns the source of
one ``@jit`` function (the package docstring says how the names are built).
"""
from ...layouts import PAIRS, STREAM_CHANNELS
from .emit import store_transposed, zero_source


def _fma_source(a, ind, J, KB):
    """Emit one reduction step of the register block: J consecutive inputs from
    xf[xo:] (the vector lanes), then for each of the KB output channels a broadcast
    weight from wf[wo:] and J multiply-adds; wo moves on by KB."""
    for j in range(J):
        a(f"{ind}x{j} = xf[xo + ux{j}]")
    for k in range(KB):
        a(f"{ind}w = wf[wo + uw{k}]")
        a(ind + "; ".join(f"a{j}_{k} += x{j} * w" for j in range(J)))
    a(f"{ind}wo += uKB")


def row(name, pixels, channels):
    """``direct_row``, the row kernel: J = ``pixels`` output pixels of one row (the vector
    lanes) x KB = ``channels`` output channels of scalar accumulators. The input is read
    as J consecutive values of the phase-split layout (one vector load), the weight of
    each output channel is a broadcast."""
    J, KB = pixels, channels
    L = []
    a = L.append
    a("@jit(fastmath={'contract'})")
    a(f"def {name}(xf, wf, out, soff, N, C, G, Hp, Wq, Kb, Kg, R, S, sh, sw, dh, P, Q, zero,"
      " bias, rf, act, it0, it1):")
    a("    K = out.shape[1]")
    a("    of = out.reshape(out.size)")
    a(f"    nq = (Q + {J - 1}) // {J}")
    a("    Cg = C // G")
    a("    plane = Hp * sw * Wq")
    a("    u1 = np.uint64(1)")
    a(f"    uKB = np.uint64({KB})")
    for k in range(KB):
        a(f"    uw{k} = np.uint64({k})")
    for j in range(J):
        a(f"    ux{j} = np.uint64({j})")
    a("    for it in range(it0, it1):          # of N * G * Kb * P")
    # work item (n, g, kb, p): one output row of KB output channels
    a("        p_ = it % P")
    a("        t = it // P")
    a("        kb = t % Kb")
    a("        t = t // Kb")
    a("        g = t % G")
    a("        n = t // G")
    a(f"        k0 = g * Kg + kb * {KB}")
    a(f"        nk = min({KB}, Kg - kb * {KB})")
    a("        for qi in range(nq):")
    # the last block overlaps the previous one instead of running past Q (when Q >= J)
    a(f"            q0 = max(0, min(qi * {J}, Q - {J}))")
    a("            jv = Q - q0")
    zero_source(a, " " * 12, J, KB)
    # w block layout [g, kb, c, r, s, k]: walked contiguously by the (c, r, s) loops
    a(f"            wo = np.uint64(((g * Kb + kb) * Cg) * R * S * {KB})")
    a("            for c in range(Cg):")
    a("                for r in range(R):")
    # x layout [n, c, hp, phase, wq]: padded column wp = wq*sw + phase; row hp = p*sh + r*dh
    a("                    xrow = (((n * C + g * Cg + c) * Hp + p_ * sh + r * dh) * sw) * Wq + q0")
    a("                    for s in range(S):")
    # column (q0+j)*sw + s*dw = phase (s*dw) % sw, wq = q0 + j + (s*dw) // sw: soff[s]
    a("                        xo = np.uint64(xrow + soff[s])")
    _fma_source(a, " " * 24, J, KB)
    # stores straight into NCHW rows; guarded for the channel tail (nk) and pixel tail (jv)
    a(f"            if nk == {KB} and jv >= {J}:")
    for k in range(KB):
        a(f"                o = out[n, k0 + {k}, p_]")
        a("                " + "; ".join(f"o[q0 + {j}] = a{j}_{k}" for j in range(J)))
    a("            else:")
    for k in range(KB):
        a(f"                if nk > {k}:")
        a(f"                    o = out[n, k0 + {k}, p_]")
        for j in range(J):
            a(f"                    if jv > {j}: o[q0 + {j}] = a{j}_{k}")
    # the epilogue on the block just stored (in L1; the overlapping last block stores
    # raw sums again before it)
    a("            for k in range(nk):")
    a(f"                ep_run(of, ((n * K + k0 + k) * P + p_) * Q + q0, min({J}, jv), k0 + k,"
      " bias, rf, act)")
    return "\n".join(L) + "\n"


def flat(name, pixels, channels):
    """``direct_flat``, the flat kernel: J = ``pixels`` consecutive pixels of the flattened
    output grid of a phase plane (rows of Wq columns, the columns past Q are computed and
    dropped) as the vector lanes, x KB = ``channels`` output channels. Tap t of an input
    channel reads the J pixels at offset ``toff[t]`` from the block's start in the
    channel's ``plane`` elements (stride 1: one padded plane, offset r*dh*Wq + s*dw;
    stride 2: four phase planes). Two vector loads of x and KB weight broadcasts feed
    2*KB FMAs."""
    J, KB = pixels, channels
    L = []
    a = L.append
    a("@jit(fastmath={'contract'})")
    a(f"def {name}(xf, wf, out, toff, N, C, G, plane, Wq, Kb, Kg, P, Q, oh0, osh,"
      " ow0, osw, kb_inner, zero, bias, rf, act, it0, it1):")
    a("    K, OP, OQ = out.shape[1], out.shape[2], out.shape[3]")
    a("    of = out.reshape(out.size)")
    a(f"    nf = (P * Wq + {J - 1}) // {J}")
    a("    Cg = C // G")
    a("    T = toff.size")
    a(f"    uKB = np.uint64({KB})")
    for k in range(KB):
        a(f"    uw{k} = np.uint64({k})")
    for j in range(J):
        a(f"    ux{j} = np.uint64({j})")
    a(f"    buf = np.empty(({KB}, {J}), xf.dtype)")
    a("    for it in range(it0, it1):          # of N * G * Kb * nf")
    # consecutive items share the weights (kb outer) or the input pixels (kb inner)
    a("        if kb_inner:")
    a("            kb = it % Kb")
    a("            t = it // Kb")
    a("            fb = t % nf")
    a("            t = t // nf")
    a("        else:")
    a("            fb = it % nf")
    a("            t = it // nf")
    a("            kb = t % Kb")
    a("            t = t // Kb")
    a("        g = t % G")
    a("        n = t // G")
    a(f"        f0 = fb * {J}")
    a(f"        k0 = g * Kg + kb * {KB}")
    a(f"        nk = min({KB}, Kg - kb * {KB})")
    zero_source(a, " " * 8, J, KB)
    # w block layout [g, kb, c, t, k]
    a(f"        wo = np.uint64(((g * Kb + kb) * Cg) * T * {KB})")
    a("        for c in range(Cg):")
    # x layout [n, c, plane]; flat pixel f = p*Wq + q of tap t reads f + toff[t]
    a("            xc = (n * C + g * Cg + c) * plane + f0")
    a("            for t in range(T):")
    a("                xo = np.uint64(xc + toff[t])")
    _fma_source(a, " " * 16, J, KB)
    for k in range(KB):
        a("        " + "; ".join(f"buf[{k}, {j}] = a{j}_{k}" for j in range(J)))
    # scatter the valid pixels (q < Q, p < P) to out[n, k, oh0 + p*osh, ow0 + q*osw],
    # through the epilogue
    a(f"        for j in range({J}):")
    a("            f = f0 + j")
    a("            p_ = f // Wq")
    a("            q = f - p_ * Wq")
    a("            if q < Q and p_ < P:")
    a("                for k in range(nk):")
    a("                    ep_put(of, ((n * K + k0 + k) * OP + oh0 + p_ * osh) * OQ + ow0 + q * osw,"
      " buf[k, j], k0 + k, bias, rf, act)")
    return "\n".join(L) + "\n"


def _lanes_prologue(a, name, M, J, KB, SW, streamed=False):
    """Emit the lanes kernels' signature and constants: blocks per row (nq) and per
    image (np_), unsigned offsets of the KB channels, of the J pixels (stride SW) and of
    the next output row's inputs. ``streamed``: the kernel takes the weight as it is
    (``flip``: the input gradient's) and lays out each item's block itself."""
    a("@jit(fastmath={'contract'})")
    extra = "flip, " if streamed else ""
    a(f"def {name}(xf, wf, out, N, C, G, Hp, Wp, Kb, Kg, R, S, sh, dh, dw, P, Q, {extra}zero,"
      " bias, rf, act, it0, it1):")
    a("    K = out.shape[1]")
    a("    of = out.reshape(out.size)")
    a(f"    nq = (Q + {J - 1}) // {J}")
    a(f"    np_ = (P + {M - 1}) // {M}")
    a("    Cg = C // G")
    a(f"    uKB = np.uint64({KB})")
    a("    urow = np.uint64(sh * Wp)          # from one output row's inputs to the next's")
    for k in range(KB):
        a(f"    uk{k} = np.uint64({k})")
    for j in range(J):
        a(f"    uj{j} = np.uint64({SW * j})")


def _lanes_block_source(a, ind, M, J, KB, SW, streamed=False):
    """Emit the register block of the lanes kernels: accumulators a{m*J + j}_{k} of output
    rows p0 + m, columns q0 + j and channels k of block kb, summed over the input
    channels and taps (two rows: ``xo`` moves on by ``urow``). ``streamed``: over the
    chunk's cb channels from c0, the weights from ``wl``, the accumulators loaded from
    and stored to ``acc[ao:]`` (``lanes_streamed``)."""
    MJ = M * J
    if streamed:
        for i in range(MJ):
            a(ind + "; ".join(f"a{i}_{k} = acc[ao + np.uint64({i * KB + k})]" for k in range(KB)))
        a(f"{ind}wo = np.uint64(0)")
        a(f"{ind}for ci in range(cb):")
        a(f"{ind}    c = c0 + ci")
    else:
        zero_source(a, ind, MJ, KB)
        # w block layout [g, kb, c, r, s, k]
        a(f"{ind}wo = np.uint64(((g * Kb + kb) * Cg) * R * S * {KB})")
        a(f"{ind}for c in range(Cg):")
    # x padded [n, c, hp, wp], hp = p*sh + r*dh
    a(f"{ind}    for r in range(R):")
    a(f"{ind}        xrow = ((n * C + g * Cg + c) * Hp + p0 * sh + r * dh) * Wp + q0 * {SW}")
    a(f"{ind}        for s in range(S):")
    a(f"{ind}            xo = np.uint64(xrow + s * dw)")
    for k in range(KB):
        a(f"{ind}            w{k} = {'wl' if streamed else 'wf'}[wo + uk{k}]")
    for m in range(M):
        if m:
            a(f"{ind}            xo += urow")
        for j in range(J):
            a(f"{ind}            x = xf[xo + uj{j}]")
            a(f"{ind}            " + "; ".join(f"a{m * J + j}_{k} += x * w{k}" for k in range(KB)))
    a(f"{ind}            wo += uKB")
    if streamed:
        for i in range(MJ):
            a(ind + "; ".join(f"acc[ao + np.uint64({i * KB + k})] = a{i}_{k}" for k in range(KB)))


def lanes(name, rows, cols, channels, stride):
    """``direct_lanes``: the output channels in the vector lanes, ``rows`` x ``cols``
    output pixels broadcast, for column stride ``stride`` (``_lanes_source`` for one row,
    ``_lanes_rows_source`` for two)."""
    gen = _lanes_source if rows == 1 else _lanes_rows_source
    return gen(name, rows, cols, channels, stride)


def _lanes_source(name, M, J, KB, SW):
    """Forward kernel with the output channels in the vector lanes (KB/16 vectors) and M
    rows x J output pixels broadcast from a zero-padded NCHW copy of the input, for
    column stride SW (a constant, so each pixel's input is at a fixed offset from its
    row's: no stride phases needed). Work item: M whole output rows of KB channels, in
    blocks of J pixels (the last block of the rows, and of the row blocks, overlapping
    the one before: Q >= J, P >= M). The accumulators go to a (M, Q, KB) row buffer
    (stores over consecutive channels make SLP pack them by channel), which goes to
    ``out`` by 16 x 16 block transposes, the last Q % 16 columns masked: vector stores
    along the rows of NCHW (element by element for a channel tail)."""
    L = []
    a = L.append
    _lanes_prologue(a, name, M, J, KB, SW)
    a("    RQ = (Q + 15) // 16 * 16            # row buffer pitch: columns past Q never stored")
    a(f"    rb = np.empty({M} * RQ * {KB}, xf.dtype)")
    a("    for it in range(it0, it1):          # of N * G * Kb * np_")
    a("        pb = it % np_")
    a("        t = it // np_")
    a("        kb = t % Kb")
    a("        t = t // Kb")
    a("        g = t % G")
    a("        n = t // G")
    a(f"        p0 = max(0, min(pb * {M}, P - {M}))")
    a("        for qb in range(nq):")
    a(f"            q0 = max(0, min(qb * {J}, Q - {J}))")
    _lanes_block_source(a, " " * 12, M, J, KB, SW)
    # row buffer rb[m, q, k]
    for m in range(M):
        a(f"            ro = np.uint64(({m} * RQ + q0) * {KB})")
        for j in range(J):
            a("            " + "; ".join(f"rb[ro + np.uint64({j * KB + k})] = a{m * J + j}_{k}"
                                      for k in range(KB)))
    # rb[m, q, ks:ks + 16] -> out[n, k0 + ks:k0 + ks + 16, p0 + m, q] for 16 columns q at
    # a time (the last block masked); element by element for a channel tail
    a(f"        k0 = g * Kg + kb * {KB}")
    a(f"        nk = min({KB}, Kg - kb * {KB})")
    # the epilogue: without a residual, bias and activation on the row buffer (channels
    # contiguous) before the stores; with one, on the rows just stored (reading a row
    # back right after its transposed stores stalled on them: after all M rows)
    a("        if rf.size == 0:")
    a(f"            for mq in range({M} * Q):")
    a(f"                ep_channels(rb, (mq // Q * RQ + mq % Q) * {KB}, nk, k0, bias, act)")
    a(f"        for m in range({M}):")
    a(f"            rm = m * RQ * {KB}")
    store_transposed(a, " " * 12, "rb", "rm + ks", KB, "Q",
                      "((n * K + k0 + ks) * P + p0 + m) * Q", "P * Q")
    a("        if rf.size:")
    a(f"            for m in range({M}):")
    a("                for k in range(nk):")
    a("                    ep_run(of, ((n * K + k0 + k) * P + p0 + m) * Q, Q, k0 + k, bias, rf,"
      " act)")
    return "\n".join(L) + "\n"


def _lanes_rows_source(name, M, J, KB, SW):
    """``_lanes_source`` for rows shorter than 16 pixels, M = 2 rows at a time: a work item
    is one block of M rows x J pixels (of one row: the last row of an odd P), whose
    accumulators go through an (M*J, KB) buffer to ``out`` element by element (on rows
    this short, faster than ``_lanes_source``'s loop over a row's blocks with its row
    buffer)."""
    assert M == 2
    L = []
    a = L.append
    MJ = M * J
    _lanes_prologue(a, name, M, J, KB, SW)
    a(f"    buf = np.empty(({MJ}, {KB}), xf.dtype)")
    a("    for it in range(it0, it1):          # of N * G * Kb * np_ * nq")
    for line in ("qb = it % nq", "t = it // nq", "pb = t % np_", "t = t // np_", "kb = t % Kb",
                 "t = t // Kb", "g = t % G", "n = t // G"):
        a("        " + line)
    _lanes_row_block(a, " " * 8, M, J)
    a(f"        if nr == {M}:")
    _lanes_block_source(a, " " * 12, M, J, KB, SW)
    for i in range(MJ):
        a("            " + "; ".join(f"buf[{i}, {k}] = a{i}_{k}" for k in range(KB)))
    a("        else:")
    _lanes_block_source(a, " " * 12, 1, J, KB, SW)
    for i in range(J):
        a("            " + "; ".join(f"buf[{i}, {k}] = a{i}_{k}" for k in range(KB)))
    _lanes_store_block(a, " " * 8, J, KB, "buf[m * {J} + j, k]".format(J=J))
    return "\n".join(L) + "\n"


def _lanes_row_block(a, ind, M, J):
    """Emit the first row p0, column q0 and row count nr of block (pb, qb): the last block
    of a row overlaps the one before (Q >= J); an odd last row of the image is a block of
    its own (res5 7x7 on 2 x 7 blocks: 7 rows computed, not 8)."""
    a(f"{ind}q0 = max(0, min(qb * {J}, Q - {J}))")
    a(f"{ind}p0 = pb * {M}")
    a(f"{ind}nr = min({M}, P - p0)")


def _lanes_store_block(a, ind, J, KB, value):
    """Emit the stores of block (n, p0, q0, nr rows) of channel block kb to ``out``, element
    by element, the value of row m, pixel j, channel k being ``value``."""
    a(f"{ind}k0 = g * Kg + kb * {KB}")
    a(f"{ind}for k in range(min({KB}, Kg - kb * {KB})):")
    a(f"{ind}    for m in range(nr):")
    a(f"{ind}        o = ((n * K + k0 + k) * P + p0 + m) * Q + q0")
    a(f"{ind}        for j in range(min({J}, Q - q0)):")
    a(f"{ind}            ep_put(of, o + j, {value}, k0 + k, bias, rf, act)")


def lanes_streamed(name, rows, cols, channels, stride):
    """``direct_lanes_streamed``: ``_lanes_rows_source`` with the weight taken as it is
    (``flip``: the input gradient's) and laid out by the kernel: a work item is one block
    of KB output channels over all the images' M x J blocks, run over the input channels
    in chunks of
    ``STREAM_CHANNELS``. Each chunk of the weight is laid out (``w_block``) in a buffer
    that stays in cache while every block adds that chunk's sum to its accumulators
    (kept in ``acc`` between chunks). The weight is read once per call and no layout is
    kept (a cached layout, with the copy for its exact check, is read three times per
    call). Whole blocks of the weight laid out per item, or ``prefetcht1`` of the next
    chunk or item, were no faster."""
    M, J, KB, SW = rows, cols, channels, stride
    assert M == 2
    L = []
    a = L.append
    MJ = M * J
    _lanes_prologue(a, name, M, J, KB, SW, streamed=True)
    a("    RS = R * S")
    a(f"    CB = min(Cg, {STREAM_CHANNELS})")
    a("    nb = N * np_ * nq                  # blocks per item")
    a(f"    wl = np.empty(CB * RS * {KB}, xf.dtype)      # the chunk's [c, r, s, k]")
    a(f"    acc = np.empty(nb * {MJ * KB}, xf.dtype)")
    a("    for it in range(it0, it1):          # of G * Kb")
    a("        kb = it % Kb")
    a("        g = it // Kb")
    a("        acc[:] = zero")
    a("        for c0 in range(0, Cg, CB):")
    a("            cb = min(CB, Cg - c0)")
    a(f"            w_block(wf, wl, 0, g, kb, c0, cb, Kg, Cg, RS, flip, {KB})")

    a("            for b in range(nb):")
    ind = " " * 16
    for line in ("qb = b % nq", "t = b // nq", "pb = t % np_", "n = t // np_"):
        a(ind + line)
    _lanes_row_block(a, ind, M, J)
    a(f"{ind}ao = np.uint64(b * {MJ * KB})")
    a(f"{ind}if nr == {M}:")
    _lanes_block_source(a, ind + "    ", M, J, KB, SW, streamed=True)
    a(f"{ind}else:")
    _lanes_block_source(a, ind + "    ", 1, J, KB, SW, streamed=True)
    a("        for b in range(nb):")
    for line in ("qb = b % nq", "t = b // nq", "pb = t % np_", "n = t // np_"):
        a("            " + line)
    _lanes_row_block(a, " " * 12, M, J)
    _lanes_store_block(a, " " * 12, J, KB, f"acc[(b * {MJ} + m * {J} + j) * {KB} + k]")
    return "\n".join(L) + "\n"


def _weight_grad_item(a, ind):
    """Emit the weight-gradient kernel's work item it = (sp, g, cbk, kb), kb innermost."""
    for line in ("kb = it % Kb", "t = it // Kb", "cbk = t % Cb", "t = t // Cb", "g = t % G",
                 "sp = t // G"):
        a(ind + line)


def weight_grad(name, in_channels, channels):
    """``direct_weight_grad``: L = ``in_channels`` input channels (the vector lanes,
    channels-last input block) x KB = ``channels`` output channels (broadcast from a
    k-last grad_output block) of scalar accumulators, summed over the pixels: the
    forward kernel's shape, transposed.

    A work item is a (batch split, group, input-channel block, output-channel block)
    and runs the R*S taps one after another. The kernel runs its range of items image by
    image: the input block an item needs is converted from NCHW into a buffer of the
    calling thread (``channels_last_block``) when it changes (consecutive items share
    it), so it is read from L2 right after it is written, with no pass over the batch
    and no thread hand-off per slice. Each tap's block is stored to (for a later image,
    added to) its place in ``acc``, blocked [k, c] (stores over consecutive input
    channels make SLP pack the accumulators by input channel); at the end the items'
    sums are copied into ``gf[sp]``, the gradient's own (K, C/groups, R, S) layout,
    tap by tap (contiguous reads, writes R*S apart; flat with uint64 offsets and once at
    the end, not through a 5-d index or after each tap: both cheaper)."""
    L, KB = in_channels, channels
    out = []
    a = out.append
    a("@jit(fastmath={'contract'})")
    a(f"def {name}(x, dyf, acc, gf, nsplit, G, Cb, Cg, Kb, Kg, R, S, sh, sw, dh, dw, pt, pl,"
      " P, Q, zero, it0, it1):")
    a("    N, H, W = x.shape[0], x.shape[2], x.shape[3]")
    a("    sf = x.reshape(x.size)")
    a(f"    xf = np.empty(H * W * {L}, x.dtype)    # the input block of the current item")
    a("    held = -1                            # which: (n * G + g) * Cb + cbk")
    a(f"    uxs = np.uint64(sw * {L})")
    a(f"    uKB = np.uint64({KB})")
    for k in range(KB):
        a(f"    uk{k} = np.uint64({k})")
    for c in range(L):
        a(f"    uc{c} = np.uint64({c})")
    a("    RS = R * S")
    a("    for n in range(N):")
    # consecutive items share the input block
    a("        for it in range(it0, it1):      # of nsplit * G * Cb * Kb")
    _weight_grad_item(a, " " * 12)
    a("            n0 = sp * N // nsplit")
    a("            if n < n0 or n >= (sp + 1) * N // nsplit:")
    a("                continue")
    a("            if held != (n * G + g) * Cb + cbk:")
    a(f"                channels_last_block(x, sf, xf, n, g * Cg + cbk * {L},"
      f" min({L}, Cg - cbk * {L}))")
    a("                held = (n * G + g) * Cb + cbk")
    # acc layout [sp, g, kb, cbk, r, s, k, c]: the item's R*S blocks of KB x L
    a(f"            ai = ((((sp * G + g) * Kb + kb) * Cb + cbk) * RS) * {KB * L}")
    # tap (r, s) reads input (p*sh + r*dh - pt, q*sw + s*dw - pl): only the outputs whose
    # input is inside the image (no padding stored, no products with it)
    a("            for r in range(R):")
    a("                p0, p1 = valid_range(P, H, sh, r * dh - pt)")
    a("                for s in range(S):")
    a("                    q0, q1 = valid_range(Q, W, sw, s * dw - pl)")
    for k in range(KB):
        a("                    " + "; ".join(f"a{c}_{k} = zero" for c in range(L)))
    a("                    for p_ in range(p0, p1):")
    # x block [h, w, c]
    a(f"                        xo = np.uint64(((p_ * sh + r * dh - pt) * W + q0 * sw + s * dw"
      f" - pl) * {L})")
    # dy block [n, g, kb, p, q, k]
    a(f"                        do = np.uint64(((((n * G + g) * Kb + kb) * P + p_) * Q + q0)"
      f" * {KB})")
    a("                        for q in range(q1 - q0):")
    for c in range(L):
        a(f"                            x{c} = xf[xo + uc{c}]")
    for k in range(KB):
        a(f"                            d = dyf[do + uk{k}]")
        a("                            " + "; ".join(f"a{c}_{k} += x{c} * d" for c in range(L)))
    a("                            xo += uxs")
    a("                            do += uKB")
    a(f"                    ao = ai + (r * S + s) * {KB * L}")
    a("                    if n == n0:")
    for k in range(KB):
        a("                        " + "; ".join(f"acc[ao + {k * L + c}] = a{c}_{k}"
                                                for c in range(L)))
    a("                    else:                # a later image")
    for k in range(KB):
        a("                        " + "; ".join(f"acc[ao + {k * L + c}] += a{c}_{k}"
                                                for c in range(L)))
    a("    for it in range(it0, it1):")
    _weight_grad_item(a, " " * 8)
    a(f"        ai = ((((sp * G + g) * Kb + kb) * Cb + cbk) * RS) * {KB * L}")
    # gf[sp, k0 + k, c0 + c, t] (flat), t = r*S + s: k0 + k is one of group g's output
    # channels, c0 + c an input channel within the group
    a(f"        go = np.uint64((((sp * G + g) * Kg + kb * {KB}) * Cg + cbk * {L}) * RS)")
    a("        uCRS = np.uint64(Cg * RS)")
    a("        uRS = np.uint64(RS)")
    a(f"        nc = min({L}, Cg - cbk * {L})")
    a("        for t in range(RS):")
    a("            o = go + np.uint64(t)")
    a(f"            ak = np.uint64(ai + t * {KB * L})")
    a(f"            for k in range(min({KB}, Kg - kb * {KB})):")
    a("                for c in range(nc):")
    a("                    gf[o + np.uint64(c) * uRS] = acc[ak + np.uint64(c)]")
    a("                o += uCRS")
    a(f"                ak += np.uint64({L})")
    return "\n".join(out) + "\n"


def _copy_source(a, ind, dst, d0, src, s0, n, J):
    """Emit a copy of ``n`` consecutive elements src[s0:] -> dst[d0:] (uint64 offsets) as
    J-wide chunks that SLP turns into vector moves, the last chunk overlapping the one
    before; element by element when n < J."""
    a(f"{ind}if {n} >= {J}:")
    a(f"{ind}    for e in range(0, {n}, {J}):")
    a(f"{ind}        e0 = np.uint64(min(e, {n} - {J}))")
    a(f"{ind}        so = {s0} + e0")
    a(f"{ind}        do = {d0} + e0")
    a(f"{ind}        " + "; ".join(f"v{j} = {src}[so + ux{j}]" for j in range(J)))
    a(f"{ind}        " + "; ".join(f"{dst}[do + ux{j}] = v{j}" for j in range(J)))
    a(f"{ind}else:")
    a(f"{ind}    for e in range({n}):")
    a(f"{ind}        {dst}[{d0} + np.uint64(e)] = {src}[{s0} + np.uint64(e)]")


def _tile_source(a, J):
    """Emit the copy of plane x[n, c] into the depthwise kernels' phase-split tile:
    input row h is padded row hp = h + pt = i*sh + a, kept if i < Hq; column likewise."""
    a("        h0 = max(0, -pt)")
    a("        i = (h0 + pt) // sh")
    a("        ph = (h0 + pt) % sh")
    a("        for h in range(h0, H):")
    a("            if i >= Hq:")
    a("                break")
    a("            row = ph * sw * phase + i * Wq")
    a("            ph += 1")
    a("            if ph == sh:")
    a("                ph = 0")
    a("                i += 1")
    a("            if sw == 1:")
    a("                lo = max(0, -pl)")
    a("                to = np.uint64(row + pl + lo)")
    a("                xo = np.uint64(((n * C + c) * H + h) * W + lo)")
    a("                cnt = min(W, Wq - pl) - lo")
    _copy_source(a, " " * 16, "tile", "to", "xf", "xo", "cnt", J)
    a("            elif sw == 2:")
    a("                xo = ((n * C + c) * H + h) * W")
    _pairs_source(a, " " * 16, "tile", "row", "phase", "xf", "xo", "W", "Wq", PAIRS)
    a("            else:")
    a("                for b in range(sw):               # tile column j reads j*sw + b - pl")
    a("                    lo, hi = valid_range(Wq, W, sw, b - pl)")
    a("                    to = row + b * phase")
    a("                    xo = ((n * C + c) * H + h) * W + b - pl")
    a("                    for j in range(lo, hi):")
    a("                        tile[np.uint64(to + j)] = xf[np.uint64(xo + j * sw)]")


def depthwise(name, rows, cols):
    """``depthwise`` (one input plane per output plane): M = ``rows`` output rows x
    J = ``cols`` columns of one plane in scalar accumulators, the J columns the vector
    lanes. Each plane is first copied into a zero-padded, phase-split tile (kept in
    L1): tile[a, b, i, j] = x_pad[i*sh + a, j*sw + b], so that every tap reads J
    consecutive values; the taps' offsets in the tile come in ``toff``. Rows and columns
    are computed in whole blocks into ``otile`` (nP*M x nQ*J) and the P x Q corner
    copied out."""
    M, J = rows, cols
    L = []
    a = L.append
    a("@jit(fastmath={'contract'})")
    a(f"def {name}(x, w, out, toff, Kg, sh, sw, pt, pl, Hq, Wq, flip, zero, bias, rf, act,"
      " it0, it1):")
    a("    N, C, H, W = x.shape")
    a("    K, P, Q = out.shape[1], out.shape[2], out.shape[3]")
    a("    R, S = w.shape[2], w.shape[3]")
    a(f"    nP = (P + {M - 1}) // {M}")
    a(f"    nQ = (Q + {J - 1}) // {J}")
    a(f"    Qp = nQ * {J}")
    a("    phase = Hq * Wq")
    a("    xf = x.reshape(x.size)")
    a("    of = out.reshape(out.size)")
    a("    tile = np.zeros(sh * sw * phase, x.dtype)    # positions never written stay 0")
    a(f"    otile = np.empty(nP * {M} * Qp, x.dtype)")
    a("    wt = np.empty(R * S, x.dtype)")
    for j in range(J):
        a(f"    ux{j} = np.uint64({j})")
    a("    for it in range(it0, it1):          # of N * K output planes")
    a("        n = it // K")
    a("        k = it % K")
    a("        c = k // Kg")
    _tile_source(a, J)
    a("        for r in range(R):")
    a("            for s in range(S):")
    a("                wt[r * S + s] = w[k, 0, R - 1 - r, S - 1 - s] if flip else w[k, 0, r, s]")
    a("        for pb in range(nP):")
    a("            for qb in range(nQ):")
    for m in range(M):
        a("                " + "; ".join(f"a{m}_{j} = zero" for j in range(J)))
    a(f"                xb = pb * {M} * Wq + qb * {J}")
    a("                for t in range(R * S):")
    a("                    wv = wt[t]")
    a("                    xt = xb + toff[t]")
    for m in range(M):
        a(f"                    xm = np.uint64(xt + {m} * Wq)")
        a("                    " + "; ".join(f"x{j} = tile[xm + ux{j}]" for j in range(J)))
        a("                    " + "; ".join(f"a{m}_{j} += x{j} * wv" for j in range(J)))
    a(f"                ob = pb * {M} * Qp + qb * {J}")
    for m in range(M):
        a(f"                om = np.uint64(ob + {m} * Qp)")
        a("                " + "; ".join(f"otile[om + ux{j}] = a{m}_{j}" for j in range(J)))
    a("        for p_ in range(P):")
    a("            to = np.uint64(p_ * Qp)")
    a("            oo = np.uint64(((n * K + k) * P + p_) * Q)")
    _copy_source(a, " " * 12, "of", "oo", "otile", "to", "Q", J)
    # the epilogue on the plane just stored (in L2; a row read back right after its
    # copy stalled on the stores)
    a("        ep_run(of, (n * K + k) * P * Q, P * Q, k, bias, rf, act)")
    return "\n".join(L) + "\n"


def depthwise_nhwc(name, pixels, channels):
    """``depthwise_nhwc`` (channels last, one output channel per input channel): M =
    ``pixels`` consecutive output pixels of a row x J = ``channels`` channels in scalar
    accumulators, the channels the vector lanes, every tap reading J consecutive values
    of ``x`` (N, H, W, C); ``w`` (R, S, C) holds the taps. A work item is an output row
    (n, p), its tap rows cut to those inside the input; per block of J channels, the
    columns [qa, qb) whose every tap lies inside the input run in blocks of M pixels,
    the rest (the borders, and the last pixels of [qa, qb)) one pixel at a time with
    their taps cut likewise (no padded copy, no bounds test in the blocks); the last
    C % J channels by a plain loop. What the blocks of M leave of [qa, qb) runs in blocks
    of M/2, M/4, ... 2 pixels: a pixel alone is one chain of dependent FMAs, bound by
    their latency (a 7-pixel row ran 2x slower one pixel at a time). The accumulators
    start as the bias; the residual and the activation are applied to the row once it is
    stored (in L1)."""
    M, J = pixels, channels
    L = []
    a = L.append

    def pixel_block(ind, q0, count, s_range):
        """Accumulate ``count`` pixels from column q0 over taps s in ``s_range``."""
        for m in range(count):
            a(ind + "; ".join(f"a{m}_{j} = b{j}" for j in range(J)))
        a(ind + "for r in range(r_lo, r_hi):")
        a(ind + f"    for s in range({s_range}):")
        a(ind + "        wo = np.uint64((r * S + s) * C + cb)")
        a(ind + "        " + "; ".join(f"w{j} = wf[wo + ux{j}]" for j in range(J)))
        a(ind + f"        xr = x0 + (r * dh * W + {q0} * sw + s * dw) * C + cb")
        for m in range(count):
            a(ind + f"        xm = np.uint64(xr + {m} * sw * C)")
            a(ind + "        " + "; ".join(f"a{m}_{j} += xf[xm + ux{j}] * w{j}"
                                          for j in range(J)))
        for m in range(count):
            a(ind + f"om = np.uint64(o0 + ({q0} + {m}) * C + cb)")
            a(ind + "; ".join(f"of[om + ux{j}] = a{m}_{j}" for j in range(J)))

    a("@jit(fastmath={'contract'})")
    a(f"def {name}(x, w, out, sh, sw, pt, pl, dh, dw, zero, bias, rf, act, it0, it1):")
    a("    N, H, W, C = x.shape")
    a("    P, Q = out.shape[1], out.shape[2]")
    a("    R, S = w.shape[0], w.shape[1]")
    a("    xf = x.reshape(x.size)")
    a("    wf = w.reshape(w.size)")
    a("    of = out.reshape(out.size)")
    a(f"    CJ = C - C % {J}")
    a("    # columns [qa, qb): every tap inside the input; blocks of M pixels up to qm")
    a("    qa, qb = valid_range(Q, W - (S - 1) * dw, sw, -pl)")
    a(f"    qm = qa + (qb - qa) // {M} * {M}")
    # then blocks of M/2, M/4, ... 2 pixels up to qm{m}: a pixel alone is one chain of
    # dependent FMAs (latency-bound), so as few as possible go one at a time
    sub_blocks = []
    m = M // 2
    while m >= 2:
        sub_blocks.append(m)
        m //= 2
    last = sub_blocks[-1] if sub_blocks else ""
    a(f"    qm{2 * sub_blocks[0]} = qm" if sub_blocks else "")
    for m in sub_blocks:
        a(f"    qm{m} = qm{2 * m} + (qb - qm{2 * m}) // {m} * {m}")
    a("    # per column q: its taps s in [cols[q, 0], cols[q, 1]) inside the input (once a")
    a("    # call: two divisions each, which per pixel and channel block cost more than")
    a("    # the pixel's FMAs)")
    a("    cols = np.empty((Q, 2), np.int64)")
    a("    for q in range(Q):")
    a("        cols[q, 0], cols[q, 1] = valid_range(S, W, dw, q * sw - pl)")
    for j in range(J):
        a(f"    ux{j} = np.uint64({j})")
    a("    for it in range(it0, it1):          # output rows (n, p) of the batch")
    a("        n = it // P")
    a("        p_ = it % P")
    a("        o0 = it * Q * C")
    a("        h0 = p_ * sh - pt")
    a("        r_lo, r_hi = valid_range(R, H, dh, h0)")
    a("        x0 = ((n * H + h0) * W - pl) * C     # input row h0, column -pl")
    a(f"        for cb in range(0, CJ, {J}):")
    a("            bo = np.uint64(cb)")
    a("            " + "; ".join(f"b{j} = bias[bo + ux{j}] if bias.size else zero"
                             for j in range(J)))
    a(f"            for q0 in range(qa, qm, {M}):")
    pixel_block(" " * 16, "q0", M, "S")
    for m in sub_blocks:                     # what is left of [qa, qb), m pixels at once
        a(f"            for q0 in range(qm{2 * m}, qm{m}, {m}):")
        pixel_block(" " * 16, "q0", m, "S")
    a("            for q in range(Q):")
    a(f"                if q >= qa and q < qm{last}:      # done by the blocks")
    a("                    continue")
    a("                s_lo, s_hi = cols[q, 0], cols[q, 1]")
    pixel_block(" " * 16, "q", 1, "s_lo, s_hi")
    a("        for c in range(CJ, C):")
    a("            for q in range(Q):")
    a("                v = bias[c] if bias.size else zero")
    a("                s_lo, s_hi = cols[q, 0], cols[q, 1]")
    a("                for r in range(r_lo, r_hi):")
    a("                    for s in range(s_lo, s_hi):")
    a("                        v += (xf[x0 + (r * dh * W + q * sw + s * dw) * C + c]")
    a("                              * wf[(r * S + s) * C + c])")
    a("                of[o0 + q * C + c] = v")
    a("        ep_run(of, o0, Q * C, 0, bias[:0], rf, act)")
    return "\n".join(L) + "\n"


def depthwise_weight_grad(name, rows, cols):
    """``depthwise_weight_grad``: out[k, 0, r, s] = sum over n, p, q of dy[n, k, p, q] *
    x_pad[n, k // Kg, p*sh + r*dh, q*sw + s*dw]. Per image, the x plane goes into the
    phase-split tile of ``depthwise`` and the dy plane into a tile of the same block shape;
    then, tap by tap, M x J products in scalar accumulators over all blocks, summed into
    the tap's total. Blocks that cross the last row or column add their real outputs'
    products only, so an input pixel no output reads never meets the gradient."""
    M, J = rows, cols
    L = []
    a = L.append
    a("@jit(fastmath={'contract'})")
    a(f"def {name}(x, dy, out, toff, Kg, sh, sw, pt, pl, Hq, Wq, zero, it0, it1):")
    a("    N, C, H, W = x.shape")
    a("    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]")
    a("    R, S = out.shape[2], out.shape[3]")
    a(f"    nP = (P + {M - 1}) // {M}")
    a(f"    nQ = (Q + {J - 1}) // {J}")
    a(f"    Qp = nQ * {J}")
    a("    phase = Hq * Wq")
    a("    xf = x.reshape(x.size)")
    a("    dyf = dy.reshape(dy.size)")
    a("    tile = np.zeros(sh * sw * phase, x.dtype)    # positions never written stay 0")
    a(f"    dyt = np.zeros(nP * {M} * Qp, x.dtype)")
    a("    wsum = np.empty(R * S, x.dtype)")
    for j in range(J):
        a(f"    ux{j} = np.uint64({j})")
    a("    for k in range(it0, it1):           # of K output channels")
    a("        c = k // Kg")
    a("        wsum[:] = 0")
    a("        for n in range(N):")
    body = []
    _tile_source(body.append, J)
    for line in body:                        # the tile copy, one level deeper
        a("    " + line)
    a("            for p_ in range(P):")
    a("                to = np.uint64(p_ * Qp)")
    a("                yo = np.uint64(((n * K + k) * P + p_) * Q)")
    _copy_source(a, " " * 16, "dyt", "to", "dyf", "yo", "Q", J)
    a("            for t in range(R * S):")
    for m in range(M):
        a("                " + "; ".join(f"a{m}_{j} = zero" for j in range(J)))
    a("                for pb in range(nP):")
    a("                    for qb in range(nQ):")
    a(f"                        xt = pb * {M} * Wq + qb * {J} + toff[t]")
    a(f"                        yb = pb * {M} * Qp + qb * {J}")
    # a block past the last row or column (p >= P or q >= Q) must not read x there: dy is
    # 0 there, but 0 x NaN is NaN, and the reference sums real outputs only
    a(f"                        if (pb + 1) * {M} <= P and (qb + 1) * {J} <= Q:")
    for m in range(M):
        a(f"                            xm = np.uint64(xt + {m} * Wq)")
        a(f"                            ym = np.uint64(yb + {m} * Qp)")
        a("                            " + "; ".join(f"x{j} = tile[xm + ux{j}]"
                                                     for j in range(J)))
        a("                            " + "; ".join(f"d{j} = dyt[ym + ux{j}]" for j in range(J)))
        a("                            " + "; ".join(f"a{m}_{j} += x{j} * d{j}" for j in range(J)))
    a("                        else:")
    a(f"                            nq = Q - qb * {J}")
    for m in range(M):
        a(f"                            if pb * {M} + {m} < P:")
        a(f"                                xm = np.uint64(xt + {m} * Wq)")
        a(f"                                ym = np.uint64(yb + {m} * Qp)")
        for j in range(J):
            a(f"                                if {j} < nq:")
            a(f"                                    a{m}_{j} += tile[xm + ux{j}] * dyt[ym + ux{j}]")
    a("                wsum[t] += " + " + ".join(
        "(" + " + ".join(f"a{m}_{j}" for m in range(M)) + ")" for j in range(J)))
    a("        for r in range(R):")
    a("            for s in range(S):")
    a("                out[k, 0, r, s] = wsum[r * S + s]")
    return "\n".join(L) + "\n"


def _pairs_source(a, ind, dst, base, pitch, src, so, Ws, Wq, J):
    """Emit the stride-2 column split of one padded row: source column cw (padded column
    cw + pl) goes to dst[base + b*pitch + (cw + pl) // 2], b = (cw + pl) % 2, for the
    columns with 0 <= cw + pl < 2*Wq. Pairs of consecutive columns go to the two phases
    J pairs at a time (the last chunk overlapping the one before), which SLP turns into
    vector loads, shuffles and vector stores; the lone first/last column by itself."""
    a(f"{ind}cw = max(0, -pl)")
    a(f"{ind}cw_hi = min({Ws}, 2 * {Wq} - pl)")
    a(f"{ind}if cw < cw_hi and (cw + pl) % 2 == 1:       # a lone first column: phase 1")
    a(f"{ind}    {dst}[np.uint64({base} + {pitch} + (cw + pl) // 2)] = {src}[np.uint64({so} + cw)]")
    a(f"{ind}    cw += 1")
    a(f"{ind}npairs = max(0, cw_hi - cw) // 2")
    a(f"{ind}pd = {base} + (cw + pl) // 2                 # pair e: columns cw + 2e, cw + 2e + 1")
    a(f"{ind}ps = {so} + cw")
    a(f"{ind}if npairs >= {J}:")
    a(f"{ind}    for pe in range(0, npairs, {J}):")
    a(f"{ind}        pe0 = min(pe, npairs - {J})")
    a(f"{ind}        ps0 = np.uint64(ps + 2 * pe0)")
    a(f"{ind}        pt0 = np.uint64(pd + pe0)")
    a(f"{ind}        pt1 = np.uint64(pd + pe0 + {pitch})")
    a(f"{ind}        " + "; ".join(f"v{j} = {src}[ps0 + ux{j}]" for j in range(2 * J)))
    a(f"{ind}        " + "; ".join(f"{dst}[pt0 + ux{j}] = v{2 * j}" for j in range(J)))
    a(f"{ind}        " + "; ".join(f"{dst}[pt1 + ux{j}] = v{2 * j + 1}" for j in range(J)))
    a(f"{ind}else:")
    a(f"{ind}    for pe in range(npairs):")
    a(f"{ind}        {dst}[np.uint64(pd + pe)] = {src}[np.uint64(ps + 2 * pe)]")
    a(f"{ind}        {dst}[np.uint64(pd + pe + {pitch})] = {src}[np.uint64(ps + 2 * pe + 1)]")
    a(f"{ind}cw += 2 * npairs")
    a(f"{ind}if cw < cw_hi:                               # a lone last column: phase 0")
    a(f"{ind}    {dst}[np.uint64({base} + (cw + pl) // 2)] = {src}[np.uint64({so} + cw)]")


def split_stride2(name, pairs):
    """``split_stride2``, the stride-2 forward layout conversion (J = ``pairs`` column
    pairs per chunk), one channel plane (n, c) per work item: the plane is first copied
    whole into a scratch row (one contiguous stream, many loads in flight: the split
    itself reads too few at a time to stream from memory), then each padded row hp is
    split from there (see ``_pairs_source``). Rows layout (``planes`` false, Hp rows):
    dst[n, c, hp, b, wq] = x_pad[n, c, hp, 2*wq + b]. Planes layout (``planes`` true,
    Hp = 2*Hq rows): dst[n, c, a, b, i, wq] = x_pad[n, c, 2*i + a, 2*wq + b]."""
    J = pairs
    L = []
    a = L.append
    a("@jit(fastmath={'contract'})")
    a(f"def {name}(src, dst, Hp, Hq, Wq, pt, pl, planes, zero, it0, it1):")
    a("    N, C, Hs, Ws = src.shape")
    a("    sf = src.reshape(src.size)")
    a("    area = Hs * Ws")
    a("    tmp = np.empty(area, src.dtype)")
    for j in range(2 * J):
        a(f"    ux{j} = np.uint64({j})")
    a("    for nc in range(it0, it1):          # of N * C planes")
    _copy_source(a, " " * 8, "tmp", "np.uint64(0)", "sf", "np.uint64(nc * area)", "area", 2 * J)
    a("        for hp in range(Hp):")
    a("            if planes:")
    a("                base = ((nc * 2 + hp % 2) * 2 * Hq + hp // 2) * Wq")
    a("                pitch = Hq * Wq")
    a("            else:")
    a("                base = (nc * Hp + hp) * 2 * Wq")
    a("                pitch = Wq")
    a("            for e in range(Wq):")
    a("                dst[np.uint64(base + e)] = zero")
    a("                dst[np.uint64(base + pitch + e)] = zero")
    a("            h = hp - pt")
    a("            if h < 0 or h >= Hs:")
    a("                continue")
    a("            so = h * Ws")
    _pairs_source(a, " " * 12, "dst", "base", "pitch", "tmp", "so", "Ws", "Wq", J)
    return "\n".join(L) + "\n"
