"""The numba kernels behind fused.py, compiled on first use (never with numba's on-disk cache:
its index files are pickles). Each works on flat float32 numpy views, one block of ``BLOCK``
entries at a time; every float operation is the torch path's, in its order (no fastmath, no FMA
contraction), so the results are the same bits. Without numba, ``AVAILABLE`` is False and none of
the kernels exist: fused.py then leaves every merge to the torch path."""
from __future__ import annotations

import numpy as np

try:  # numba compiles the kernels without a C compiler at run time
    import numba
    AVAILABLE = True
except Exception:  # noqa: BLE001 - missing or broken: the torch kernels run, with no error
    numba = None
    AVAILABLE = False

BLOCK = 2048  # entries per block: K+1 float32 rows of scratch (~48 KB at K=5) stay in L1/L2;
# measured 512-8192 (2048 best, ~1.7x 512; 1024 and 4096 within 5 % since the fused passes)
PLAIN, TRIM, DROP = 0, 1, 2  # per-source modes: δ·w; hardshrink by thresholds; fast drop
LANES = 1024  # running sums in the L1-norm pass (16 KB of float64 with both norms: in L1)
GOLDEN = 0x9E3779B97F4A7C15
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
MASK64 = (1 << 64) - 1


def keep_threshold(keep_prob: float) -> int:
    """The 64-bit bound T: an entry is kept iff its hash < T, probability ⌊p·2⁶⁴⌋/2⁶⁴."""
    return min(MASK64, int(keep_prob * 2.0 ** 64))


