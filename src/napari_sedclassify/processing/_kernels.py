"""Compiled per-frame kernels (numba, nogil): flat-field, centring, radial sums, annuli, crops, binning.

Conventions shared by every kernel: frames are float32 (n, ky, kx) after flat-field correction,
NaN marks a pixel to exclude (masked, or not finite in the raw data); pixel centres sit at
integer coordinates; a centre is (cy, cx) px, NaN when the frame has no beam. Kernels release
the GIL, so threads run them in parallel. Imported lazily: importing numba costs ~0.5 s.

Every kernel is cached on disk (``cache=True``): compiled once per signature, then loaded from
the cache in every later process (dask workers included). Numba writes the cache next to this
file (``__pycache__``), or in the user's cache folder when the installed package is read-only;
when neither is writable, :func:`_ensure_cache_dir` points ``NUMBA_CACHE_DIR`` at a folder in the
temporary directory, so nothing is compiled again on every run.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import threading

import numpy as np


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _ensure_cache_dir() -> None:
    """Give numba a writable cache folder when neither of its own choices is (see the module
    docstring); a ``NUMBA_CACHE_DIR`` the user set wins."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if _writable(here) or _writable(os.path.join(xdg, "numba")):
        return
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    folder = os.path.join(tempfile.gettempdir(), f"napari-sedclassify-numba-{uid}")
    os.environ["NUMBA_CACHE_DIR"] = folder
    if "numba" in sys.modules:  # numba read its settings at import: tell it directly
        sys.modules["numba"].config.CACHE_DIR = folder


class _NoBlasProbe:
    """An import hook that makes ``scipy.linalg`` (the parent of the ``cython_blas`` numba probes)
    unimportable for a moment, in the thread that installed it only (another thread, e.g. napari's
    UI thread while this module loads in a warm-up thread, imports it as usual); see
    :func:`_load_numba_numpy_support`."""

    def __init__(self):
        self.thread = threading.get_ident()

    def find_spec(self, name, path=None, target=None):
        if (name == "scipy.linalg" or name.startswith("scipy.linalg.")) and threading.get_ident() == self.thread:
            raise ImportError("skipped: numba's BLAS probe (napari_sedclassify's kernels use no BLAS)")
        return None


def _load_numba_numpy_support() -> None:
    """Import ``numba.np.arraymath`` without its BLAS probe.

    numba loads its numpy support at the first call of any compiled function (a cached one too),
    and ``numba.np.arraymath`` then imports SciPy's linear algebra (``scipy.linalg``, 0.1-0.3 s
    here) only to note whether BLAS is there, which changes nothing but numba's own ``np.cov`` /
    ``np.corrcoef`` inner product (a loop instead of ``np.dot``). None of these kernels uses BLAS,
    and every command paid that import before its first frame. When SciPy's linear algebra is not
    imported yet, the probe is answered "no" (numba then takes its loop); any later compilation
    that needs BLAS still imports it then (``numba.np.linalg.ensure_blas``)."""
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    hook = _NoBlasProbe()
    sys.meta_path.insert(0, hook)
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        sys.meta_path.remove(hook)


#: Environment variable: "skip" makes numba skip the numba extensions of other installed packages
#: in this process (see :func:`_skip_numba_extensions`). The ``sedclassify`` commands set it for
#: their own processes; anything else (a napari session shared with other plugins) loads them.
NUMBA_EXTENSIONS_ENV = "SEDCLASSIFY_NUMBA_EXTENSIONS"


def _skip_numba_extensions() -> None:
    """At its first call of any compiled function, numba looks through the entry points of every
    installed distribution and imports every registered numba extension (here ``sparse``'s: 60-90
    ms before a command's first frame). These kernels use none. Skipped only where
    ``NUMBA_EXTENSIONS_ENV`` says "skip" (a process of this package's own), never in a process
    other code may share, where an extension may be needed."""
    if os.environ.get(NUMBA_EXTENSIONS_ENV, "").lower() != "skip":
        return
    from numba.core import entrypoints

    if hasattr(entrypoints, "_already_initialized"):  # numba's own "done" mark (numba 0.5x-0.6x)
        entrypoints._already_initialized = True


_ensure_cache_dir()

from llvmlite import ir  # noqa: E402
from numba import njit, types  # noqa: E402  (after the cache folder is settled)
from numba.extending import intrinsic  # noqa: E402

_load_numba_numpy_support()
_skip_numba_extensions()

_NAN32 = np.float32(np.nan)
#: find_centres fits the beam's edge circle a second time only when the first fit moved the centre
#: of mass by this much (px): from a nearby start the second fit picks the same edge points and
#: returns the same circle (bit-identical on 1,024 simulated frames), from a far one it may not.
CIRCLE_REFIT_PX = 0.25
#: A beam whose k_peak-th brightest pixel is at the counter's full value (saturated) needs this
#: fraction of min_snr to be found: its true height is at least what the counter shows.
SATURATED_SNR_FACTOR = 0.5
#: A saturated beam whose unsaturated pixels above half height would make a ring more than this
#: many px wide around its saturated disc sits in a halo as bright as half the counter's range (a
#: 6-bit counter: 30-50 of 63 around a disc at 63). A clean saturated disc's edge is a ring at
#: most 0.7 px wide (simulated 12-bit scans of 192-512 px, windows of 16 px to 5 beam radii); the
#: real 6-bit 001_4x2_6bit.mib frames' 3-20 px, depending on the window.
HALO_RING_PX = 2.0
#: There the disc's edge is taken this fraction of the way from background to the full counter,
#: as half-way would take in the halo ...
SATURATED_EDGE = 0.9
#: ... and the circle through that edge replaces the disc's centre of mass only if the points
#: kept lie within this median distance of it (px): a clean edge, as where the detector cuts the
#: disc (0.1-0.3 px), not the ragged edge where the halo itself reaches the full counter.
HALO_CIRCLE_PX = 0.5


@intrinsic
def _add_sum_count(typingctx, acc, k, v):
    """``acc[k] += v; acc[k + 1] += 1.0`` (acc float64, v float32 or float64) as one two-lane load,
    add and store: the same IEEE additions, half the memory operations of the scalar pair (LLVM
    does not pair them itself). The symmetry search of the wide-pixel centring (``_spread``) adds
    its values so; the RIA's pixel loop, where the time goes, adds pairs made beforehand
    (``_add_pair``, docs/performance.md)."""
    pair = ir.VectorType(ir.DoubleType(), 2)
    widen = v == types.float32

    def codegen(context, builder, signature, args):
        array, offset, value = args
        data = context.make_array(signature.args[0])(context, builder, array).data
        where = builder.bitcast(builder.gep(data, [offset]), pair.as_pointer())
        value = builder.fpext(value, ir.DoubleType()) if widen else value
        step = builder.insert_element(ir.Constant(pair, [ir.Undefined, 1.0]), value, ir.Constant(ir.IntType(32), 0))
        builder.store(builder.fadd(builder.load(where, align=8), step), where, align=8)
        return context.get_dummy_value()

    return types.void(acc, k, v), codegen


