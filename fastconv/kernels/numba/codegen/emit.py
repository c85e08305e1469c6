"""Emit helpers shared by the generators of :mod:`.direct` and :mod:`.gemm`.

Every helper appends lines of Python source through ``a`` (a list's ``append``), each
line starting with the indentation ``ind``; the names it uses (``a{j}_{k}``, ``of``,
``nk`` ...) are the calling generator's locals, given in each docstring.
"""


def zero_source(a, ind, J, KB):
    """Emit the J x KB scalar accumulators a{j}_{k} = zero."""
    for j in range(J):
        a(ind + "; ".join(f"a{j}_{k} = zero" for k in range(KB)))


def store_transposed(a, ind, src, so, pitch, n, ob, ostride):
    """Emit the store of n rows (pixels) of a channels-last buffer ``src`` to ``out``
    (flat ``of``) by 16 x 16 block transposes, 16 channels ks at a time: row q, channel
    ks + k at ``src[so + q*pitch + k]`` goes to ``of[ob + k*ostride + q]`` (``so`` and
    ``ob`` expressions in ks), the last n % 16 rows by masked stores, a tail of fewer
    than 16 of the ``nk`` channels element by element."""
    a(f"{ind}for ks in range(0, nk, 16):")
    a(f"{ind}    so = {so}")
    a(f"{ind}    ob = {ob}")
    a(f"{ind}    if ks + 16 <= nk:")
    a(f"{ind}        for q in range(0, {n} - 15, 16):")
    a(f"{ind}            transpose_block({src}, so + q * {pitch}, {pitch}, of, ob + q, {ostride})")
    a(f"{ind}        if {n} % 16:                 # the last rows: masked stores")
    a(f"{ind}            q = {n} - {n} % 16")
    a(f"{ind}            transpose_block_n({src}, so + q * {pitch}, {pitch}, of, ob + q,"
      f" {ostride}, {n} - q)")
    a(f"{ind}    else:")
    a(f"{ind}        for k in range(nk - ks):")
    a(f"{ind}            for q in range({n}):")
    a(f"{ind}                of[ob + k * {ostride} + q] = {src}[so + q * {pitch} + k]")
