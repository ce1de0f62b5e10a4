"""Flat-field (gain) correction and the bad-pixel mask.

A flat-field acquisition (a stack of flood frames, uniform illumination) gives each pixel's
response; the gain map is that response normalised to mean 1 over the good pixels. Correction
divides by it. Dead pixels (no or very low response) and hot pixels (far above the others) go
into the mask; masked pixels are excluded from every result (NaN in corrected frames), never
filled with zeros.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .cores import usable_cores
from .stats import median


def _robust_sigma(x: np.ndarray) -> float:
    med = median(x)
    return float(1.4826 * median(np.abs(x - med)))


@dataclass
class FlatField:
    """gain: (ky, kx) float32 response, mean 1 over unmasked pixels (NaN where masked).
    mask: (ky, kx) bool, True = excluded (dead, hot). dark: optional (ky, kx) float32 subtracted
    before the gain. source: file it came from, if any. n_dead / n_hot: what the mask holds.
    saturation: raw counts at which the counter is full (None = never); saturated pixels are not
    gain-corrected (a full counter reads the same whatever the gain)."""

    gain: np.ndarray
    mask: np.ndarray
    dark: np.ndarray | None = None
    source: str | None = None
    n_dead: int = 0
    n_hot: int = 0
    saturation: float | None = None

    def __post_init__(self):
        self.gain = np.asarray(self.gain, dtype=np.float32)
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.gain.ndim != 2 or self.mask.shape != self.gain.shape:
            raise ValueError(f"flat-field: gain {self.gain.shape} and mask {self.mask.shape} must be one 2D shape")
        if self.dark is not None:
            self.dark = np.asarray(self.dark, dtype=np.float32)
            if self.dark.shape != self.gain.shape:
                raise ValueError(f"flat-field: dark frame {self.dark.shape} does not match gain {self.gain.shape}")

    def __str__(self) -> str:
        """Where it came from (a provenance names the flat-field so)."""
        return self.source or f"flat-field {self.shape[0]}x{self.shape[1]} px"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.gain.shape)

    @classmethod
    def from_flood(cls, flood, dark=None, *, bad_pixels=None, dead_fraction: float = 0.1, hot_sigma: float = 12.0,
                   hot_ratio: float = 10.0, source: str | None = None) -> "FlatField":
        """Gain map and mask from a flood stack (N, ky, kx) (or one flood frame (ky, kx)).

        Dead: response < dead_fraction of the median, or no finite value in any frame (a NaN in
        some frames only leaves the mean of the others). Hot: response > median + hot_sigma robust
        sigmas AND > hot_ratio x median (wide chip-edge pixels, up to ~6x the area at the quad's
        centre, stay: the gain corrects them). bad_pixels: (ky, kx) bool the detector itself marks
        bad (a DECTRIS pixel_mask): dead whatever they read. The stack is streamed frame by frame
        (float64 sums), never copied whole.
        """
        flood = flood if hasattr(flood, "shape") else np.asarray(flood)
        if len(flood.shape) == 2:
            flood = flood[None]
        if len(flood.shape) == 4 and hasattr(flood, "blocks"):  # a scan's frames, read block by block
            blocks = (flood[rows, cols] for _, rows, cols in flood.blocks())
            n = flood.shape[0] * flood.shape[1]
        elif len(flood.shape) != 3 or flood.shape[0] == 0:
            raise ValueError(f"flat-field: expected a flood stack (N, ky, kx), got shape {tuple(flood.shape)}")
        else:
            blocks = (flood[i] for i in range(flood.shape[0]))
            n = flood.shape[0]
        mean = _finite_mean(blocks, tuple(flood.shape[-2:]))
        if dark is not None:
            dark = np.asarray(dark, dtype=np.float64)
            if dark.shape != mean.shape:
                raise ValueError(f"flat-field: dark frame {dark.shape} does not match the flood {mean.shape}")
            mean = mean - dark
        if bad_pixels is not None:
            mean = np.where(bad_pixels, np.nan, mean)
        _check_flat(mean, n)
        return cls.from_response(mean, dark=dark, dead_fraction=dead_fraction, hot_sigma=hot_sigma,
                                 hot_ratio=hot_ratio, source=source)

    @classmethod
    def from_response(cls, response, dark=None, *, dead_fraction: float = 0.1, hot_sigma: float = 12.0,
                      hot_ratio: float = 10.0, source: str | None = None) -> "FlatField":
        """From a 2D per-pixel response (mean flood, or a gain map): mask, then normalise to mean 1."""
        resp = np.asarray(response, dtype=np.float64)
        if resp.ndim != 2:
            raise ValueError(f"flat-field: expected a 2D gain map, got shape {resp.shape}")
        finite = np.isfinite(resp)
        if not finite.any() or not (resp[finite] > 0).any():
            raise ValueError("flat-field: no positive response in any pixel (every one reads 0 or less, or nothing): "
                             "not a flood or gain map")
        med = float(median(resp[finite & (resp > 0)]))
        dead = ~finite | (resp < dead_fraction * med)
        live = resp[~dead]
        sigma = _robust_sigma(live)
        hot = ~dead & (resp > med + hot_sigma * sigma) & (resp > hot_ratio * med)
        mask = dead | hot
        gain = np.where(mask, np.nan, resp)
        gain = gain / np.nanmean(gain)
        return cls(gain.astype(np.float32), mask, dark=dark, source=source,
                   n_dead=int(dead.sum()), n_hot=int(hot.sum()))

    @classmethod
    def identity(cls, detector_shape) -> "FlatField":
        """No correction, nothing masked."""
        return cls(np.ones(detector_shape, np.float32), np.zeros(detector_shape, bool))

    def with_mask(self, extra) -> "FlatField":
        """The same correction with more pixels masked (extra: (ky, kx) bool)."""
        extra = np.asarray(extra, dtype=bool)
        if extra.shape != self.shape:
            raise ValueError(f"mask {extra.shape} does not match the detector {self.shape}")
        mask = self.mask | extra
        return replace(self, gain=np.where(mask, np.nan, self.gain), mask=mask)

    def with_saturation(self, saturation: float | None) -> "FlatField":
        """The same correction with this saturation level (raw counts)."""
        return replace(self, saturation=saturation)

    @property
    def saturation_level(self) -> float:
        return np.inf if self.saturation is None else float(self.saturation)

    def correction(self) -> np.ndarray:
        """Multiplier per pixel (float32): 1/gain, NaN where masked."""
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(self.mask, np.nan, 1.0 / self.gain.astype(np.float64))
        return c.astype(np.float32)

    def kernel_args(self) -> tuple:
        """(correction, dark, use_dark, saturation level): the kernel ``correct_frames``'s arguments."""
        dark = self.dark if self.dark is not None else np.zeros(self.shape, np.float32)
        return self.correction(), dark, self.dark is not None, self.saturation_level

    def apply(self, frames) -> np.ndarray:
        """Gain-corrected float32 copy of frames (..., ky, kx); masked and non-finite pixels NaN."""
        from .kernels import correct_frames

        frames = np.asarray(frames)
        if frames.shape[-2:] != self.shape:
            raise ValueError(f"frames {frames.shape[-2:]} do not match the flat-field {self.shape}")
        stack = native(frames.reshape((-1,) + self.shape))
        out = np.empty(stack.shape, np.float32)
        correct_frames(stack, *self.kernel_args(), out, np.empty(stack.shape[0]))  # (and the frames' totals)
        return out.reshape(frames.shape)