@intrinsic
def _add_pair(typingctx, acc, k, pairs, j):
    """``acc[k:k + 2] += pairs[j:j + 2]`` (both float64) as one two-lane load, add and store: with
    the pairs (v, 1.0) made in a loop that vectorises, the additions of ``_add_sum_count`` without
    its per-pixel conversion and lane insertion (a pixel's sum and count, in the RIA's pixel loop)."""
    pair = ir.VectorType(ir.DoubleType(), 2)

    def codegen(context, builder, signature, args):
        array, offset, source, at = args
        data = context.make_array(signature.args[0])(context, builder, array).data
        src = context.make_array(signature.args[2])(context, builder, source).data
        where = builder.bitcast(builder.gep(data, [offset]), pair.as_pointer())
        step = builder.load(builder.bitcast(builder.gep(src, [at]), pair.as_pointer()), align=8)
        builder.store(builder.fadd(builder.load(where, align=8), step), where, align=8)
        return context.get_dummy_value()

    return types.void(acc, k, pairs, j), codegen


@njit(nogil=True, cache=True, inline="always")
def _corrected(r, c, d, use_dark, sat):
    """One pixel's correction: (r - d) * c as float32 (without dark: r * c); NaN where c is NaN
    (masked) or the result is not finite. Saturated pixels (r >= sat) keep their raw value: a full
    counter reads the same whatever the pixel's gain, so the beam's flat top stays flat."""
    r = np.float32(r)
    v = (r - d) * c if use_dark else r * c
    v = r if (r >= sat and r - r == 0 and c == c) else v
    return v if v - v == 0 else _NAN32


@njit(nogil=True, cache=True)
def correct_frames(raw, corr, dark, use_dark, saturation, out, total):
    """out = the corrected raw frames (``_corrected``), float32; total[i] = the sum of frame i's
    finite corrected pixels (``_finite_sum``'s), added up row by row as each row is written,
    while it is in the cache (the frames' totals then need no pass of their own)."""
    n, ky, kx = raw.shape
    sat = np.float32(saturation)
    for i in range(n):
        t = 0.0
        for y in range(ky):
            for x in range(kx):  # selects only: vectorises
                out[i, y, x] = _corrected(raw[i, y, x], corr[y, x], dark[y, x], use_dark, sat)
            t += _finite_row_sum(out[i, y])
        total[i] = t


@njit(nogil=True, cache=True)
def convert_frames(raw, masked, out, total):
    """out = the raw integer frames as float32, NaN at the flat pixel indices ``masked``
    (ascending, as ``np.flatnonzero`` gives them): what ``correct_frames`` gives when every
    unmasked pixel's correction is 1 and nothing is subtracted (no flat-field, no dark level),
    without reading the correction map (one stream less); total as ``correct_frames``'s."""
    n, ky, kx = raw.shape
    m = masked.shape[0]
    for i in range(n):
        t = 0.0
        j = 0
        for y in range(ky):
            for x in range(kx):
                out[i, y, x] = np.float32(raw[i, y, x])
            while j < m and masked[j] < (y + 1) * kx:  # this row's masked pixels
                out[i, y, masked[j] - y * kx] = np.nan
                j += 1
            t += _finite_row_sum(out[i, y])
        total[i] = t


@njit(nogil=True, cache=True)
def _add_row(row, acc):
    """acc += the finite values of row (float32, in place)."""
    for x in range(row.shape[0]):
        v = row[x]
        acc[x] += v if v == v else np.float32(0)


@njit(nogil=True, cache=True)
def bin_sums(frame, b, row_step, floor, out):
    """Sum of the finite pixels of each b x b block of one frame, each less ``floor`` (the data's
    pedestal, see find_centres), into out (ceil(ky/b), ceil(kx/b)), reading every row_step-th row of
    each block (a beam wider than row_step px is still seen)."""
    ky, kx = frame.shape
    nby, nbx = out.shape
    acc = np.zeros(kx, np.float32)
    for yb in range(nby):
        acc[:] = 0
        for y in range(yb * b, min(ky, (yb + 1) * b), row_step):
            if floor == 0:  # float32 sums: the float64 sum rounded to float32 is the float32 sum (exact
                _add_row(frame[y], acc)  # double rounding: 53 >= 2 x 24 + 2 bits), twice the vector width
            else:
                for x in range(kx):
                    v = frame[y, x]
                    acc[x] += v - floor if v == v else np.float32(0)
        o = out[yb]
        o[:] = 0
        for j in range(b):  # column j of every block, the blocks side by side: independent sums
            for xb in range(nbx):  # (each block's own sum still runs over its columns in order)
                x = xb * b + j
                if x < kx:
                    o[xb] += acc[x]


@njit(nogil=True, cache=True)
def _interp(x, xp, fp):
    """np.interp(x, xp, fp) for one float x and increasing xp, to the bit as numba computes it (the
    same formula and edge cases), without the arrays numba's version allocates on every call."""
    n = xp.shape[0]
    if np.isnan(x):
        return x
    if x > xp[n - 1]:
        return fp[n - 1]
    if x < xp[0]:
        return fp[0]
    if x == xp[n - 1]:
        return fp[n - 1]
    lo, hi = 0, n - 1  # xp[lo] <= x < xp[hi]
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if xp[mid] <= x:
            lo = mid
        else:
            hi = mid
    if xp[lo] == x:
        return fp[lo]
    slope = (fp[lo + 1] - fp[lo]) / (xp[lo + 1] - xp[lo])
    r = slope * (x - xp[lo]) + fp[lo]
    if np.isnan(r):  # as numpy: from the other end, then the flat value
        r = slope * (x - xp[lo + 1]) + fp[lo + 1]
        if np.isnan(r) and fp[lo] == fp[lo + 1]:
            r = fp[lo]
    return r


@njit(nogil=True, cache=True)
def _span(c, half, n):
    """[lo, hi) of the 2 half + 1 px about index round(c), clipped to 0..n."""
    i = int(round(c))
    return max(0, i - half), min(n, i + half + 1)


@njit(nogil=True, cache=True, inline="always")
def _row_max(row, x0, x1, sign=1.0):
    """The largest of sign x row[x0:x1] (NaN left out; -inf when nothing else): four running
    maxima, whose comparisons do not wait for each other (docs/performance.md, session 31). With
    sign -1, minus the least value (negation is exact); the constant sign folds away inlined."""
    s = np.float32(sign)
    m0 = m1 = m2 = m3 = np.float32(-np.inf)
    x = x0
    while x + 4 <= x1:
        v = s * row[x]
        m0 = v if v > m0 else m0
        v = s * row[x + 1]
        m1 = v if v > m1 else m1
        v = s * row[x + 2]
        m2 = v if v > m2 else m2
        v = s * row[x + 3]
        m3 = v if v > m3 else m3
        x += 4
    while x < x1:
        v = s * row[x]
        m0 = v if v > m0 else m0
        x += 1
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    return m2 if m2 > m0 else m0


