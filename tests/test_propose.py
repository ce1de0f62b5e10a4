"""Class proposals without labels (issue 17): clusters of q-axis radial profiles, named by the
ice ring and Bragg spikes, agree with the simulator's truth on scans of several sessions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from napari_sedclassify.cli import main


@pytest.mark.parametrize("session,seed", [("A", 3), ("B", 11), ("D", 5)])
def test_propose_matches_truth_without_labels(session, seed, tmp_path, capsys):
    from napari_sedclassify.simulate import simulate_scan
    from napari_sedclassify.simulate.simulation import flatfield_name

    path = tmp_path / f"s{session}.npy"
    sim = simulate_scan(path, scan_shape=(20, 20), detector_px=256, session=session, seed=seed)
    assert main(["propose", str(path), "--out", str(tmp_path / "out"), "--json",
                 "--flatfield", str(tmp_path / flatfield_name(session))]) == 0
    proposal = np.load(tmp_path / "out" / f"s{session}_proposal.npy")
    truth = sim.truth
    assert proposal.shape == truth.shape
    ari = adjusted_rand_score(truth.ravel(), proposal.ravel())
    assert ari >= 0.6, ari
    # named by physics: the most common true class is proposed most often under the same name
    for c in (1, 2):
        if (truth == c).sum() > 40:
            assert np.mean(proposal[truth == c] == c) > 0.8
    meta = json.loads((tmp_path / "out" / f"s{session}_proposal.json").read_text())
    assert {g["class"] for g in meta["groups"]} <= {"carbon", "amorphous_ice", "mixed"}
    assert sum(meta["counts"].values()) == truth.size


def test_propose_refuses_existing_outputs_and_bad_input(tmp_path, capsys):
    bad = tmp_path / "text.npy"
    bad.write_text("not a scan")
    assert main(["propose", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "text.npy" in capsys.readouterr().err