def _finite_mean(blocks, frame_shape) -> np.ndarray:
    """Per pixel, the mean of its finite values over blocks of frames (..., ky, kx); NaN where none is."""
    total = np.zeros(frame_shape, np.float64)
    counted = np.zeros(frame_shape, np.int64)
    for block in blocks:
        block = np.asarray(block)
        frames = block.reshape((-1,) + frame_shape)
        if block.dtype.kind == "f":
            finite = np.isfinite(frames)
            total += np.where(finite, frames, 0.0).sum(axis=0, dtype=np.float64)
            counted += finite.sum(axis=0)
        else:
            total += frames.sum(axis=0, dtype=np.float64)
            counted += frames.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counted > 0, total / counted, np.nan)


def _mean_5x5(a: np.ndarray) -> np.ndarray:
    """Mean of each pixel's 5x5 neighbourhood, edges mirrored (scipy's uniform_filter, size 5)."""
    c = np.pad(np.asarray(a, np.float64), 2, mode="symmetric").cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    return (c[5:, 5:] - c[:-5, 5:] - c[5:, :-5] + c[:-5, :-5]) / 25.0


#: A flood lights the detector evenly: no compact spot of its mean frame (a pixel with three or
#: more of its four neighbours as bright; hot pixels stand alone, and the wide pixels of a Medipix
#: quad's cross collect 2.5-6.25x) stands this many times above its median. Diffraction frames (a
#: direct beam) stand hundreds of times above it.
FLOOD_PEAK_LIMIT = 8.0