def splitmix(seed: int, index: np.ndarray) -> np.ndarray:
    """splitmix64's output for counter ``index`` of the stream ``seed`` (numpy, uint64): the
    reference for the kernel's draws."""
    z = (index.astype(np.uint64) + np.uint64(1)) * np.uint64(GOLDEN) + np.uint64(seed & MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


if AVAILABLE:
    _jit = numba.njit(nogil=True, cache=False)
    _U30, _U27, _U31 = np.uint64(30), np.uint64(27), np.uint64(31)
    _G, _M1, _M2, _ONE = np.uint64(GOLDEN), np.uint64(MIX1), np.uint64(MIX2), np.uint64(1)

    @_jit
    def draw(seed, j):
        z = (np.uint64(j) + _ONE) * _G + seed
        z = (z ^ (z >> _U30)) * _M1
        z = (z ^ (z >> _U27)) * _M2
        return z ^ (z >> _U31)

    # Loops index views from 0 (x[j], not x[at + j]): numba then proves the index non-negative
    # and LLVM vectorises them (measured 5x).

    @_jit
    def pieces(xs, bb, at, m, mode, lo, hi, pw, seed, bound, P, S, U, above):
        """P[i, :m] = p_i (δ_i trimmed or dropped, times pw_i) over entries [at, at + m), ``bb``
        the base there, and S = Σ_i p_i in source order (from −0: −0 + p is p, bit for bit, so
        the sum needs no pass of its own); U[j] = 1 where some source's |δ| falls in its bracket
        [lo, hi] (undecided); above[i] counts |δ| > hi."""
        zero = np.float32(0.0)
        one = np.float32(1.0)
        for j in range(m):
            U[j] = 0
            S[j] = -zero
        for i in range(len(xs)):
            x = xs[i][at:at + m]
            p = P[i]
            wi = pw[i]
            if mode[i] == PLAIN:
                for j in range(m):
                    v = (x[j] - bb[j]) * wi
                    p[j] = v
                    S[j] = S[j] + v
            elif mode[i] == TRIM and lo[i] > hi[i]:  # a known threshold
                high = hi[i]
                for j in range(m):
                    d = x[j] - bb[j]
                    # hardshrink(d, high) · w: +0 where -high <= d <= high (|d| exact; NaN kept)
                    v = (zero if abs(d) <= high else d) * wi
                    p[j] = v
                    S[j] = S[j] + v
            elif mode[i] == TRIM:  # a bracket: count above it, flag entries inside it
                low, high = lo[i], hi[i]
                count = np.int32(0)  # int32 lanes: an int64 count halved the loop's vector width
                for j in range(m):
                    d = x[j] - bb[j]
                    s = abs(d)
                    v = (zero if s <= high else d) * wi
                    p[j] = v
                    S[j] = S[j] + v
                    count = np.int32(count + np.int32(s > high))
                    U[j] |= np.uint8((s >= low) & (s <= high))
                above[i] += count
            else:
                sd, bd = seed[i], bound[i]
                for j in range(m):
                    d = x[j] - bb[j]
                    keep_it = one if draw(sd, at + j) < bd else zero
                    v = (d * keep_it + zero) * wi  # + 0: a dropped entry is +0
                    p[j] = v
                    S[j] = S[j] + v

    @_jit
    def sum_pieces(P, k, m, S):
        """S = Σ_i P[i] in source order, for pieces changed after ``pieces`` summed them."""
        for j in range(m):
            S[j] = -np.float32(0.0)
        for i in range(k):
            p = P[i]
            for j in range(m):
                S[j] = S[j] + p[j]

    @numba.njit(nogil=True, cache=False, inline="always")  # k stays the caller's constant
    def combine_block(P, S, k, m, consensus, normalize, w, divisor, scale, scaled, bb, o):
        """o[j] = bb[j] + λ·[Σ m_i p_i]/[Σ w_i m_i], S holding Σ p_i: ``combine``'s operations,
        in its order. With consensus, entry by entry over the k sources (k is the tuple's
        length, a compile-time constant: the source loop unrolls, the entry loop vectorises,
        and the sign, the agreeing sum and weight stay in registers: 15 % faster than a pass
        over the block per step)."""
        zero = np.float32(0.0)
        one = np.float32(1.0)
        if not consensus:
            for j in range(m):
                v = S[j]
                if normalize:
                    v = v / divisor
                if scaled:
                    v = v * scale
                o[j] = v + bb[j]
            return
        for j in range(m):
            sign = np.copysign(one, S[j])  # the elected sign (a sum of -0 elects -)
            agree = -zero  # −0 + a is a, bit for bit: the sums start at source 0's terms
            weight = -zero
            for i in range(k):
                a = P[i, j] * sign
                a = a if a > zero else zero  # relu: |p| where p agrees with the elected sign
                agree = agree + a
                weight = weight + (one if a > zero else zero) * w[i]
            if normalize:
                agree = agree / (weight + one if weight == zero else weight)  # none agrees: / 1
            if scaled:
                sign = sign * scale
            o[j] = agree * sign + bb[j]

    @_jit
    def merge_slice(xs, b, ob, out, start, stop, mode, lo, hi, pw, w, seed, bound, consensus,
                     normalize, divisor, scale, scaled, deferred, dvals, bvals, inside, counts,
                     above):
        """Merges entries [start, stop) block by block. Entries left undecided by a bracket are
        listed in ``deferred`` with their δ_i (dvals[:, e]) and base (bvals[e]), for
        ``_fix_deferred``; the in-bracket |δ_i| go to inside[i, :counts[i]]. Returns how many
        entries were deferred. ``ob``: the base added to the output (``b`` itself, except when
        deferred entries are merged again from their δ_i: b = 0, ob = their base)."""
        k = len(xs)
        P = np.empty((k, BLOCK), dtype=np.float32)
        S = np.empty(BLOCK, dtype=np.float32)
        U = np.empty(BLOCK, dtype=np.uint8)
        L = np.empty(BLOCK, dtype=np.int64)
        bracketed = False
        for i in range(k):
            counts[i] = 0
            above[i] = 0
            bracketed |= mode[i] == TRIM and lo[i] <= hi[i]
        n_deferred = 0
        for at in range(start, stop, BLOCK):
            m = min(BLOCK, stop - at)
            bb = b[at:at + m]
            pieces(xs, bb, at, m, mode, lo, hi, pw, seed, bound, P, S, U, above)
            combine_block(P, S, k, m, consensus, normalize, w, divisor, scale, scaled,
                          ob[at:at + m], out[at:at + m])
            if bracketed:
                n_deferred += defer_block(xs, bb, at, m, mode, lo, hi, U, L, n_deferred,
                                          deferred, dvals, bvals, inside, counts)
        return n_deferred

    @_jit
    def defer_block(xs, bb, at, m, mode, lo, hi, U, L, first, deferred, dvals, bvals, inside,
                    counts):
        """Lists the block's undecided entries (U[j] set) from position ``first`` on, with
        their base and δ_i (the block is still in cache: δ_i is made again, the same bits), and
        appends the in-bracket |δ_i| to inside[i]. Branch-free (an index list, then one loop
        per source): branching per entry on ~8 % of entries cost more than the merge itself."""
        got = 0
        for j in range(m):
            L[got] = j
            got += 1 if U[j] else 0
        for q in range(got):
            deferred[first + q] = at + L[q]
            bvals[first + q] = bb[L[q]]
        for i in range(len(xs)):
            x, dv, iv = xs[i][at:at + m], dvals[i], inside[i]
            if mode[i] != TRIM:
                for q in range(got):
                    dv[first + q] = x[L[q]] - bb[L[q]]
                continue
            low, high, c = lo[i], hi[i], counts[i]
            for q in range(got):
                j = L[q]
                d = x[j] - bb[j]
                dv[first + q] = d
                s = abs(d)
                iv[c] = s  # kept only where counted: c < deferred entries <= the buffer
                c += np.int64((s >= low) & (s <= high))  # & not `and`: no branch to mispredict
            counts[i] = c
        return got

    @_jit
    def fix_pieces(G, GB, idx, m, mode, hi, pw, seed, bound, P):
        """_pieces over gathered entries (G[i, j] = x_i[idx[j]], made δ_i here): the same
        formulas."""
        zero = np.float32(0.0)
        one = np.float32(1.0)
        for i in range(G.shape[0]):
            x, p, wi = G[i], P[i], pw[i]
            for j in range(m):
                x[j] = x[j] - GB[j]
            if mode[i] == PLAIN:
                for j in range(m):
                    p[j] = x[j] * wi
            elif mode[i] == TRIM:
                high = hi[i]
                for j in range(m):
                    d = x[j]
                    p[j] = (zero if abs(d) <= high else d) * wi
            else:
                sd, bd = seed[i], bound[i]
                for j in range(m):
                    keep = one if draw(sd, idx[j]) < bd else zero
                    p[j] = (x[j] * keep + zero) * wi

    @_jit
    def fix_entries(xs, b, out, where, mode, hi, pw, w, seed, bound, forced, forced_at, consensus,
             normalize, divisor, scale, scaled):
        """Merges again the entries ``where`` (ascending), source i's trim keeping |δ| > hi[i]
        and the entries forced[forced_at[i]:forced_at[i+1]] (ascending): mergekit's kept ties at
        a surplus cut, or entries a bracket deferred (now that the cut is known). Gathers them
        into blocks and merges those with the pass's own code (the same operations)."""
        k = len(xs)
        P = np.empty((k, BLOCK), dtype=np.float32)
        S = np.empty(BLOCK, dtype=np.float32)
        G = np.empty((k, BLOCK), dtype=np.float32)
        GB = np.empty(BLOCK, dtype=np.float32)
        O = np.empty(BLOCK, dtype=np.float32)
        cursor = forced_at[:k].copy()
        for at in range(0, where.size, BLOCK):
            m = min(BLOCK, where.size - at)
            idx = where[at:at + m]
            for j in range(m):
                GB[j] = b[idx[j]]
            for i in range(k):
                x, g = xs[i], G[i]
                for j in range(m):
                    g[j] = x[idx[j]]
            fix_pieces(G, GB, idx, m, mode, hi, pw, seed, bound, P)
            for i in range(k):  # forced entries: δ kept whatever its size
                if mode[i] != TRIM:
                    continue
                c, end, p = cursor[i], forced_at[i + 1], P[i]
                for j in range(m):
                    while c < end and forced[c] < idx[j]:
                        c += 1
                    if c < end and forced[c] == idx[j]:
                        p[j] = G[i, j] * pw[i]  # G holds δ now
                cursor[i] = c
            sum_pieces(P, k, m, S)
            combine_block(P, S, k, m, consensus, normalize, w, divisor, scale, scaled, GB[:m],
                          O[:m])
            for j in range(m):
                out[idx[j]] = O[j]

    @_jit
    def l1_slice(xs, b, start, stop, seed, bound, sums):
        """sums[i] = (Σ|δ_i|, Σ|kept δ_i|) over [start, stop) in float64, for DARE's 'l1'
        rescale: every source in one read-only pass over the base. LANES running sums (entry
        start + j into lane j mod LANES, lanes added in order at the end): a fixed order, and
        one add per entry into an L1-resident row, which LLVM vectorises with the draws (8
        lanes were a loop-carried scalar chain: 3x slower)."""
        m = stop - start
        bb = b[start:stop]
        before = np.empty(LANES)
        after = np.empty(LANES)
        for i in range(len(xs)):
            x = xs[i][start:stop]
            sd, bd = seed[i], bound[i]
            before[:] = 0.0
            after[:] = 0.0
            for at in range(0, m, LANES):
                e = min(LANES, m - at)
                xa, ba = x[at:at + e], bb[at:at + e]
                for j in range(e):
                    s = np.float64(abs(xa[j] - ba[j]))
                    before[j] += s
                    after[j] += s if draw(sd, start + at + j) < bd else 0.0
            total_before = 0.0
            total_after = 0.0
            for lane in range(LANES):
                total_before += before[lane]
                total_after += after[lane]
            sums[i, 0] = total_before
            sums[i, 1] = total_after
