"""How scans travel through napari: the integrated-image layer carries the Scan in its metadata."""

from __future__ import annotations

SCAN_KEY = "sedclassify_scan"


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
        "metadata": {SCAN_KEY: scan},
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