def _check_flat(mean: np.ndarray, n: int) -> None:
    """Raise ValueError when a flood's mean frame has a compact bright spot (a direct beam): frames
    of a diffraction scan given as the flat-field would turn every frame's beam into a hole."""
    finite = np.isfinite(mean) & (mean > 0)
    if not finite.any():
        return
    level = float(median(mean[finite]))
    bright = finite & (mean > FLOOD_PEAK_LIMIT * level)
    if level <= 0 or bright.sum() < 5:
        return
    around = np.zeros(mean.shape, np.int8)
    around[1:] += bright[:-1]
    around[:-1] += bright[1:]
    around[:, 1:] += bright[:, :-1]
    around[:, :-1] += bright[:, 1:]
    core = bright & (around >= 3)
    if core.sum() < 5:
        return
    y, x = np.unravel_index(np.argmax(np.where(core, mean, -np.inf)), mean.shape)
    raise ValueError(f"not a flood: the mean of its {n} frame(s) rises to {mean[y, x] / level:.0f} times its median "
                     f"around pixel ({y}, {x}), as a direct beam does (a flood lights the detector evenly; a spot "
                     f"at most {FLOOD_PEAK_LIMIT:g} times is accepted): give the flood recorded for this detector, "
                     "not the frames of a diffraction scan")


def native(a: np.ndarray) -> np.ndarray:
    """a in a dtype the kernels take (native byte order; bool and exotic types as float32)."""
    a = np.asarray(a)
    if a.dtype.kind not in "uif" or a.dtype.itemsize > 8 or a.dtype == np.float16:
        return a.astype(np.float32)
    if not a.dtype.isnative:
        return a.astype(a.dtype.newbyteorder("="))
    return a


#: io modules that read a flat-field themselves (``read_flatfield``: 2D images, no scan-shape note,
#: errors that name ``--flatfield-dataset``); other formats are read as scans, their frames the flood.
_FLATFIELD_READERS = ("hdf5", "tiff", "mat", "zarr_store")
#: Formats that hold several arrays (a flat-field's ``dataset`` picks one).
FORMATS_WITH_DATASETS = ("hdf5", "mat", "zarr_store")


