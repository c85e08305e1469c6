"""Generators of the register-tiled GEMMs: Winograd's batched products (``gemm``, and
``gemm_acc`` on one block, with the filter transformed on the fly), im2col's weight
gradient, which reads the patch rows in place (``patch_gemm``), and direct's pointwise
forward built on it (``direct_pointwise``).

Each public function is the generator of one family of ``codegen.FAMILIES``: it takes
the function's name and the family's blocking as keywords and returns the source of
one ``@jit`` function. TB (``rows``) is the rows of the register block (broadcasts),
J (``cols``) its columns (the vector lanes, J/16 vectors).
"""
from .emit import store_transposed, zero_source


def _gemm_step_source(a, ind, J, TB, vf, vstep):
    """Emit one step of a GEMM register block: J consecutive values of ``uf[u:]`` (the
    vector lanes), then for each of the TB rows a broadcast ``vf[v{t}]`` and J
    multiply-adds, ``v{t}`` moving on by ``vstep`` and ``u`` by ``uKp``."""
    for j in range(J):
        a(f"{ind}x{j} = uf[u + ux{j}]")
    for t in range(TB):
        a(f"{ind}w = {vf}[v{t}]")
        a(ind + "; ".join(f"a{j}_{t} += x{j} * w" for j in range(J)))
        a(f"{ind}v{t} += {vstep}")
    a(f"{ind}u += uKp")


def _acc_rows_source(a, ind, J, t, at, store=False):
    """Emit one line loading the J accumulators a{j}_{t} of GEMM row t from ``at`` (an
    element pattern in j and t), or with ``store`` storing them there."""
    pairs = [(f"a{j}_{t}", at.format(j=j, t=t)) for j in range(J)]
    a(ind + "; ".join(f"{m} = {acc}" if store else f"{acc} = {m}" for acc, m in pairs))


def gemm(name, rows, cols):
    """``gemm``: batched GEMM ``M[x] = V[x] @ U[x]`` (float32; Winograd's alpha^2 products),
    with the shapes (X, T, C) @ (X, C, Kp) -> (X, T, Kp), T a multiple of TB and Kp of J,
    all C-contiguous and passed flat. Work item (x, chunk of ``CH`` row blocks, block of
    J columns, row block in the chunk): consecutive items reuse the C x J slice of U[x],
    and the chunk's CH*TB rows of V[x] stay in cache across the column blocks. J
    consecutive columns of a row of U are the vector lanes (J/16 vectors), and each of
    the TB rows of V broadcasts one element per step: TB*J/16 accumulators and TB*J/16
    FMAs per J/16 vector loads and TB broadcasts, U and V read in place (BLAS packs both
    per call, which dominates with few rows)."""
    TB, J = rows, cols
    L = []
    a = L.append
    a("@jit(fastmath={'contract'})")
    a(f"def {name}(vf, uf, mf, X, T, C, Kp, CH, zero, it0, it1):")
    a(f"    ntb = T // {TB}")
    a(f"    nkb = Kp // {J}")
    a("    nch = (ntb + CH - 1) // CH")
    for j in range(J):
        a(f"    ux{j} = np.uint64({j})")
    a("    uKp = np.uint64(Kp)")
    a("    u1 = np.uint64(1)")
    a("    for it in range(it0, it1):          # of X * nch * nkb * CH")
    a("        t = it // CH")
    a("        kb = t % nkb")
    a("        t = t // nkb")
    a("        tb = t % nch * CH + it % CH")
    a("        x = t // nch")
    a("        if tb >= ntb:")
    a("            continue")
    zero_source(a, " " * 8, J, TB)
    a(f"        u = np.uint64(x * C * Kp + kb * {J})")
    for t in range(TB):
        a(f"        v{t} = np.uint64((x * T + tb * {TB} + {t}) * C)")
    a("        for c in range(C):")
    _gemm_step_source(a, " " * 12, J, TB, "vf", "u1")
    for t in range(TB):
        a(f"        mo = np.uint64((x * T + tb * {TB} + {t}) * Kp + kb * {J})")
        _acc_rows_source(a, " " * 8, J, t, "mf[mo + ux{j}]", store=True)
    return "\n".join(L) + "\n"