@njit(nogil=True, cache=True, inline="always")
def _insert(top, v):
    """v into top (ascending: the k largest values so far) when it is above the least of them."""
    if v > top[0]:
        j = 0
        while j + 1 < top.shape[0] and top[j + 1] < v:
            top[j] = top[j + 1]
            j += 1
        top[j] = v


@njit(nogil=True, cache=True)
def _kth_largest(frame, y0, y1, x0, x1, top, rowmax):
    """The k-th largest value of frame[y0:y1, x0:x1] (k: top's size; NaN left out; -inf with fewer
    values), top left holding the k largest (ascending). The k largest of the rows' maxima (in
    rowmax, y1 - y0 or more) bound it from below, k values reaching it: only the rows whose
    maximum reaches that bound are searched, the others hold none of the k largest. The same
    value as a search of every pixel, in half the time on a beam's window (2.6 against 5.9 us at
    31 x 31 px; the search of every pixel mispredicted its branch wherever values rose toward the
    beam: docs/performance.md, session 31)."""
    top[:] = -np.inf
    for y in range(y0, y1):
        m = _row_max(frame[y], x0, x1)
        rowmax[y - y0] = m
        _insert(top, m)
    bound = top[0]
    top[:] = -np.inf
    for y in range(y0, y1):
        if rowmax[y - y0] >= bound:
            row = frame[y]
            for x in range(x0, x1):
                _insert(top, row[x])
    return top[0]


@njit(nogil=True, cache=True)
def _refine(frame, cy0, cx0, half, k_peak, min_snr, sat, floor, py, px, wy, wx, res):
    """Centre of mass of the beam disc in a (2 half + 1)^2 window about index (cy0, cx0).

    Background = median of the window's border, peak = the k_peak-th largest value (so a few hot
    pixels cannot set it); pixels above the half-way threshold (further up for a saturated beam
    in a bright halo: HALO_RING_PX) weigh min(v, cap) - threshold with cap at 85 % of the way
    to the peak (the peak itself when the threshold is higher), so a saturated top counts as
    uniform. Positions are the physical pixel centres py, px, weights times the pixel areas
    wy x wx. floor: the data's pedestal (see find_centres), the zero of the Poisson counts.
    Writes (cy, cx) physical px, the area above threshold, peak, bg, edge fraction (0.5 or
    SATURATED_EDGE: where between bg and peak the threshold was) to res; returns False when
    no beam stands out (res[3], res[4] then hold the window's peak and background).
    """
    res[3] = np.nan
    y0, y1 = _span(cy0, half, frame.shape[0])
    x0, x1 = _span(cx0, half, frame.shape[1])
    if y1 - y0 < 3 or x1 - x0 < 3:
        return False
    border = np.empty(2 * (y1 - y0) + 2 * (x1 - x0), np.float32)
    nb = 0
    for y in range(y0, y1):
        for x in range(x0, x1, 1 if y == y0 or y == y1 - 1 else x1 - 1 - x0):  # the window's edge pixels
            v = frame[y, x]
            if v == v:
                border[nb] = v
                nb += 1
    if nb == 0:
        return False
    bg = _median_in_place(border, nb)  # np.median(border[:nb]), without its copy
    # the border's values are spent: its buffer takes each window row's largest value
    peak = _kth_largest(frame, y0, y1, x0, x1, np.empty(k_peak, np.float32), border)
    row_max = border
    res[3] = peak
    res[4] = bg
    # a beam stands out by min_snr Poisson sigmas; a full counter (peak >= sat: k_peak pixels
    # saturated) only bounds the beam's height from below, so it needs SATURATED_SNR_FACTOR of that
    # (6-bit counters: a saturated beam at 63 on a halo of 30 counts is 6 sigmas, never 10)
    snr = min_snr * (SATURATED_SNR_FACTOR if peak >= sat else 1.0)
    if not np.isfinite(peak) or peak - bg <= snr * math.sqrt(max(bg - floor, 0.0) + 1.0):
        return False
    f = 0.5
    for _ in range(2):
        thr = bg + f * (peak - bg)
        cap = bg + 0.85 * (peak - bg) if f < 0.85 else peak  # saturated, gain-scattered tops weigh the same
        sw = 0.0
        sy = 0.0
        sx = 0.0
        n_above = 0
        n_sat = 0
        area = 0.0
        for y in range(y0, y1):
            if not row_max[y - y0] > thr:
                continue  # no pixel of this row is above the threshold: it adds nothing
            for x in range(x0, x1):
                v = frame[y, x]
                if v > thr:
                    a = wy[y] * wx[x]
                    w = (min(v, cap) - thr) * a
                    sw += w
                    sy += w * py[y]
                    sx += w * px[x]
                    n_above += 1
                    n_sat += v >= sat
                    area += a
        if f == 0.5 and peak >= sat and n_above - n_sat > HALO_RING_PX * 2.0 * math.sqrt(math.pi * n_sat):
            f = SATURATED_EDGE  # a saturated disc in a bright halo: its edge is near the full counter
        else:
            break
    res[5] = f
    if n_above < 3 or sw <= 0:
        return False
    res[0] = sy / sw
    res[1] = sx / sw
    res[2] = area
    res[3] = peak
    res[4] = bg
    return True


@njit(nogil=True, cache=True, inline="always")
def _det3(a, b, c, d, e, f, g, h, k):
    """The determinant of the 3x3 matrix with rows (a, b, c), (d, e, f), (g, h, k)."""
    return a * (e * k - f * h) - b * (d * k - f * g) + c * (d * h - e * g)


@njit(nogil=True, cache=True)
def _kasa(pts, use, npts, res):
    """Algebraic circle fit x^2 + y^2 + D y + E x + F = 0 to the points pts[:npts] with use[k]
    (the normal equations' sums, then Cramer's rule); writes (cy, cx, R) to res. Scalars only:
    no array is allocated (it runs up to 10 times a frame)."""
    m00 = m01 = m02 = m10 = m11 = m12 = m20 = m21 = m22 = 0.0
    v0 = v1 = v2 = 0.0
    for k in range(npts):
        if not use[k]:
            continue
        y = pts[k, 0]
        x = pts[k, 1]
        z = -(x * x + y * y)
        v0 += y * z
        m00 += y * y
        m01 += y * x
        m02 += y * 1.0
        v1 += x * z
        m10 += x * y
        m11 += x * x
        m12 += x * 1.0
        v2 += 1.0 * z
        m20 += 1.0 * y
        m21 += 1.0 * x
        m22 += 1.0 * 1.0
    det = _det3(m00, m01, m02, m10, m11, m12, m20, m21, m22)
    if abs(det) < 1e-12:
        return False
    d = _det3(v0, m01, m02, v1, m11, m12, v2, m21, m22) / det
    e = _det3(m00, v0, m02, m10, v1, m12, m20, v2, m22) / det
    f = _det3(m00, m01, v0, m10, m11, v1, m20, m21, v2) / det
    cy = -0.5 * d
    cx = -0.5 * e
    r2 = cy * cy + cx * cx - f
    if r2 <= 0:
        return False
    res[0] = cy
    res[1] = cx
    res[2] = math.sqrt(r2)
    return True


