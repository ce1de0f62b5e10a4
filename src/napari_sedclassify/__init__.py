"""napari-sedclassify: classify narrow-beam electron diffraction scans.

Kept light on purpose: importing the package imports neither napari, Qt, TensorFlow nor
scikit-learn, nor numpy until ``Geometry`` or ``Scan`` is asked for (so the ``sedclassify``
command catches a Ctrl-C from its first instant). The engine lives in submodules (``io``,
``processing``, ``models``, ``simulate``, ``pipeline``); the napari layer lives in ``_napari``.
"""

__version__ = "0.1.0"

__all__ = ["Geometry", "Scan", "__version__"]


def __getattr__(name):
    if name == "Geometry":
        from .geometry import Geometry

        return Geometry
    if name == "Scan":
        from .scan import Scan

        return Scan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