def gemm_acc(name, rows, cols):
    """``gemm_acc``: ``M += V @ U`` on one block of J columns (float32; Winograd's alpha^2
    products with the filter transformed on the fly): V (T, CB) rows at
    ``vf[vo + t*vs:]``, U (CB, J) contiguous at ``uf[uo:]``, M (T, J) rows at
    ``mf[mo + t*ms:]``; T a multiple of TB. The register block of ``gemm``: per block of TB rows the
    accumulators are loaded from M, run over the CB channels and stored back."""
    TB, J = rows, cols
    L = []
    a = L.append
    a("@jit(fastmath={'contract'})")
    a(f"def {name}(vf, vo, vs, uf, uo, mf, mo, ms, T, CB):")
    for j in range(J):
        a(f"    ux{j} = np.uint64({j})")
    a(f"    uKp = np.uint64({J})")
    a("    u1 = np.uint64(1)")
    a(f"    for tb in range(T // {TB}):")
    for t in range(TB):
        a(f"        m{t} = np.uint64(mo + (tb * {TB} + {t}) * ms)")
        _acc_rows_source(a, " " * 8, J, t, "mf[m{t} + ux{j}]")
        a(f"        v{t} = np.uint64(vo + (tb * {TB} + {t}) * vs)")
    a("        u = np.uint64(uo)")
    a("        for c in range(CB):")
    _gemm_step_source(a, " " * 12, J, TB, "vf", "u1")
    for t in range(TB):
        _acc_rows_source(a, " " * 8, J, t, "mf[m{t} + ux{j}]", store=True)
    return "\n".join(L) + "\n"


def patch_gemm(name, rows, cols):
    """``patch_gemm``: ``A += V @ U`` for im2col's weight gradient, with the rows of V
    (patch rows of ``nb`` output rows of Q pixels) read in place from the zero-padded
    input: patch row i of output row b, pixel q is
    ``xf[xo + offs[i] + b*pitch + q*step]``. U (nb*Q, Kp) is dy pixel-major
    (``uf[uo:]``), A (rows, Kp) the accumulator (``af[ao:]``); rows a multiple of TB, Kp
    of J. Per block of TB rows and J columns the accumulators are loaded from A, run over
    the nb*Q pixels (J/16 vector loads of U and TB broadcasts of V per step: the stride
    ``step`` costs nothing) and stored back, so no patch matrix is gathered. Also
    direct's pointwise forward (``direct_pointwise``)."""
    TB, J = rows, cols
    L = []
    a = L.append
    a("@jit(fastmath={'contract'})")
    a(f"def {name}(xf, xo, offs, uf, uo, af, ao, rows, Kp, nb, Q, pitch, step):")
    for j in range(J):
        a(f"    ux{j} = np.uint64({j})")
    a("    uKp = np.uint64(Kp)")
    a("    ustep = np.uint64(step)")
    a(f"    for tb in range(rows // {TB}):")
    a(f"        for kb in range(Kp // {J}):")
    for t in range(TB):
        a(f"            m{t} = np.uint64(ao + (tb * {TB} + {t}) * Kp + kb * {J})")
        _acc_rows_source(a, " " * 12, J, t, "af[m{t} + ux{j}]")
    a(f"            u = np.uint64(uo + kb * {J})")
    a("            for b in range(nb):")
    for t in range(TB):
        a(f"                v{t} = np.uint64(xo + offs[tb * {TB} + {t}] + b * pitch)")
    a("                for q in range(Q):")
    _gemm_step_source(a, " " * 20, J, TB, "xf", "ustep")
    for t in range(TB):
        _acc_rows_source(a, " " * 12, J, t, "af[m{t} + ux{j}]", store=True)
    return "\n".join(L) + "\n"


