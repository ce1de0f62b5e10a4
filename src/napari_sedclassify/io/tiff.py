"""TIFF stacks: one multi-page TIFF (pages = frames), or a folder of single-frame TIFF files.

Uncompressed files are memory-mapped; compressed ones are decoded page by page, only the
frames a chunk needs, each reading thread with its own file handle. A series with two leading
axes (an ImageJ hyperstack) gives the scan shape; frames are in row-major scan order. A file
written one page at a time (tifffile records a one-page series per page, or several series)
reads all its pages, when they have the same shape and dtype, as the frames.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import numpy as np

from ..errors import ScanFormatError
from ..geometry import Geometry
from ..scan import Scan
from ._lazy import (FlatFieldFile, FrameSource, check_pixel_dtype, file_token, grid_frames, natural_key,
                    reading_flatfield, to_native)

_TIFF = (".tif", ".tiff")


def tiff_files(folder) -> list[Path]:
    """The TIFF files of a folder in natural order (frame_2 before frame_10)."""
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in _TIFF and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


_quiet = threading.local()


class _QuietFilter(logging.Filter):
    """Drops tifffile's log records in a thread that is inside :func:`_quiet_tifffile`."""

    def filter(self, record):
        return not getattr(_quiet, "depth", 0)


logging.getLogger("tifffile").addFilter(_QuietFilter())


@contextlib.contextmanager
def _quiet_tifffile():
    """tifffile logs what it finds wrong in a file (``invalid offset to first page``) besides
    raising; the error this package raises says it, on one line, so that log line is dropped
    (in this thread only)."""
    _quiet.depth = getattr(_quiet, "depth", 0) + 1
    try:
        yield
    finally:
        _quiet.depth -= 1


def _tiff_file(path):
    import tifffile

    with _quiet_tifffile():
        return tifffile.TiffFile(path)


def _series(path):
    with _tiff_file(path) as tif, _quiet_tifffile():
        series = tif.series[0]
        return tuple(series.shape), series.axes, series.dtype


def _layout(path):
    """(shape, axes, dtype, series) of the frames of a multi-page TIFF: those of its first series
    (series 0), or, for a file written one page at a time (its first series one 2D page of several,
    or several series), all its pages, when they are 2D and of one shape and dtype (series None,
    shape (n_pages, y, x))."""
    with _tiff_file(path) as tif, _quiet_tifffile():
        first = tif.series[0]
        shape, axes, dtype = tuple(first.shape), first.axes, first.dtype
        if not (len(tif.series) > 1 or (len(shape) == 2 and len(tif.pages) > 1)):
            return shape, axes, dtype, 0
        page0 = tif.pages.first
        for i, page in enumerate(tif.pages):
            if page.shape != page0.shape or page.dtype != page0.dtype or len(page.shape) != 2:
                if len(shape) >= 3:  # a stack with extra pages (a preview...): its first series
                    return shape, axes, dtype, 0
                raise ScanFormatError(f"{path}: not a stack of frames: page {i} is {_page(page)}, "
                                      f"page 0 {_page(page0)}")
        return (len(tif.pages),) + tuple(page0.shape), "I" + page0.axes, page0.dtype, None


def _page(page) -> str:
    return f"{'x'.join(map(str, page.shape))} {page.dtype}" + (f" ({page.axes})" if len(page.shape) != 2 else "")


def probe(path) -> bool:
    path = Path(path)
    if path.is_dir():
        files = tiff_files(path)
        if len(files) < 2:
            return False
        (first, _, dtype), (last, _, dtype_last) = _series(files[0]), _series(files[-1])
        return len(first) == 2 and first == last and dtype == dtype_last
    shape, axes, _, _ = _layout(path)
    return len(shape) >= 3 and axes.endswith("YX") and "S" not in axes


class _ThreadHandles:
    """One open TiffFile per reading thread: a TiffFile keeps a file position and page state that
    concurrent reads would garble (zlib "incorrect header check" on a compressed stack)."""

    def __init__(self, path):
        self.path = path
        self._local = threading.local()

    def get(self):
        tif = getattr(self._local, "tif", None)
        if tif is None:
            tif = self._local.tif = _tiff_file(self.path)
        return tif


