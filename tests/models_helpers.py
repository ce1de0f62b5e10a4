"""Tiny simulated scans for the model tests (16x16 points, 128x128 px detector): physically the
same simulator as the demo, small enough to simulate, preprocess and train in seconds."""

from __future__ import annotations

import numpy as np

SCAN_SHAPE = (16, 16)
DETECTOR_PX = 128


def tiny_simulated(seeds, session="A"):
    """In-memory SimulatedScans of one session."""
    from napari_sedclassify.simulate import simulate_scan

    return [simulate_scan(None, scan_shape=SCAN_SHAPE, detector_px=DETECTOR_PX, session=session, seed=s)
            for s in seeds]


def tiny_features(sims, kinds=("fcnn", "cnn")):
    """ScanFeatures (RIAs and crops) of simulated scans, preprocessed with their flat-fields."""
    from napari_sedclassify.pipeline.train import default_recipe, scan_features
    from napari_sedclassify.processing import FlatField

    out = []
    for i, sim in enumerate(sims):
        ff = FlatField.from_flood(sim.flatfield)
        f, _ = scan_features(sim.scan, [default_recipe(k) for k in kinds], flatfield=ff,
                             name=f"{sim.session}_{sim.seed}")
        out.append(f)
    return out


def write_tiny_scans(folder, seeds, session="A"):
    """Simulated scans on disk: [(scan .npy, truth .npy, flat-field .npy)]."""
    from napari_sedclassify.simulate import simulate_scan
    from napari_sedclassify.simulate.simulation import flatfield_name, sidecar_paths

    out = []
    for s in seeds:
        path = folder / f"tiny_{session}_{s}.npy"
        simulate_scan(path, scan_shape=SCAN_SHAPE, detector_px=DETECTOR_PX, session=session, seed=s)
        out.append((path, sidecar_paths(path)["truth"], folder / flatfield_name(session)))
    return out


def majority_f1(truth) -> float:
    """Weighted F1 of always answering the most frequent class (the chance level to beat)."""
    t = np.asarray(truth).ravel()
    t = t[t > 0]
    counts = np.bincount(t)
    p = counts.max() / len(t)
    return float(p * (2 * p / (1 + p)))


def predict_in_fresh_process(model, scan, out, extra=(), watch=()) -> tuple[int, list]:
    """`sedclassify predict MODEL SCAN --out OUT *extra` in a fresh interpreter: (its return code,
    which of the top-level modules ``watch`` it imported)."""
    import json
    import subprocess
    import sys

    argv = ["predict", str(model), str(scan), "--out", str(out), *map(str, extra)]
    code = (
        "import sys, json, contextlib, io\n"
        "from napari_sedclassify.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rc = main({argv!r})\n"
        f"print(json.dumps([rc, sorted({{m.split('.')[0] for m in sys.modules}} & {set(watch)!r})]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rc, imported = json.loads(proc.stdout.strip().splitlines()[-1])
    return rc, imported


def watched(sim, chunk_rows: int = 4, chunk_cols: int = 8):
    """(Scan, reads): the simulated scan as a dask array that notes the scan-grid position of every
    block of frames read from it, to show that something was refused before any frame was read."""
    import threading

    import dask.array as da

    from napari_sedclassify import Scan

    reads, lock = [], threading.Lock()

    def read(block, block_info=None):
        with lock:
            reads.append(block_info[0]["chunk-location"])
        return block

    ky, kx = np.asarray(sim.scan.data).shape[2:]
    frames = da.from_array(np.asarray(sim.scan.data), chunks=(chunk_rows, chunk_cols, ky, kx))
    frames = frames.map_blocks(read, dtype=sim.scan.dtype)
    return Scan(frames, sim.geometry, metadata=dict(sim.metadata), source=f"watched{sim.seed}"), reads
