"""Shared fixtures. napari's ``make_napari_viewer`` comes from napari's pytest plugin; pytest-xvfb
provides the X server so the viewer really draws."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture
def realdata():
    """Path to ../shared/realdata; skips with a reason when it is not beside the repository."""
    if not REALDATA.is_dir():
        pytest.skip(f"real detector files not found at {REALDATA}")
    return REALDATA


@pytest.fixture
def disk_scan():
    """A tiny 4x5 scan, 64x64 detector: Poisson direct beam that drifts, brighter in the left half."""
    from napari_sedclassify import Geometry, Scan

    rng = np.random.default_rng(0)
    sy, sx, k = 4, 5, 64
    yy, xx = np.mgrid[:k, :k]
    data = np.empty((sy, sx, k, k), dtype=np.uint16)
    for iy in range(sy):
        for ix in range(sx):
            cy, cx = 31.5 + 0.5 * iy, 31.5 + 0.5 * ix
            beam = 200.0 * ((yy - cy) ** 2 + (xx - cx) ** 2 < 16)
            bg = 5.0 if ix < 2 else 2.0
            data[iy, ix] = rng.poisson(beam + bg)
    return Scan(data, Geometry(detector_shape=(k, k), scan_step_nm=30.0), source="disk_scan")


@pytest.fixture
def notifications():
    """Messages of the napari notifications shown during a test."""
    from napari.utils.notifications import notification_manager

    seen = []

    def keep(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


@pytest.fixture(autouse=True)
def _no_spare_children_left():
    """Spare worker processes a test started (``tf_process.prestart``) end with the test."""
    yield
    from napari_sedclassify.models.tf_process import stop_spares

    stop_spares()


@pytest.fixture(scope="session")
def stage_files(tmp_path_factory):
    """Scans, a CNN and an FCNN for the model-stage progress tests (tests/stage_helpers.py), made
    once for the engine's and napari's tests."""
    from stage_helpers import make_stage_files

    return make_stage_files(tmp_path_factory.mktemp("stages"))