class TiffFrames(FrameSource):
    """Pages of a multi-page TIFF as frames: those of its first series (series 0) or all its pages
    (series None)."""

    def __init__(self, path, n_frames, frame_shape, dtype, series=0):
        super().__init__(path, n_frames, frame_shape, dtype)
        self.series = series

    def _open(self):
        import tifffile

        if self.series == 0:
            try:
                return tifffile.memmap(self.path, mode="r").reshape((self.n_frames,) + self.frame_shape)
            except ValueError:  # compressed or scattered pages: decode on demand
                pass
        return _ThreadHandles(self.path)

    def _read(self, handle, start, stop):
        if isinstance(handle, np.ndarray):
            return to_native(handle[start:stop])
        tif = handle.get()
        try:
            block = self._decode(tif, range(start, stop))
        except MemoryError:
            raise
        except Exception:  # zlib.error, TiffFileError, ValueError...: the frame that fails
            bad = start
            for bad in range(start, stop):
                try:
                    self._decode(tif, range(bad, bad + 1))
                except Exception as one:
                    exc = one
                    break
            why = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise ScanFormatError(f"{self.path}: cannot decode frame {bad} ({why})") from exc
        return to_native(block.reshape((stop - start,) + self.frame_shape))

    def _decode(self, tif, key):
        with _quiet_tifffile():
            return tif.asarray(key=key, series=self.series, maxworkers=1)


class TiffFolderFrames(FrameSource):
    """One frame per TIFF file of a folder."""

    def __init__(self, files, frame_shape, dtype, path):
        super().__init__(path, len(files), frame_shape, dtype)
        self.files = [str(f) for f in files]

    def _open(self):
        import tifffile

        def imread(path):
            with _quiet_tifffile():
                return tifffile.imread(path)

        return imread

    def _read(self, imread, start, stop):
        out = np.empty((stop - start,) + self.frame_shape, dtype=self.dtype)
        for i in range(start, stop):
            frame = imread(self.files[i])
            if frame.shape != self.frame_shape:
                raise ScanFormatError(f"{self.files[i]}: frame {frame.shape} differs from {self.frame_shape} of the first file")
            out[i - start] = frame
        return out


def read(path, scan_shape=None, *, missing_at="end", chunk_frames=None) -> Scan:
    """Open a multi-page TIFF or a folder of TIFF frames lazily as a Scan."""
    path = Path(path)
    hint = None
    try:
        if path.is_dir():
            files = tiff_files(path)
            if not files:
                raise ScanFormatError(f"{path}: a directory that is not a scan (no TIFF files in it)")
            frame_shape, axes, dtype = _series(files[0])
            if len(frame_shape) != 2:
                raise ScanFormatError(f"{files[0]}: expected one 2D frame per file, got shape {frame_shape}")
            source = TiffFolderFrames(files, frame_shape, check_pixel_dtype(dtype, path), path)
            token = file_token(files[-1])
        else:
            shape, axes, dtype, series = _layout(path)
            if len(shape) < 3 or not axes.endswith("YX") or "S" in axes:
                raise ScanFormatError(f"{path}: not a stack of frames (TIFF series {shape}, axes {axes})")
            if len(shape) == 4:
                hint = (shape[:2], f"TIFF series axes {axes}")
            source = TiffFrames(path, int(np.prod(shape[:-2])), shape[-2:], check_pixel_dtype(dtype, path), series)
            token = file_token(path)
    except ScanFormatError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error...
        raise ScanFormatError(f"{path}: corrupted header: not a readable TIFF ({exc})") from exc
    data, missing, how = grid_frames(source, path, scan_shape, hint=hint, missing_at=missing_at,
                                     chunk_frames=chunk_frames, name=f"tiff-{token}")
    metadata = {"format": "TIFF stack", "dtype_on_disk": np.dtype(dtype).str, "n_frames_in_file": source.n_frames,
                "scan_shape_from": how}
    return Scan(data, Geometry(detector_shape=source.frame_shape), missing=missing, metadata=metadata, source=str(path))


def read_flatfield(path) -> FlatFieldFile:
    """The flat-field in a TIFF file: one 2D page (a flood image, or a gain map such as a float32
    response) or a stack of flood frames (a multi-page file, a folder of frames)."""
    path = Path(path)
    if path.is_file():
        try:
            shape, _, dtype, _ = _layout(path)
            if len(shape) == 2:
                import tifffile

                check_pixel_dtype(dtype, path)
                with _quiet_tifffile():
                    return FlatFieldFile(tifffile.imread(path))
        except ScanFormatError:
            raise
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error...
            raise ScanFormatError(f"{path}: corrupted header: not a readable TIFF ({exc})") from exc
    with reading_flatfield():
        return FlatFieldFile(read(path).frame_source)
