"""Simulator sessions that vary what real sessions vary (issue 18): beam convergence, ice thickness
with plural scattering, and grids of sessions in one command. Default sessions stay byte-identical."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from napari_sedclassify.classes import AMORPHOUS_ICE
from napari_sedclassify.cli import main
from napari_sedclassify.simulate import (
    GRID_AXES,
    SessionParams,
    SimParams,
    load_dataset,
    session_grid,
    session_params,
    simulate_scan,
    simulate_session_grid,
)

#: sha256 of the frames of two small default scans, as the simulator drew them before the session
#: variables existed: defaults must keep reproducing them.
GOLDEN = {
    ("A", 64, (6, 7), 5): "d4a9a456eccacc0a0b49b87968913ebe1ee26b8ea524af238ae5eec12a860f24",
    ("B", 128, (4, 4), 2): "2add331c08fb5725e6f9db1eac08836bd6013a0190e3e2ec5a888707451f92bb",
}


@pytest.mark.parametrize("key", list(GOLDEN))
def test_default_sessions_are_byte_identical(key):
    session, n, shape, seed = key
    sim = simulate_scan(None, scan_shape=shape, detector_px=n, session=session, seed=seed)
    assert hashlib.sha256(np.asarray(sim.scan.data).tobytes()).hexdigest() == GOLDEN[key]
    # the session variables added later are not written for default sessions (files unchanged)
    d = session_params(session).to_dict()
    assert not {"convergence_mrad", "ice_thickness_scale", "plural_scattering"} & set(d)
    assert sim.metadata["session_params"] == d


def test_new_session_values_are_recorded_and_checked():
    s = SessionParams(name="x", convergence_mrad=0.5, ice_thickness_scale=2.0, plural_scattering=True)
    d = s.to_dict()
    assert (d["convergence_mrad"], d["ice_thickness_scale"], d["plural_scattering"]) == (0.5, 2.0, True)
    # α L / p: 0.5 mrad x 900 mm / 55 µm = 8.2 px at 512 px, 4.1 px at 256 px
    assert s.convergence_px(512) == pytest.approx(8.18, abs=0.01)
    assert s.convergence_px(256) == pytest.approx(4.09, abs=0.01)
    with pytest.raises(ValueError, match="convergence"):
        SessionParams(convergence_mrad=-1)
    with pytest.raises(ValueError, match="ice_thickness_scale"):
        SessionParams(ice_thickness_scale=float("nan"))


def _ice_profile(sim, n_bins):
    """Mean RIA (1-px bins about the true centres, index px) of the amorphous-ice frames."""
    f = np.asarray(sim.scan.data, dtype=np.float64)
    yy, xx = np.indices(f.shape[2:])
    pts = np.argwhere(sim.truth == AMORPHOUS_ICE)
    assert len(pts) >= 4
    out = []
    for iy, ix in pts:
        r = np.hypot(yy - sim.centres[iy, ix, 0], xx - sim.centres[iy, ix, 1]).astype(int).ravel()
        s = np.bincount(r, f[iy, ix].ravel(), minlength=n_bins)[:n_bins]
        c = np.bincount(r, minlength=n_bins)[:n_bins]
        out.append(s / np.maximum(c, 1))
    return np.mean(out, axis=0), pts


def test_convergence_enlarges_the_beam_and_blurs_the_rings():
    kw = dict(scan_shape=(8, 8), detector_px=128, seed=2)
    par = simulate_scan(None, session=SessionParams(name="par"), **kw)
    conv = simulate_scan(None, session=SessionParams(name="conv", convergence_mrad=1.0), **kw)
    np.testing.assert_array_equal(par.truth, conv.truth)  # same sample
    # the direct beam: a disc of α L/p = 4.1 px radius instead of 2.5 px / 4 (+ PSF)
    f_par, f_conv = np.asarray(par.scan.data[0, 0], float), np.asarray(conv.scan.data[0, 0], float)
    assert (f_conv > 1000).sum() > 5 * (f_par > 1000).sum()
    assert 25 < (f_conv > 1000).sum() < 90  # ≈ π 4.1² = 53 px
    # the ring at 3.7 Å (27.7 px): lower and broader, in the same place
    p_par, _ = _ice_profile(par, 64)
    p_conv, _ = _ice_profile(conv, 64)
    k = 27
    assert p_conv[k] < 0.85 * p_par[k]
    assert abs(int(np.argmax(p_conv[18:40])) - int(np.argmax(p_par[18:40]))) <= 1


def test_disc_average_keeps_the_integral_and_blurs():
    from napari_sedclassify.simulate.diffraction import disc_average

    step = 0.05
    r = np.arange(4000) * step
    ring = np.exp(-0.5 * ((r - 60) / 2.0) ** 2)
    out = disc_average(ring, step, 6.0)
    integral = lambda f: np.sum(2 * np.pi * r * f) * step  # noqa: E731
    assert integral(out) == pytest.approx(integral(ring), rel=2e-3)
    # variance grows by a²/4 per axis (≈ radially for a thin ring): σ² = 4 + 9
    w = 2 * np.pi * r * out
    var = np.sum(w * (r - np.sum(w * r) / w.sum()) ** 2) / w.sum()
    assert var == pytest.approx(13.0, rel=0.05)


def test_plural_profiles_are_normalised_and_ringless():
    from napari_sedclassify.simulate.diffraction import plural_profiles, profile_density

    p = SimParams()
    for kind in ("cc", "ci", "ii"):
        q, prof = plural_profiles(p, kind)
        dq = q[1] - q[0]
        assert np.sum(2 * np.pi * q * prof) * dq == pytest.approx(1.0, rel=1e-6)
        assert (prof >= 0).all()
    q, ii = plural_profiles(p, "ii")
    single = profile_density(q, p.ice_peaks, p.ice_background)
    at = lambda f, v: float(np.interp(v, q, f))  # noqa: E731
    # the 3.7-Å ring stands far less above its surroundings after two scatterings
    assert at(ii, 0.27) / at(ii, 0.2) < 0.3 * at(single, 0.27) / at(single, 0.2)


def test_thick_ice_scatters_more_and_weakens_the_rings():
    kw = dict(scan_shape=(8, 8), detector_px=128, seed=2)
    thin = simulate_scan(None, session=SessionParams(name="thin", plural_scattering=True), **kw)
    thick = simulate_scan(None, session=SessionParams(name="thick", ice_thickness_scale=3.0,
                                                      plural_scattering=True), **kw)
    np.testing.assert_allclose(thick.thickness[..., 1], 3 * thin.thickness[..., 1], rtol=1e-5, atol=1e-4)
    p_thin, pts = _ice_profile(thin, 64)
    p_thick, _ = _ice_profile(thick, 64)
    # more scattering everywhere outside the beam...
    assert p_thick[10:60].sum() > 1.5 * p_thin[10:60].sum()
    # ...but the 3.7-Å ring (27.7 px) stands less above the background inside it (18 px)
    assert p_thick[27] / p_thick[18] < 0.9 * (p_thin[27] / p_thin[18])


def test_session_grid_values_and_names():
    grid = session_grid("A", convergence=(0, 0.5), ice=(1, 2.5), dose=(0.3, 3), camera=(0.94, 1.08))
    assert len(grid) == 16 and len({s.name for s in grid}) == 16
    base = session_params("A")
    for s in grid:
        assert s.nominal_camera_length_mm == base.nominal_camera_length_mm  # the files keep the nominal
        assert s.camera_length_mm / base.camera_length_mm in (pytest.approx(0.94), pytest.approx(1.08))
        assert s.dose_e_per_A2 / base.dose_e_per_A2 in (pytest.approx(0.3), pytest.approx(3.0))
        assert s.convergence_mrad in (0.0, 0.5) and s.ice_thickness_scale in (1.0, 2.5)
        assert s.plural_scattering and s.gain_seed is None  # own gain map, from the name
    one = next(s for s in grid if s.name == "g-c0.5-i2.5-d3-L1.08-s1")
    assert one.descan_angle_deg != base.descan_angle_deg  # its own alignment
    assert session_grid("A", descan=(2,), vary_alignment=False)[0].descan_px_per_nm == 2 * base.descan_px_per_nm
    assert set(GRID_AXES) == {"convergence", "ice", "dose", "camera", "descan"}
    with pytest.raises(ValueError, match="positive"):
        session_grid("A", dose=(0,))


def test_simulate_session_grid_and_cli(tmp_path, capsys):
    ds = simulate_session_grid(tmp_path / "api", n_scans=2, scan_shape=(3, 3), detector_px=32, seed=1,
                               camera=(0.95, 1.05))
    assert [s["session"] for s in ds["scans"]] == ["g-c0-i1-d1-L0.95-s1"] * 2 + ["g-c0-i1-d1-L1.05-s1"] * 2
    assert [s["seed"] for s in ds["scans"]] == [1, 2, 1, 2]
    assert ds["grid"]["axes"]["camera"]["values"] == [0.95, 1.05]
    loaded = load_dataset(tmp_path / "api")
    meta = json.loads(loaded["scans"][0]["metadata"].read_text())
    assert meta["geometry"]["camera_length_mm"] == 900.0  # nominal in the file
    assert meta["true_geometry"]["camera_length_mm"] == pytest.approx(855.0)
    assert loaded["scans"][0]["flatfield"].exists()

    capsys.readouterr()
    out = tmp_path / "cli"
    assert main(["simulate", str(out), "--session-grid", "convergence=0,0.8", "ice=2", "--scans", "1",
                 "--scan-shape", "2", "2", "--detector", "32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(data["sessions"]) == ["g-c0-i2-d1-L1-s1", "g-c0.8-i2-d1-L1-s1"]
    assert data["sessions"]["g-c0.8-i2-d1-L1-s1"]["convergence_mrad"] == 0.8
    assert (out / "dataset.json").exists()
    assert main(["simulate", str(out), "--session-grid", "focus=1,2"]) == 2
    assert "AXIS" in capsys.readouterr().err
    assert main(["simulate", str(out), "--session-grid", "ice=1", "--demo"]) == 2
