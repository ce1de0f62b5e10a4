"""Simulator of holey-carbon / vitreous-ice narrow-beam diffraction scans (Medipix3 quad, 200 kV).

``simulate_scan`` draws one scan (in memory or streamed to a .npy file with its ground truth),
``simulate_flatfield`` a session's flat-field acquisition, ``simulate_dataset`` / ``demo_dataset``
sets of scans, ``simulate_session_grid`` scans over a grid of sessions, and ``sample_scan`` the
small scan behind napari's sample data.
See docs/simulation.md for the model.
"""

from .dataset import demo_dataset, load_dataset, sample_scan, simulate_dataset
from .grid import GRID_AXES, session_grid, simulate_session_grid
from .params import MATERIALS, SessionParams, SimParams, session_params
from .simulation import SimulatedScan, load_simulated, simulate_flatfield, simulate_scan

__all__ = [
    "GRID_AXES", "MATERIALS", "SessionParams", "SimParams", "SimulatedScan", "demo_dataset", "load_dataset",
    "load_simulated", "sample_scan", "session_grid", "session_params", "simulate_dataset", "simulate_flatfield",
    "simulate_scan", "simulate_session_grid"
]
