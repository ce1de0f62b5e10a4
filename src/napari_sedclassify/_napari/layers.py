"""How scans travel through napari: the integrated-image layer carries the Scan in its metadata."""

from __future__ import annotations

SCAN_KEY = "sedclassify_scan"
FILE_STAT_KEY = "sedclassify_file_stat"  # (path, size, mtime_ns) of the scan's file when it was opened


def file_stat(source):
    """(path, size, mtime_ns) of the file ``source`` names, or None (not a plain file)."""
    import os

    try:
        if not source or not os.path.isfile(str(source)):
            return None
        st = os.stat(str(source))
    except (OSError, TypeError, ValueError):
        return None
    return (str(source), st.st_size, st.st_mtime_ns)


def changed_on_disk(layer) -> str:
    """A sentence saying that the file of the scan of ``layer`` changed on disk since it was opened
    (and to open it again), or "" when it did not (or is not known)."""
    opened = None if layer is None else layer.metadata.get(FILE_STAT_KEY)
    if opened is None:
        return ""
    path = opened[0]
    now = file_stat(path)
    if now == opened:
        return ""
    from pathlib import Path

    how = "is gone" if now is None else "changed on disk"
    return f"the file {Path(path).name} {how} since the scan was opened: open it again (File > Open)"


def with_file_note(layer, exc):
    """``exc``, or for a scan whose file changed on disk since it was opened, an error of the same
    kind (a ValueError or OSError) whose message also says so and to open the file again."""
    note = changed_on_disk(layer)
    if not note:
        return exc
    text = f"{exc}; {note}"
    try:
        return type(exc)(text)
    except Exception:  # an exception class with another signature
        return ValueError(text)


def scan_layer_name(source) -> str:
    """A layer name for a scan file: its name without the folder and the format's ending
    ("/data/scan_A.npy" -> "scan_A", "run.zarr/" -> "run")."""
    if not source:
        return "scan"
    from pathlib import PurePath

    path = PurePath(str(source).rstrip("/\\"))
    return path.stem if path.suffix and path.stem else path.name or "scan"


def scan_layer_data(scan, image, name: str | None = None):
    """LayerData tuple for the integrated image of ``scan`` in scan space (nm scale when known)."""
    step = scan.geometry.scan_step_nm
    kwargs = {
        "name": name or scan_layer_name(scan.source),
        "metadata": {SCAN_KEY: scan, FILE_STAT_KEY: file_stat(getattr(scan, "source", None))},
        "colormap": "gray",
    }
    if step:
        kwargs["scale"] = (step, step)
        kwargs["units"] = ("nm", "nm")
    return (image, kwargs, "image")


def find_scan(layer):
    """The Scan a layer carries, or None."""
    if layer is None:
        return None
    return layer.metadata.get(SCAN_KEY)


def scan_layers(viewer):
    """All layers in ``viewer`` that carry a Scan."""
    return [layer for layer in viewer.layers if find_scan(layer) is not None]
