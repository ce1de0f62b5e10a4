"""The frames of one scan: expected counts per pixel from what the beam sees, then counting.

Per frame (iy, ix), with N incident electrons and optical depth τ = Σ t_m / mfp_m of the material
thicknesses under the beam:

- N (1 - e^-τ) electrons scatter, shared by carbon, vitreous ice and crystals in proportion to their
  t/mfp; a crystal sends ``bragg_fraction`` of its share into its Bragg spots, the rest diffusely;
- N e^-τ stay in the direct beam: a disc of ``beam_radius_px`` blurred by the detector PSF, with
  ``beam_tail_fraction`` in a halo;
- plus uniform stray counts; then detector efficiency (gain x pixel area, dead = 0), hot pixels,
  Poisson counting and 12-bit saturation.

Session options: with ``plural_scattering`` only N τ e^-τ electrons scatter once (rings, spots) and
the rest of the scattered ones draw the two-scattering profiles; with ``convergence_mrad`` the
direct beam is a disc of hypot(beam radius, α L/p) px and every radial table is averaged over a
disc of α L/p px (spots get the same second moment).

Each frame draws its noise from its own seed (scan seed, session, detector size, iy, ix), so frames
are identical whatever order or chunks they are generated in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import Geometry
from .detector import Detector
from .diffraction import DirectBeam, RadialTables, bragg_spots, radial_tables, render_spots
from .params import SessionParams, SimParams, detector_scale, session_seed
from .sample import BeamContent

_FRAME_TAG = 0xF4A3E
_ALIGN_TAG = 0xA119


@dataclass
class ScanModel:
    """Everything needed to draw any frame of one scan.

    centres: (sy, sx, 2) true direct-beam centres in physical px; :meth:`index_centres` converts.
    """

    detector: Detector
    tables: RadialTables
    content: BeamContent
    centres: np.ndarray
    spots: list  # per crystal: (radius px, azimuth rad, weight)
    beam: DirectBeam
    n_electrons: float
    session: SessionParams
    params: SimParams
    scale: float  # reference px per detector px
    seed: int
    spot_sigma_px: float | None = None  # detector px; None: params.spot_sigma_px / scale
    spot_half: int = 3  # spots are drawn over (2 half + 1)² pixels

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.centres.shape[:2]

    def index_centres(self) -> np.ndarray:
        """(sy, sx, 2) float64 true centres in index px (pixel centres at integers)."""
        return self.detector.to_index(self.centres)

    def expected(self, iy: int, ix: int) -> np.ndarray:
        """Expected counts (flat (n*n,) float32) of frame (iy, ix), through the detector efficiency."""
        s, p, b = self.session, self.params, self.scale
        det = self.detector
        t_c, t_i, t_x = self.content.thickness[iy, ix]
        tau_c, tau_i, tau_x = t_c / p.carbon_mfp_nm, t_i / p.ice_mfp_nm, t_x / p.ice_mfp_nm
        tau = tau_c + tau_i + tau_x
        n = self.n_electrons
        scattered_per_tau = n * -np.expm1(-tau) / tau if tau > 0 else n
        direct = n * np.exp(-tau)
        plural = self.tables.plural is not None and tau > 0
        if plural:  # only electrons scattered once keep the rings (Poisson in τ: N τ e^-τ)
            scattered_per_tau = direct
        table = (
            self.tables.carbon * np.float32(scattered_per_tau * tau_c)
            + self.tables.ice * np.float32(scattered_per_tau * (tau_i + (1 - p.bragg_fraction) * tau_x))
            + self.tables.tail * np.float32(direct * s.beam_tail_fraction)
            + np.float32(s.stray_counts_per_px * b * b)
        )
        if plural:  # the rest (scattered twice or more) share the two-scattering profiles
            n_plural = n * (-np.expm1(-tau) - tau * np.exp(-tau))
            a_c, a_i = tau_c / tau, (tau_i + tau_x) / tau
            cc, ci, ii = self.tables.plural
            table = table + (cc * np.float32(n_plural * a_c * a_c) + ci * np.float32(n_plural * 2 * a_c * a_i)
                             + ii * np.float32(n_plural * a_i * a_i))
        cy, cx = self.centres[iy, ix]
        pc = det.centres.astype(np.float32)
        dy2 = (pc - np.float32(cy)) ** 2
        dx2 = (pc - np.float32(cx)) ** 2
        r = np.sqrt(dy2[:, None] + dx2[None, :])
        lam = table[self.tables.index(r)]
        lam *= det.efficiency
        lam = lam.ravel()

        rows, cols, w = self.beam(det, (cy, cx))
        if w.size:
            beam = lam.reshape(det.shape)
            beam[rows, cols] += ((w * (direct * (1 - s.beam_tail_fraction))).astype(np.float32)
                                 * det.efficiency[rows, cols])

        for k, (radius, az, weight) in enumerate(self.spots):
            t_k = self.content.crystal_nm[iy, ix, k]
            electrons = scattered_per_tau * p.bragg_fraction * t_k / p.ice_mfp_nm
            if electrons * weight.max() < 0.01:  # crystal (practically) outside the beam
                continue
            ys, xs = cy + radius * np.sin(az), cx + radius * np.cos(az)
            sigma = p.spot_sigma_px / b if self.spot_sigma_px is None else self.spot_sigma_px
            flat, val = render_spots(det, ys, xs, electrons * weight, sigma, self.spot_half)
            np.add.at(lam, flat, (val * det.efficiency.ravel()[flat]).astype(np.float32))
        return lam

    def frame(self, iy: int, ix: int) -> np.ndarray:
        """Frame (iy, ix) as counted by the detector: (n, n) uint16."""
        rng = np.random.Generator(np.random.SFC64([self.seed, session_seed(self.session.name),
                                                   self.detector.detector_px, iy, ix, _FRAME_TAG]))
        return self.detector.read(self.expected(iy, ix), rng)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Frames of scan rows [start, stop): (rows, sx, n, n) uint16."""
        sx = self.scan_shape[1]
        out = np.empty((stop - start, sx) + self.detector.shape, dtype=np.uint16)
        for iy in range(start, stop):
            for ix in range(sx):
                out[iy - start, ix] = self.frame(iy, ix)
        return out