@njit(nogil=True, cache=True)
def _crossings(frame, i0, i1, j0, j1, level, pi, pj, wi, wj, cj, pts, n, swap, lo, hi):
    """Add to pts[n:] the points (physical px) where ``level`` falls between the neighbours
    frame[i, j], frame[i, j + 1] of the window, both ordinary pixels, the brighter one nearer the
    centre cj (an edge falling outwards); (pi, interpolated pj) per point, reversed with ``swap``
    (frame transposed). lo[i - i0], hi[i - i0]: the least and largest value of row i in the
    window (NaN left out): a row without values on both sides of ``level`` holds no crossing
    and is passed over. Returns the new n."""
    for i in range(i0, i1):
        if wi[i] != 1.0 or not (lo[i - i0] < level < hi[i - i0]):
            continue
        for j in range(j0, j1 - 1):
            a = frame[i, j]
            b = frame[i, j + 1]
            if wj[j] != 1.0 or wj[j + 1] != 1.0 or not (a == a and b == b):
                continue
            if (a - level) * (b - level) < 0 and (a > b) == (pj[j] + pj[j + 1] > 2 * cj) and n < pts.shape[0]:
                pts[n, swap] = pi[i]
                pts[n, 1 - swap] = pj[j] + (level - a) / (b - a) * (pj[j + 1] - pj[j])
                n += 1
    return n


@njit(nogil=True, cache=True)
def _median_of(d, use, buf):
    """np.median(d[use]) (use not all False, no NaN in d), with buf (len(d),) as scratch: the middle
    value, or the mean (a + b) / 2 of the middle two, as numpy and numba compute it."""
    m = 0
    for k in range(d.shape[0]):
        if use[k]:
            buf[m] = d[k]
            m += 1
    return _median_in_place(buf, m)


@njit(nogil=True, cache=True)
def _median_in_place(buf, m):
    """np.median(buf[:m]) (m > 0, no NaN), reordering buf[:m]: the middle value, or the mean
    (a + b) / 2 of the middle two, in numba's types and arithmetic (float32 values: a + b in
    float32, then halved in float64), without np.median's copy of the values."""
    half = m >> 1
    if m & 1:
        return _select(buf, m, half)
    a = _select(buf, m, half - 1)
    b = buf[half]  # the half-th smallest: the least of those the selection left above a
    for k in range(half + 1, m):
        if buf[k] < b:
            b = buf[k]
    return (a + b) / 2


@njit(nogil=True, cache=True)
def _circle(frame, cy0, cx0, r0, half, level, py, px, wy, wx, ey, ex, iy_edges, ix_edges, res):
    """Circle through the points where the beam's edge crosses ``level`` along rows and columns
    (linear interpolation between neighbouring ordinary pixels, physical px; only crossings that
    fall outwards from the index-px estimate (cy0, cx0)), starting from those within 30 % of the
    expected radius r0 and refitted without the points off the circle. Wide and masked pixels take
    no part. Writes (cy, cx, R) physical px, and to res[3] where res has room the median distance
    of the points kept from that circle."""
    ky, kx = frame.shape
    y0, y1 = _span(cy0, half, ky)
    x0, x1 = _span(cx0, half, kx)
    pts = np.empty((4 * (y1 - y0 + x1 - x0) + 8, 2))
    cyp = _interp(cy0, iy_edges, ey)
    cxp = _interp(cx0, ix_edges, ex)
    # each row's and column's least and largest value: most of the window's rows and columns lie
    # wholly above or below the edge's level and hold no crossing (docs/performance.md, session 31)
    row_lo = np.empty(y1 - y0, np.float32)
    row_hi = np.empty(y1 - y0, np.float32)
    col_lo = np.full(x1 - x0, np.inf, np.float32)
    col_hi = np.full(x1 - x0, -np.inf, np.float32)
    for y in range(y0, y1):
        row = frame[y, x0:x1]
        for x in range(x1 - x0):  # every column at once (it vectorises)
            v = row[x]
            col_lo[x] = v if v < col_lo[x] else col_lo[x]
            col_hi[x] = v if v > col_hi[x] else col_hi[x]
        row_lo[y - y0] = -_row_max(row, 0, x1 - x0, -1.0)  # the least value
        row_hi[y - y0] = _row_max(row, 0, x1 - x0)
    n = _crossings(frame, y0, y1, x0, x1, level, py, px, wy, wx, cxp, pts, 0, 0, row_lo, row_hi)  # along rows
    n = _crossings(frame.T, x0, x1, y0, y1, level, px, py, wx, wy, cyp, pts, n, 1, col_lo, col_hi)  # along columns
    if n < 6:
        return False
    use = np.empty(n, np.bool_)  # start from the points near the expected radius
    kept = 0
    for k in range(n):
        use[k] = abs(math.hypot(pts[k, 0] - cyp, pts[k, 1] - cxp) - r0) < max(1.0, 0.3 * r0)
        kept += use[k]
    if kept < 6 or not _kasa(pts, use, n, res):
        return False
    d = np.empty(n)
    buf = np.empty(n)
    for _ in range(4):  # drop points off the circle (hot pixels, Bragg spots), refit
        for k in range(n):
            d[k] = abs(math.hypot(pts[k, 0] - res[0], pts[k, 1] - res[1]) - res[2])
        med = _median_of(d, use, buf)
        tol = max(0.3, 4.0 * 1.4826 * med)
        kept = 0
        changed = False
        for k in range(n):
            u = d[k] <= tol
            changed |= u != use[k]
            use[k] = u
            kept += u
        if kept < 6:
            return False
        if not changed:  # the points the circle was fitted to stay: it stands (a refit gives the
            break  # same circle), and med is their median distance from it
        if not _kasa(pts, use, n, res):
            return False
    else:  # refitted to the last: the distances from that circle
        for k in range(n):
            d[k] = abs(math.hypot(pts[k, 0] - res[0], pts[k, 1] - res[1]) - res[2])
        med = _median_of(d, use, buf)
    if res.shape[0] > 3:  # how far the points kept lie from the circle: the median (physical px)
        res[3] = med
    return True


@njit(nogil=True, cache=True)
def _spread(yv, xv, vv, n, cy, cx, inv_bin, nb, acc, bins):
    """The spread of the values within radial bins of 1 / inv_bin px about (cy, cx), less the sum
    of their squares (the same whatever the centre, as every point falls in one of the nb bins):
    minus the sum over bins of (bin sum)^2 / count. Lower = more circularly symmetric. acc: (2 nb,)
    scratch, each bin's (sum, count); bins: (n,) int32 scratch: the bins are computed in a loop of
    their own, which vectorises (the sums cannot), 1.4-1.7x faster than one loop doing both."""
    acc[:] = 0.0
    for k in range(n):
        dy = yv[k] - cy
        dx = xv[k] - cx
        bins[k] = np.int32(2) * min(np.int32(math.sqrt(dy * dy + dx * dx) * inv_bin), np.int32(nb - 1))
    for k in range(n):
        _add_sum_count(acc, np.int64(bins[k]), vv[k])
    t = 0.0
    for b in range(nb):
        if acc[2 * b + 1] > 0:
            t -= acc[2 * b] * acc[2 * b] / acc[2 * b + 1]
    return t