def load_flatfield(path, dark=None, *, dataset: str | None = None, **kwargs) -> FlatField:
    """Flat-field from a file: a flood stack (N, ky, kx), one flood image or a 2D gain map.

    Reads anything ``np.load`` reads (.npy, .npz with one array) or
    ``napari_sedclassify.io.open_scan`` opens (its frames are the flood stack), and 2D images in
    HDF5 and TIFF files. A 2D image is the detector's response (a flood image of counts, or a gain
    map normalised to 1: pixels that count more are divided more), except a DECTRIS master file's
    ``detectorSpecific/flatfield``, the factors the detector multiplies counts by, whose inverse is
    the response; the pixels a DECTRIS ``pixel_mask`` marks bad (nonzero) are masked. dataset: the
    array to read in a file that holds several (HDF5, MATLAB, zarr; CLI ``--flatfield-dataset``);
    a file with several candidates and none chosen is refused, naming them. dark: optional dark
    frame (array or path of the same kinds, averaged when a stack). kwargs: see
    ``FlatField.from_flood``.
    """
    path = Path(path)
    stack, bad = _read_flatfield_file(path, dataset)
    if dark is not None and not hasattr(dark, "shape"):
        d, _ = _read_flatfield_file(Path(dark))
        dark = np.mean(np.asarray(d, dtype=np.float64).reshape((-1,) + d.shape[-2:]), axis=0)
    source = str(path) if dataset is None else f"{path}:/{str(dataset).strip('/')}"
    try:
        return FlatField.from_flood(stack, dark=dark, bad_pixels=bad, source=source, **kwargs)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc


def flatfield_datasets(path) -> list[tuple[str, tuple]]:
    """(name, shape) of each array a flat-field file could be read from, for the formats that may
    hold several (HDF5, DECTRIS master files included; MATLAB; zarr), as
    ``load_flatfield(path, dataset=name)`` takes them; [] for other files. Reads headers only (a
    MATLAB v5 file whole). Raises OSError or ValueError when the file cannot be read."""
    import importlib

    from ..io import format_of

    fmt = format_of(Path(path))
    if fmt not in FORMATS_WITH_DATASETS:
        return []
    return importlib.import_module(f"..io.{fmt}", __package__).flatfield_datasets(path)


