"""TIFF stacks: one multi-page TIFF (pages = frames), or a folder of single-frame TIFF files.

Uncompressed files are memory-mapped; compressed ones are decoded page by page, only the
frames a chunk needs. A series with two leading axes (an ImageJ hyperstack) gives the scan
shape; frames are in row-major scan order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ScanFormatError
from ..geometry import Geometry
from ..scan import Scan
from ._lazy import FrameSource, check_pixel_dtype, file_token, grid_frames, natural_key, to_native

_TIFF = (".tif", ".tiff")


def tiff_files(folder) -> list[Path]:
    """The TIFF files of a folder in natural order (frame_2 before frame_10)."""
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in _TIFF and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


def _series(path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return tuple(series.shape), series.axes, series.dtype


def probe(path) -> bool:
    path = Path(path)
    if path.is_dir():
        files = tiff_files(path)
        if len(files) < 2:
            return False
        (first, _, dtype), (last, _, dtype_last) = _series(files[0]), _series(files[-1])
        return len(first) == 2 and first == last and dtype == dtype_last
    shape, axes, _ = _series(path)
    return len(shape) >= 3 and axes.endswith("YX") and "S" not in axes


class TiffFrames(FrameSource):
    """Pages of a multi-page TIFF as frames."""

    def _open(self):
        import tifffile

        try:
            return tifffile.memmap(self.path, mode="r").reshape((self.n_frames,) + self.frame_shape)
        except ValueError:  # compressed or scattered pages: decode on demand
            return tifffile.TiffFile(self.path)

    def _read(self, handle, start, stop):
        if isinstance(handle, np.ndarray):
            return to_native(handle[start:stop])
        block = handle.asarray(key=range(start, stop), series=0)
        return to_native(block.reshape((stop - start,) + self.frame_shape))


class TiffFolderFrames(FrameSource):
    """One frame per TIFF file of a folder."""

    def __init__(self, files, frame_shape, dtype, path):
        super().__init__(path, len(files), frame_shape, dtype)
        self.files = [str(f) for f in files]

    def _open(self):
        import tifffile

        return tifffile.imread

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
            shape, axes, dtype = _series(path)
            if len(shape) < 3 or not axes.endswith("YX") or "S" in axes:
                raise ScanFormatError(f"{path}: not a stack of frames (TIFF series {shape}, axes {axes})")
            if len(shape) == 4:
                hint = (shape[:2], f"TIFF series axes {axes}")
            source = TiffFrames(path, int(np.prod(shape[:-2])), shape[-2:], check_pixel_dtype(dtype, path))
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
