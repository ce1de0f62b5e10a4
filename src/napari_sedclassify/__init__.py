"""napari-sedclassify: classify narrow-beam electron diffraction scans.

Kept light on purpose: importing the package imports neither napari, Qt, TensorFlow nor
scikit-learn. The engine lives in submodules (``io``, ``processing``, ``models``,
``simulate``, ``pipeline``); the napari layer lives in ``_napari``.
"""

__version__ = "0.1.0"

from .geometry import Geometry
from .scan import Scan

__all__ = ["Geometry", "Scan", "__version__"]