def beam_centres(scan_shape, session: SessionParams, detector: Detector, seed: int) -> np.ndarray:
    """(sy, sx, 2) true direct-beam centres (physical px): base position + linear descan + jitter."""
    sy, sx = scan_shape
    b = detector_scale(detector.detector_px)
    rng = np.random.default_rng([seed, session_seed(session.name), _ALIGN_TAG])
    scan_offset = rng.normal(0.0, session.scan_offset_px, size=2)
    jitter = rng.normal(0.0, session.jitter_px, size=(sy, sx, 2))
    base = detector.physical_size / 2 + (np.asarray(session.beam_offset_px) + scan_offset) / b
    yy, xx = np.meshgrid((np.arange(sy) - (sy - 1) / 2) * session.scan_step_nm,
                         (np.arange(sx) - (sx - 1) / 2) * session.scan_step_nm, indexing="ij")
    drift = np.stack([yy, xx], axis=-1) @ session.descan_matrix.T
    return base + (drift + jitter) / b


def true_geometry(session: SessionParams, detector_px: int, nominal: bool = False) -> Geometry:
    """The geometry the patterns are drawn with (effective camera length, scaled pixel size), marked
    "fitted": what a perfect calibration would find. nominal: what the microscope reports instead
    (the nominal camera length), marked "file"."""
    return Geometry(
        detector_shape=(detector_px, detector_px),
        pixel_size_um=session.pixel_size_um * detector_scale(detector_px),
        camera_length_mm=session.nominal_camera_length_mm if nominal else session.camera_length_mm,
        voltage_kv=session.voltage_kv,
        scan_step_nm=session.scan_step_nm,
    ).marked("file" if nominal else "fitted")


def scan_model(content: BeamContent, crystals, session, params, detector, seed) -> ScanModel:
    """Precompute tables, spot lists and centres for a scan."""
    n = detector.detector_px
    b = detector_scale(n)
    lam_L_p = true_geometry(session, n).lambda_L_over_p
    # a convergent beam: a disc of α L/p px (true camera length) that every direction is spread over
    blur = session.convergence_px(n)
    centres = beam_centres(content.fractions.shape[:2], session, detector, seed)
    # the tables reach every pixel from every centre: a strong descan can take the beam beyond the
    # detector's edge, where its farthest pixel lies more than 1.5 detector widths away
    size = float(detector.physical_size)
    corners = np.array([[0.0, 0.0], [0.0, size], [size, 0.0], [size, size]])
    reach = float(np.sqrt(((centres.reshape(-1, 1, 2) - corners) ** 2).sum(axis=-1)).max()) + 2.0
    tables = radial_tables(lam_L_p, params, session.beam_tail_px / b, r_max=max(size * 1.5, reach),
                           blur_px=blur, plural=session.plural_scattering)
    spots = [bragg_spots(c, params, lam_L_p) for c in crystals]
    spot_sigma, spot_half = None, 3
    if blur > 0:  # Bragg discs, drawn as Gaussians with the disc's second moment (σ² = a²/4)
        spot_sigma = float(np.hypot(params.spot_sigma_px / b, blur / 2))
        spot_half = max(3, int(np.ceil(3.5 * spot_sigma)))
    beam = DirectBeam(float(np.hypot(session.beam_radius_px / b, blur)), session.psf_sigma_px / b)
    return ScanModel(detector, tables, content, centres, spots, beam, session.electrons_per_frame, session, params,
                     b, seed, spot_sigma_px=spot_sigma, spot_half=spot_half)