@njit(nogil=True, cache=True)
def _symmetric(frame, cy0, cx0, half, py, px, wy, wx, ey, ex, iy_edges, ix_edges, res):
    """Centre (physical px) about which the ordinary, valid pixels of the window are most nearly
    circularly symmetric (least spread within 0.5-px radial bins): a grid search of +-1.4 px in
    steps of 0.2 px, then +-0.2 px in 0.04 px. For beams on a quad's wide pixels, where too little
    edge is left for a circle fit."""
    ky, kx = frame.shape
    y0, y1 = _span(_interp(cy0, ey, iy_edges), half, ky)
    x0, x1 = _span(_interp(cx0, ex, ix_edges), half, kx)
    m = (y1 - y0) * (x1 - x0)
    yv = np.empty(m)
    xv = np.empty(m)
    vv = np.empty(m)
    n = 0
    for y in range(y0, y1):
        if wy[y] != 1.0:
            continue
        for x in range(x0, x1):
            v = frame[y, x]
            if wx[x] == 1.0 and v == v:
                yv[n] = py[y]
                xv[n] = px[x]
                vv[n] = v
                n += 1
    if n < 12:
        return False
    nb = int(2 * half * 1.5 / 0.5) + 2
    acc = np.empty(2 * nb)
    bins = np.empty(n, np.int32)
    by = cy0
    bx = cx0
    for step, reach in ((0.2, 7), (0.04, 5)):
        best = np.inf
        gy = by
        gx = bx
        for a in range(-reach, reach + 1):
            for b in range(-reach, reach + 1):
                t = _spread(yv, xv, vv, n, gy + a * step, gx + b * step, 2.0, nb, acc, bins)
                if t < best:
                    best = t
                    by = gy + a * step
                    bx = gx + b * step
    res[0] = by
    res[1] = bx
    return True


@njit(nogil=True, cache=True)
def _fixed(frame, iy, ix, half, half0, half_max, k_peak, min_snr, sat, floor, py, px, wy, wx, ey, ex, iy_edges,
           ix_edges, res, at):
    """Whether the window of ``half`` about index (iy, ix) is a fixed point of the centre of mass
    (which then goes to res, its index centre to at); res is left as it was when not."""
    keep = res.copy()
    if _refine(frame, iy, ix, half, k_peak, min_snr, sat, floor, py, px, wy, wx, res):
        at[0] = _interp(res[0], ey, iy_edges)
        at[1] = _interp(res[1], ex, ix_edges)
        th = min(max(int(2.5 * math.sqrt(res[2] / math.pi)) + 3, half0), half_max)
        if int(round(at[0])) == iy and int(round(at[1])) == ix and th == half:
            return True
    res[:] = keep
    return False


@njit(nogil=True, cache=True)
def _converge(frame, cy, cx, half0, half_max, k_peak, min_snr, sat, floor, py, px, wy, wx, ey, ex, iy_edges,
              ix_edges, res, at, grow=True):
    """Iterate the thresholded centre of mass from index (cy, cx), the window sized to 2.5 beam
    radii, until the window (its integer position and size, all that ``_refine`` depends on) stops
    changing; the index centre goes to at[0], at[1]. False: no beam.

    The result is the centre of mass in the final window, so it depends on the frame alone, not on
    where the search started (a warm start from a neighbour and a cold start agree to the bit); a
    two-window cycle ends in the lower-left of the two. iy_edges, ix_edges: the pixel edges in
    index px (k - 0.5). grow=False: no beam where the first window lies inside a wider disc
    (a search from an expected position gives up there; the coarse search takes over)."""
    half = half0
    wy0 = int(round(cy))
    wx0 = int(round(cx))
    py0 = -1  # the window before (2-cycle detection)
    px0 = -1
    ph0 = -1
    for _ in range(12):
        if not _refine(frame, wy0, wx0, half, k_peak, min_snr, sat, floor, py, px, wy, wx, res):
            if grow and half < half_max and np.isfinite(res[3]) and res[4] > 0.5 * res[3]:
                # the window's border is over half as bright as its peak: it lies inside a disc
                # wider than itself (a convergent beam); look again in one twice the size
                half = min(2 * half, half_max)
                continue
            return False
        r = math.sqrt(res[2] / math.pi)
        cy = _interp(res[0], ey, iy_edges)
        cx = _interp(res[1], ex, ix_edges)
        ny = int(round(cy))
        nx = int(round(cx))
        nh = min(max(int(2.5 * r) + 3, half0), half_max)
        if ny == wy0 and nx == wx0 and nh == half:
            # fixed point: (cy, cx) is the centre of mass of this very window. A centre within a
            # hair of a pixel boundary can be a fixed point of the neighbouring window too: take
            # the lower of the two, whichever the search reached first. Likewise a window one px
            # smaller can hold the same beam at a fixed point: take the smallest such window.
            while half > half0 and _fixed(frame, wy0, wx0, half - 1, half0, half_max, k_peak, min_snr, sat, floor,
                                          py, px, wy, wx, ey, ex, iy_edges, ix_edges, res, at):
                half, cy, cx = half - 1, at[0], at[1]
            for axis in range(2):
                c = cy if axis == 0 else cx
                w = wy0 if axis == 0 else wx0
                if abs(abs(c - w) - 0.5) > 0.02 or c > w:
                    continue
                ty = wy0 - 1 if axis == 0 else wy0
                tx = wx0 - 1 if axis == 1 else wx0
                if _fixed(frame, ty, tx, half, half0, half_max, k_peak, min_snr, sat, floor, py, px, wy, wx, ey, ex,
                          iy_edges, ix_edges, res, at):
                    wy0, wx0, cy, cx = ty, tx, at[0], at[1]
            break
        if ny == py0 and nx == px0 and nh == ph0:
            # two windows alternate: settle on the lower-left one, whichever came first
            if (ny, nx, nh) < (wy0, wx0, half):
                wy0, wx0, half = ny, nx, nh
            if not _refine(frame, wy0, wx0, half, k_peak, min_snr, sat, floor, py, px, wy, wx, res):
                return False
            cy = _interp(res[0], ey, iy_edges)
            cx = _interp(res[1], ex, ix_edges)
            break
        py0, px0, ph0 = wy0, wx0, half
        wy0, wx0, half = ny, nx, nh
    at[0] = cy
    at[1] = cx
    return True


@njit(nogil=True, cache=True)
def _box3_row(blocks, yb, box):
    """box[xb]: sum of the 3 x 3 blocks about (yb, xb) (those inside), added in row-major order
    from 0 in float64; every xb at once (the sums are independent: they vectorise)."""
    nby, nbx = blocks.shape
    box[:] = 0.0
    for yy in range(max(0, yb - 1), min(nby, yb + 2)):
        row = blocks[yy]
        box[0] += row[0]  # the first block has no left neighbour
        if nbx > 1:
            box[0] += row[1]
        for xb in range(1, nbx - 1):
            box[xb] += row[xb - 1]
            box[xb] += row[xb]
            box[xb] += row[xb + 1]
        if nbx > 1:
            box[nbx - 1] += row[nbx - 2]
            box[nbx - 1] += row[nbx - 1]