def _read_flatfield_file(path: Path, dataset: str | None = None):
    """(flood stack or 2D image, bad pixels the file marks or None) of a flat-field file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        import importlib

        from ..io import format_of, open_scan, reading_flatfield

        fmt = format_of(path)
        if dataset is not None and fmt not in FORMATS_WITH_DATASETS:
            raise ValueError(f"{path}: a flat-field dataset applies to HDF5, MATLAB and zarr files, not to "
                             f"{suffix or fmt} files")
        if fmt not in _FLATFIELD_READERS:
            with reading_flatfield():  # a flood stack has no scan shape: no note about one
                return open_scan(path).frame_source, None  # the file's frames, read block by block
        reader = importlib.import_module(f"..io.{fmt}", __package__)
        found = reader.read_flatfield(path, dataset) if fmt in FORMATS_WITH_DATASETS else reader.read_flatfield(path)
        return found.frames, found.bad_pixels
    if dataset is not None:
        raise ValueError(f"{path}: a flat-field dataset applies to HDF5, MATLAB and zarr files, not to {suffix} files")
    with open(path, "rb") as f:
        head = f.read(8)
    signature = b"\x93NUMPY" if suffix == ".npy" else b"PK"
    if not head.startswith(signature):  # else np.load would try pickle and talk of allow_pickle
        raise ValueError(f"{path}: not a NumPy {suffix} file (it begins with {head!r}, not the {suffix} "
                         "signature; a text file renamed?)")
    try:
        arr = np.load(path, mmap_mode="r" if suffix == ".npy" else None, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable NumPy file ({exc})") from exc
    if suffix == ".npz":
        if len(arr.files) != 1:
            raise ValueError(f"{path}: an .npz flat-field must hold one array, it holds {arr.files}")
        arr = arr[arr.files[0]]
    if arr.ndim == 4:
        arr = arr.reshape((-1,) + arr.shape[-2:])
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: a flat-field must be 2D (gain map) or 3D (flood stack), got shape {arr.shape}")
    return arr, None


def binning_note(flatfield_shape, detector_shape) -> str:
    """For the error of a flat-field whose shape is not the detector's: the binning that relates
    the two (": the flat-field is the detector binned 2x2 ..."), or "" when none does."""
    (fy, fx), (dy, dx) = (tuple(int(v) for v in flatfield_shape), tuple(int(v) for v in detector_shape))
    if fy < dy and dy % fy == 0 and dx % fx == 0 and dy // fy == dx // fx:
        b = dy // fy
        return (f": the flat-field is the detector binned {b}x{b}, which cannot correct single pixels "
                f"(record the flood unbinned, as the scan)")
    if fy > dy and fy % dy == 0 and fx % dx == 0 and fy // dy == fx // dx:
        b = fy // dy
        return (f": the scan's frames are binned {b}x{b} (record the flood with the same binning, or sum "
                f"its frames over {b}x{b} pixels)")
    return ""


def detect_bad_pixels(sample, hot_ratio: float = 5.0, min_sigma: float = 6.0,
                      flatfield: "FlatField | None" = None, beam_path: np.ndarray | None = None) -> np.ndarray:
    """Hot and dead pixels seen in a sample of frames (m, ky, kx): gain-corrected frames (NaN =
    masked), or raw frames with the ``flatfield`` that corrects them (applied pixel by pixel on the
    way, without a corrected copy of the sample).

    The temporal median removes what moves (Bragg spots of single frames); a pixel is hot when
    that median exceeds hot_ratio x the median of its 5x5 neighbours by more than min_sigma
    Poisson sigmas, dead when it reads 0 in every frame while its neighbours' median expects more
    than min_sigma counts in the sample. The direct beam moves too little over the first frames
    of a scan (a few px along a row; nothing with a descanned beam) for the median to remove it,
    and a small beam's core stands far above its 5x5 neighbourhood: ``beam_path`` (ky, kx) bool,
    the pixels the beam covered in the sample (see ``plan.beam_path``), are never called hot.
    Returns (ky, kx) bool.
    """
    from .kernels import median_5x5, pixel_statistics
    from .selection import selection_network

    sample = native(np.asarray(sample))
    m, ky, kx = sample.shape
    if flatfield is None:
        flatfield = FlatField.identity((ky, kx))
    elif flatfield.shape != (ky, kx):
        raise ValueError(f"frames {(ky, kx)} do not match the flat-field {flatfield.shape}")
    correction = flatfield.kernel_args()
    med = np.empty((ky, kx), np.float32)  # (upper) median per pixel over the sample
    mean = np.empty((ky, kx), np.float32)
    counted = np.empty((ky, kx), bool)
    masked = np.empty((ky, kx), bool)
    parts = np.array_split(np.arange(ky), max(1, min(usable_cores(), ky // 16)))
    frames_network, window_network = selection_network(m, m // 2), selection_network(25, 12)

    def rows(r):  # the whole sample and a range of rows: the kernel reads the frames contiguously
        pixel_statistics(sample, *correction, frames_network, int(r[0]), int(r[-1]) + 1, med, mean, counted, masked)

    local = np.empty_like(med)

    def local_rows(r):  # each band with the 2 rows either side its 5x5 windows reach
        lo, hi = r[0], r[-1] + 1
        a, b = max(0, lo - 2), min(ky, hi + 2)
        band = np.empty((b - a, kx), np.float32)
        median_5x5(med[a:b], window_network, band)
        local[lo:hi] = band[lo - a: hi - a]

    with ThreadPoolExecutor(len(parts)) as pool:  # the kernels release the GIL: rows in parallel
        list(pool.map(rows, [p for p in parts if p.size]))
        list(pool.map(local_rows, [p for p in parts if p.size]))
    hot = (med > hot_ratio * np.maximum(local, 1e-3)) & (med - local > min_sigma * np.sqrt(np.maximum(local, 1.0)))
    if beam_path is not None:
        hot &= ~np.asarray(beam_path, bool)
    never = ~counted  # 0 (or NaN) in every frame
    mean_local = _mean_5x5(mean)
    dead = never & (mean_local * m > min_sigma**2)
    return (hot | dead) & ~masked