def pointwise(name, pixels, channels, patch_gemm_name):
    """``direct_pointwise``, direct's pointwise forward (float32 1x1, stride 1, no
    padding) on TB = ``pixels`` pixels x J = ``channels`` output channels: work items (g,
    chunk of rows, kb), the kb innermost (consecutive items reuse the chunk's input from
    cache): output channels g*Kg + kb*J + [0, J) of a chunk of the batch's pixels (rows
    t = n*H*W + q, ``nch`` chunks of whole TB-row blocks). M = V @ U by the TB x J
    ``patch_gemm`` kernel (its generated function's name is ``patch_gemm_name``), V
    (rows, C/G) the group's input read in place (row t starts at x[n, g*Cg, q], its
    channels H*W apart; rows past the batch repeat its last pixel, computed and
    dropped), U (Cg, J) block (g, kb) of the blocked weight [g, kb, c, k]
    (zero past Kg), KC input channels at a time, into a (rows, J) buffer that goes to
    ``out`` (N, K, H, W) by 16 x 16 block transposes (masked for the last pixels of an
    image's run in the chunk; element by element for a channel tail)."""
    TB, J = pixels, channels
    L = []
    a = L.append
    a("@jit(fastmath={'contract'})")
    a(f"def {name}(x, uf, out, G, Kb, nch, KC, bias, rf, act, it0, it1):")
    a("    N, C, H, W = x.shape")
    a("    K = out.shape[1]")
    a("    HW = H * W")
    a("    T = N * HW")
    a("    Cg, Kg = C // G, K // G")
    a(f"    nb = (T + {TB - 1}) // {TB}              # row blocks")
    a(f"    RM = (nb + nch - 1) // nch * {TB}      # rows of the largest chunk")
    a(f"    mb = np.empty((RM + 16) * {J}, x.dtype)  # the transposes read up to 16 rows on")
    a("    offs = np.empty(RM, np.int64)")
    a("    xf = x.reshape(x.size)")
    a("    of = out.reshape(out.size)")
    a("    for it in range(it0, it1):          # of G * nch * Kb")
    a("        kb = it % Kb")
    a("        ch = it // Kb % nch")
    a("        g = it // (nch * Kb)")
    a(f"        r0 = ch * nb // nch * {TB}")
    a(f"        nr = (ch + 1) * nb // nch * {TB} - r0")
    a("        for i in range(nr):")
    a("            t = min(r0 + i, T - 1)")
    a("            n = t // HW")
    a("            offs[i] = (n * C + g * Cg) * HW + t - n * HW     # x[n, g*Cg, t - n*HW]")
    a(f"        mb[:nr * {J}] = 0")
    a("        for c0 in range(0, Cg, KC):")
    # channel c0 is c0*HW further into x; rows c0.. of U block (g, kb)
    a(f"            {patch_gemm_name}(xf, c0 * HW, offs, uf, ((g * Kb + kb) * Cg + c0) * {J},"
      f" mb, 0, nr, {J}, 1, min(KC, Cg - c0), 0, HW)")
    a(f"        k0 = g * Kg + kb * {J}")
    a(f"        nk = min({J}, Kg - kb * {J})")
    a("        t = r0")
    a("        while t < min(r0 + nr, T):      # the chunk's pixels, a run per image")
    a("            n = t // HW")
    a("            q0 = t - n * HW")
    a("            e = min(r0 + nr, T, (n + 1) * HW) - t")
    # mb[row t - r0, channel ks] -> out[n, k0 + ks, q0]
    store_transposed(a, " " * 12, "mb", f"(t - r0) * {J} + ks", J, "e",
                      "(n * K + k0 + ks) * HW + q0", "HW")
    a("            for k in range(nk):                # the epilogue, in L1")
    a("                ep_run(of, (n * K + k0 + k) * HW + q0, e, k0 + k, bias, rf, act)")
    a("            t += e")
    return "\n".join(L) + "\n"