@njit(nogil=True, cache=True)
def find_centres(frames, b, row_step, half0, half_max, k_peak, min_snr, sat, floor, py, px, wy, wx, ey, ex, centres,
                 found, radius, peak, warm, expected):
    """Direct-beam centre (index px) of each frame: an iterated thresholded centre of mass
    (physical px: pixel centres py, px, widths wy, wx, edges ey, ex) in a window grown to 2.5 beam
    radii, started (``warm``) from the previous frame's centre (the descan moves the beam little
    between neighbours) and, when the beam is not there or not ``warm``, from the coarse maximum
    of b x b block sums (3x3 blocks): without ``warm`` each frame's centre depends on that frame
    alone, whatever chunk it travels in (batch and live agree exactly); then a circle fitted to the
    beam's half-height edge (where it has enough ordinary pixels). A beam stands out of its
    window's background by min_snr Poisson sigmas, or by SATURATED_SNR_FACTOR of that when its
    top is at the counter's full value ``sat`` (inf: unknown). ``floor``: the data's pedestal (0 for
    counts; below zero for data with a pedestal or a dark level subtracted: int32 or float), what
    the search takes as no electron, so that a constant pedestal moves no beam. peak[i]: the
    beam's k_peak-th largest value in the final window, less ``floor`` (NaN without a beam).

    ``expected`` (4,): where the plan expects the beam (cy, cx index px; NaN: nowhere), its area
    above half-way (px^2) and its peak above ``floor`` (the calibration sample's). Without
    ``warm``, each frame's search starts there first, without growing its window, and keeps the
    disc it settles on when that disc has 0.5-2 times the area and at least half the peak (not a
    Bragg spot or an arc of a ring where the beam has moved away); else the coarse search. The
    centre then depends on the frame and the plan alone (batch and live share the plan): the
    same fixed window as from the coarse search, but where a frame's beam has two distant fixed
    windows, the one nearer the expected position."""
    n, ky, kx = frames.shape
    iy_edges = np.arange(ky + 1) - 0.5
    ix_edges = np.arange(kx + 1) - 0.5
    nby = (ky + b - 1) // b
    nbx = (kx + b - 1) // b
    blocks = np.empty((nby, nbx), np.float32)
    box = np.empty(nbx, np.float64)
    res = np.empty(6, np.float64)
    circ = np.empty(4, np.float64)
    at = np.empty(2, np.float64)
    prev = np.full(3, np.nan)  # previous frame's centre (index px) and area above threshold
    start = np.isfinite(expected[0]) and np.isfinite(expected[1]) and not warm
    peak_min = floor + 0.5 * expected[3]  # NaN (no height known): nothing found there is kept
    for i in range(n):
        centres[i, 0] = np.nan
        centres[i, 1] = np.nan
        found[i] = False
        radius[i] = np.nan
        peak[i] = np.nan
        ok = False
        if warm and np.isfinite(prev[0]):
            ok = _converge(frames[i], prev[0], prev[1], half0, half_max, k_peak, min_snr, sat, floor, py, px, wy, wx,
                           ey, ex, iy_edges, ix_edges, res, at) and 0.5 * prev[2] <= res[2] <= 2.0 * prev[2]
        elif start:
            ok = _converge(frames[i], expected[0], expected[1], half0, half_max, k_peak, min_snr, sat, floor, py, px,
                           wy, wx, ey, ex, iy_edges, ix_edges, res, at, False) \
                and 0.5 * expected[2] <= res[2] <= 2.0 * expected[2] and res[3] >= peak_min
        if not ok:
            bin_sums(frames[i], b, row_step, floor, blocks)
            best = 0.0
            by = -1
            bx = -1
            for yb in range(nby):
                _box3_row(blocks, yb, box)
                for xb in range(nbx):
                    if box[xb] > best:
                        best = box[xb]
                        by = yb
                        bx = xb
            if by < 0:
                prev[0] = np.nan
                continue
            # brightest block of the 3x3 neighbourhood: the beam sits there
            best = -1.0
            cy = 0.0
            cx = 0.0
            for yy in range(max(0, by - 1), min(nby, by + 2)):
                for xx in range(max(0, bx - 1), min(nbx, bx + 2)):
                    if blocks[yy, xx] > best:
                        best = blocks[yy, xx]
                        cy = yy * b + 0.5 * (b - 1)
                        cx = xx * b + 0.5 * (b - 1)
            ok = _converge(frames[i], cy, cx, half0, half_max, k_peak, min_snr, sat, floor, py, px, wy, wx, ey, ex,
                           iy_edges, ix_edges, res, at)
        if not ok:
            prev[0] = np.nan
            continue
        cy = at[0]
        cx = at[1]
        prev[0] = cy
        prev[1] = cx
        prev[2] = res[2]
        peak[i] = res[3] - floor
        r = math.sqrt(res[2] / math.pi)
        level = res[4] + res[5] * (res[3] - res[4])
        h = max(int(1.6 * r) + 3, 5)
        d = int(0.5 * r) + 1
        y0, y1 = _span(cy, d, ky)
        x0, x1 = _span(cx, d, kx)
        wide = (wy[y0:y1] != 1.0).any() or (wx[x0:x1] != 1.0).any()
        if wide:  # wide pixels cut the beam's middle: symmetry of the ordinary pixels around them
            if _symmetric(frames[i], _interp(cy, iy_edges, ey), _interp(cx, ix_edges, ex), h,
                          py, px, wy, wx, ey, ex, iy_edges, ix_edges, circ):
                cy = _interp(circ[0], ey, iy_edges)
                cx = _interp(circ[1], ex, ix_edges)
        elif res[5] != 0.5:  # a saturated disc in a bright halo: where the halo reaches the full
            # counter its edge is ragged and a circle through it drifts, so the circle replaces the
            # centre of mass only where the edge is clean (a disc cut by the detector's edge)
            if _circle(frames[i], cy, cx, r, h, level, py, px, wy, wx, ey, ex, iy_edges, ix_edges, circ) \
                    and circ[3] <= HALO_CIRCLE_PX:
                cy = _interp(circ[0], ey, iy_edges)
                cx = _interp(circ[1], ex, ix_edges)
                r = circ[2]
        else:
            for _ in range(2):  # the edge's circle refines the centre of mass, and once more if it
                if not _circle(frames[i], cy, cx, r, h, level, py, px, wy, wx, ey, ex, iy_edges, ix_edges, circ):
                    break  # moved the centre by CIRCLE_REFIT_PX or more (a far start picks other edge points)
                ny = _interp(circ[0], ey, iy_edges)
                nx = _interp(circ[1], ex, ix_edges)
                moved = math.hypot(ny - cy, nx - cx)
                cy, cx, r = ny, nx, circ[2]
                if moved < CIRCLE_REFIT_PX:
                    break
        centres[i, 0] = cy
        centres[i, 1] = cx
        found[i] = True
        radius[i] = r


