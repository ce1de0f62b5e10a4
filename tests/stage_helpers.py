"""The scans and models of the model-stage progress tests (session 25), shared by the engine and
napari tests (tests/conftest.py's ``stage_files``)."""

from __future__ import annotations

import subprocess
import sys

SCAN_SHAPE = (24, 24)  # 576 frames: two blocks of a crop model (512 crops at a time)
FRAMES = SCAN_SHAPE[0] * SCAN_SHAPE[1]


def make_stage_files(folder) -> dict:
    """Two simulated 24 x 24 scans (128 x 128 px detector) as .npy files with their truth, a CNN
    trained on the first for one epoch by `sedclassify train` in its own process (TensorFlow never
    loads here: the model file is applied from its arrays) and an FCNN trained here."""
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.simulate import simulate_scan
    from napari_sedclassify.simulate.simulation import sidecar_paths

    scans = [folder / f"scan{s}.npy" for s in (1, 2)]
    for path, seed in zip(scans, (1, 2)):
        simulate_scan(path, scan_shape=SCAN_SHAPE, detector_px=128, seed=seed)
    truths = [sidecar_paths(path)["truth"] for path in scans]
    cnn = folder / "cnn.sedmodel"
    trained = subprocess.run([sys.executable, "-m", "napari_sedclassify.cli", "train", "--scans", str(scans[0]),
                              "--labels", str(truths[0]), "--model", "cnn", "--epochs", "1", "--out", str(cnn)],
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr
    fcnn = save_model(train_model(scans[:1], truths[:1], model="fcnn", params={"max_epochs": 2}),
                      folder / "fcnn.sedmodel")
    return {"scans": scans, "truths": truths, "cnn": cnn, "fcnn": fcnn}