@njit(nogil=True, cache=True, inline="always")
def _ring_row(row, dx2, dy2, r_min, inv, nbins, par, idx, pairs, acc):
    """Add one row's pixels (distances squared dy2 + dx2 from the centre, float32, as are r_min and
    inv) to their radial bins in acc (see radial_sums); par: 2 x each pixel's column parity (uint32,
    0 or 2). The first loop vectorises (it runs from 0): each pixel's bin slot to idx, its (value,
    1.0) to pairs (2 len(row),), which the second adds to the slot (``_add_pair``); pixels not
    counted (NaN, outside the bins) go to the slot at 4 nbins. The slot is made in 32-bit integers
    and the parity read from par: the vectorised loop then has no 64-bit lanes to shift, add and
    narrow (3-4 % less time in radial_sums, docs/performance.md session 33). Inlined into
    radial_sums (its 192-512 calls a frame cost 3 us at 192^2, 10 us at 512^2, docs/performance.md
    session 27)."""
    m = row.shape[0]
    fnb = np.float32(nbins)
    rest = np.uint32(4 * nbins)
    for x in range(m):
        v = row[x]
        t = (np.sqrt(dy2 + dx2[x]) - r_min) * inv
        ok = (v == v) & (t >= np.float32(0)) & (t < fnb)
        k = np.uint32(4) * np.uint32(np.int32(t))  # only where ok (0 <= t < nbins)
        idx[x] = (k if ok else rest) + par[x]
        pairs[2 * x] = np.float64(v)
        pairs[2 * x + 1] = 1.0
    for x in range(m):
        _add_pair(acc, np.int64(idx[x]), pairs, np.int64(2 * x))


@njit(nogil=True, cache=True)
def radial_sums(frames, centres, py, px, r_min, bin_px, sums, counts):
    """Sum and number of finite pixels per radial bin about each frame's own centre.

    centres and pixel positions py (ky,), px (kx,) in the same (physical) px.
    Bin k holds r in [r_min + k bin_px, r_min + (k+1) bin_px), r from the sub-pixel centre (no
    centre quantisation) in float32: (dy^2 + dx^2 each computed in float64, rounded to float32,
    added, square root, less r_min, times 1 / bin_px, all float32 and correctly rounded, so the same
    bins on any IEEE machine). Within 3e-7 (t + 2 r_min / bin_px + 1) bins of an edge (five float32
    roundings: 1e-4 px at r = 360 px, 2e-5 px seen) a pixel can fall on the other side of it than
    float64 would put it, about 1e-5 of the pixels (docs/preprocessing.md).
    sums (n, nbins) float64, counts (n, nbins) (any integer type); frames whose centre is NaN get
    zeros.
    """
    n, ky, kx = frames.shape
    nbins = sums.shape[1]
    inv = np.float32(1.0 / bin_px)
    r_min32 = np.float32(r_min)
    # pixels farther than the last bin's outer edge (with a margin far above rounding) are not
    # visited: rows beyond it are skipped, and each row is cut to the span that can reach it
    r_out = r_min + nbins * bin_px + 1e-6 * (1.0 + r_min + nbins * bin_px)
    lim2 = r_out * r_out
    dx2 = np.empty(kx, np.float32)
    par = np.empty(kx, np.uint32)
    for x in range(kx):
        par[x] = np.uint32(2 * (x & 1))
    idx = np.empty(kx, np.uint32)
    pairs = np.empty(2 * kx, np.float64)
    # (sum, count) per bin and per pixel parity, at 4 k + 2 parity (+1): neighbouring pixels,
    # often in the same bin, then update different memory and do not wait for each other; bin
    # nbins collects the rest (NaN included: never read)
    acc = np.zeros(4 * nbins + 4, np.float64)
    for i in range(n):
        cy = centres[i, 0]
        cx = centres[i, 1]
        if not (np.isfinite(cy) and np.isfinite(cx)):
            sums[i, :] = 0
            counts[i, :] = 0
            continue
        acc[:] = 0
        for x in range(kx):
            dx2[x] = np.float32((px[x] - cx) * (px[x] - cx))
        for y in range(ky):
            dy2 = (py[y] - cy) * (py[y] - cy)
            if dy2 >= lim2:
                continue
            w = math.sqrt(lim2 - dy2)
            x0 = 0 if cx - w <= px[0] else max(0, np.searchsorted(px, cx - w) - 1)  # a whole row: what the
            x1 = kx if cx + w >= px[kx - 1] else min(kx, np.searchsorted(px, cx + w) + 1)  # searches find
            _ring_row(frames[i, y, x0:x1], dx2[x0:x1], np.float32(dy2), r_min32, inv, nbins, par[x0:x1], idx, pairs, acc)
        for k in range(nbins):
            sums[i, k] = acc[4 * k] + acc[4 * k + 2]
            counts[i, k] = acc[4 * k + 1] + acc[4 * k + 3]


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _finite_row_sum(row):
    """Sum of the finite values of one row, float32 (vectorised; NaN tests stay exact)."""
    s = np.float32(0)
    for x in range(row.shape[0]):
        v = row[x]
        s += v if v == v else np.float32(0)
    return s


@njit(nogil=True, cache=True)
def _finite_sum(frame):
    """Sum of the finite pixels of one frame: its rows' sums (``_finite_row_sum``) in float64."""
    t = 0.0
    for y in range(frame.shape[0]):
        t += _finite_row_sum(frame[y])
    return t


@njit(nogil=True, cache=True)
def _disc_sum(frame, cy, cx, cyi, cxi, radius, py, px):
    """Sum of the finite pixels with r < radius (physical px) about physical (cy, cx); the index
    box about index (cyi, cxi) bounds the disc (physical distances are never shorter)."""
    ky, kx = frame.shape
    r2 = radius * radius
    y0 = max(0, int(math.floor(cyi - radius)) - 1)
    y1 = min(ky, int(math.ceil(cyi + radius)) + 2)
    x0 = max(0, int(math.floor(cxi - radius)) - 1)
    x1 = min(kx, int(math.ceil(cxi + radius)) + 2)
    t = 0.0
    for y in range(y0, y1):
        dy2 = (py[y] - cy) * (py[y] - cy)
        if dy2 >= r2:
            continue
        for x in range(x0, x1):
            v = frame[y, x]
            if v == v and dy2 + (px[x] - cx) * (px[x] - cx) < r2:
                t += v
    return t


@njit(nogil=True, cache=True)
def annular_sums(frames, centres, centres_idx, py, px, r_in, r_out, total, sums, total_given):
    """total[i]: sum of the finite pixels (read as given with ``total_given``: the correction's,
    else added up here); sums[i, j]: sum over r_in[j] <= r < r_out[j] (physical px, r_out may be
    inf) about the frame's centre (physical ``centres``, index ``centres_idx``), as the
    difference of two disc sums, so only the discs' pixels are visited. NaN when the centre is
    NaN."""
    n = frames.shape[0]
    m = r_in.shape[0]
    for i in range(n):
        t = total[i] if total_given else _finite_sum(frames[i])
        total[i] = t
        cy = centres[i, 0]
        cx = centres[i, 1]
        if not (np.isfinite(cy) and np.isfinite(cx)):
            for j in range(m):
                sums[i, j] = np.nan
            continue
        for j in range(m):
            outer = t if not np.isfinite(r_out[j]) else _disc_sum(
                frames[i], cy, cx, centres_idx[i, 0], centres_idx[i, 1], r_out[j], py, px)
            inner = 0.0 if r_in[j] <= 0 else _disc_sum(
                frames[i], cy, cx, centres_idx[i, 0], centres_idx[i, 1], r_in[j], py, px)
            sums[i, j] = outer - inner


@njit(nogil=True, cache=True)
def _block_mean(frame, y0, x0, b, empty):
    """Mean of the finite pixels of the b x b block at (y0, x0) within the frame; ``empty`` when none."""
    s = np.float32(0)
    c = 0
    for y in range(max(y0, 0), min(y0 + b, frame.shape[0])):
        for x in range(max(x0, 0), min(x0 + b, frame.shape[1])):
            v = frame[y, x]
            if v == v:
                s += v
                c += 1
    return s / c if c > 0 else empty


@njit(nogil=True, cache=True)
def central_crops(frames, centres, half, b, out):
    """Crop of 2 half x 2 half px starting at round(c - half + 0.5), binned b x b (mean of the finite
    pixels, 0 where none or beyond the detector); all NaN when the centre is NaN."""
    for i in range(frames.shape[0]):
        cy = centres[i, 0]
        cx = centres[i, 1]
        if not (np.isfinite(cy) and np.isfinite(cx)):
            out[i] = np.nan
            continue
        y0 = int(math.floor(cy - half + 1.0))
        x0 = int(math.floor(cx - half + 1.0))
        for yb in range(out.shape[1]):
            for xb in range(out.shape[2]):
                out[i, yb, xb] = _block_mean(frames[i], y0 + yb * b, x0 + xb * b, b, np.float32(0))


@njit(nogil=True, cache=True)
def bin_means(frames, b, out):
    """b x b block means of the finite pixels (NaN where a block has none); out (n, ky//b, kx//b)."""
    for i in range(frames.shape[0]):
        for yb in range(out.shape[1]):
            for xb in range(out.shape[2]):
                out[i, yb, xb] = _block_mean(frames[i], yb * b, xb * b, b, _NAN32)


@njit(nogil=True, cache=True)
def _select(buf, m, k):
    """The k-th smallest of buf[:m] (0-based, no NaN), reordering buf[:m] so that the values before
    position k are no larger and those after it no smaller (quickselect). Each round moves the
    values below the median of three to the front, then those equal to it, each by a swap made
    whatever the comparison says (no branch to mispredict: 3-4x faster than Hoare's partition on
    the 50-120 values of a window's border or an edge's points, docs/performance.md session 30);
    repeated values, as counts are, end a round early."""
    lo = 0
    hi = m
    while hi - lo > 1:
        a = buf[lo]
        b = buf[(lo + hi) >> 1]
        c = buf[hi - 1]
        pivot = max(min(a, b), min(max(a, b), c))
        j = lo
        for i in range(lo, hi):  # [lo, j) < pivot <= [j, i)
            v = buf[i]
            buf[i] = buf[j]
            buf[j] = v
            j += v < pivot
        if k < j:
            hi = j
            continue
        e = j
        for i in range(j, hi):  # [j, e) == pivot < [e, i)
            v = buf[i]
            buf[i] = buf[e]
            buf[e] = v
            e += v <= pivot
        if k < e:
            return pivot
        lo = e
    return buf[lo]


@njit(nogil=True, cache=True)
def _compare_exchange_rows(buf, pairs):
    """Apply the comparators ``pairs`` (p, 2) (i < j: the smaller value to row i) to every column of
    buf (rows of values, one column per pixel) in turn: each comparator is one pass along two rows
    that vectorises, so many pixels are ordered at once (``selection_network``)."""
    for p in range(pairs.shape[0]):
        a = buf[pairs[p, 0]]
        b = buf[pairs[p, 1]]
        for x in range(a.shape[0]):
            u = a[x]
            w = b[x]
            a[x] = w if w < u else u
            b[x] = u if w < u else w


@njit(nogil=True, cache=True)
def pixel_statistics(sample, corr, dark, use_dark, saturation, pairs, y0, y1, median, mean, counted, all_nan):
    """Per pixel of detector rows y0:y1 of a sample of raw frames (m, ky, kx), corrected as
    ``correct_frames`` does on the way (corr, dark, use_dark, saturation: its arguments), NaN read
    as 0: the (upper) median over the frames (the (m // 2)-th smallest, as ``np.partition``), the
    mean, whether it is above 0 in any frame, and whether it is NaN in every frame (outputs
    (ky, kx), their rows y0:y1 written). pairs: ``selection_network(m, m // 2)``. No corrected copy
    of the sample is made: each detector row is corrected into a frame-major buffer (m, kx), which
    the network orders pixel by pixel, all the row's pixels at once; memory is one row whatever m."""
    m, ky, kx = sample.shape
    sat = np.float32(saturation)
    buf = np.empty((m, kx), np.float32)
    s = np.empty(kx, np.float64)
    nans = np.empty(kx, np.int64)
    pos = np.empty(kx, np.bool_)
    k = m // 2
    for y in range(y0, y1):
        s[:] = 0.0
        nans[:] = 0
        pos[:] = False
        for i in range(m):
            for x in range(kx):
                v = _corrected(sample[i, y, x], corr[y, x], dark[y, x], use_dark, sat)
                nans[x] += v != v
                v = np.float32(0) if v != v else v
                buf[i, x] = v
                s[x] += v
                pos[x] |= v > 0
        for x in range(kx):
            mean[y, x] = s[x] / m
            counted[y, x] = pos[x]
            all_nan[y, x] = nans[x] == m
        _compare_exchange_rows(buf, pairs)
        for x in range(kx):
            median[y, x] = buf[k, x]


@njit(nogil=True, cache=True)
def median_5x5(a, pairs, out):
    """Median of each pixel's 5x5 neighbourhood, the edges extended (scipy's median_filter, size 5,
    mode "nearest"). pairs: ``selection_network(25, 12)``: a row's 25 neighbourhoods are ordered
    at once, one vectorised pass per comparator."""
    ky, kx = a.shape
    pad = np.empty((ky, kx + 4), a.dtype)  # each row extended by its edge values, 2 px either side
    for y in range(ky):
        pad[y, 2:kx + 2] = a[y]
        pad[y, 0] = pad[y, 1] = a[y, 0]
        pad[y, kx + 2] = pad[y, kx + 3] = a[y, kx - 1]
    buf = np.empty((25, kx), a.dtype)
    for y in range(ky):
        n = 0
        for dy in range(-2, 3):
            yy = min(max(y + dy, 0), ky - 1)
            for dx in range(5):
                buf[n, :] = pad[yy, dx:dx + kx]
                n += 1
        _compare_exchange_rows(buf, pairs)
        out[y, :] = buf[12]
