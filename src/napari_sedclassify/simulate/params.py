"""Every number of the simulation, with the paper's values as defaults.

Two groups: :class:`SessionParams` (microscope alignment, dose and detector of one session; scans of a
session share them) and :class:`SimParams` (the sample and its diffraction). Lengths on the detector
are given in px of the full 512x512 Medipix3 quad (55 µm); a smaller detector of the same physical
size has larger pixels, and these lengths are scaled to it (see :func:`detector_scale`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..jsonutil import jsonable

#: Detector width (px) for which the px-valued parameters are given.
REFERENCE_DETECTOR_PX = 512

#: The materials under the beam, in the order of ``fractions[..., k]`` (class ids 1, 2, 3).
MATERIALS = ("carbon", "amorphous_ice", "crystalline_ice")

#: Seed of the detector hardware (dead and hot pixels), shared by every session.
HARDWARE_SEED = 20230360


def detector_scale(detector_px: int) -> float:
    """How many px of the reference 512-px detector one px of a ``detector_px`` detector spans."""
    if detector_px < 16 or detector_px % 2:
        raise ValueError(f"detector size must be an even number of px >= 16, got {detector_px}")
    return REFERENCE_DETECTOR_PX / detector_px


def session_seed(name: str) -> int:
    """A stable 32-bit number derived from a session name (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(str(name).encode("utf-8"))


@dataclass(frozen=True)
class SessionParams:
    """Microscope, beam and detector of one data-collection session.

    px values are for the 512-px reference detector (55 µm pixels) and scale with detector size.
    """

    name: str = "A"
    voltage_kv: float = 200.0  # kV (λ = 0.02508 Å)
    camera_length_mm: float = 900.0  # mm, the effective camera length the patterns are drawn with
    nominal_camera_length_mm: float = 900.0  # mm, what the microscope reports (written to the geometry)
    pixel_size_um: float = 55.0  # µm, pixel pitch of the 512-px detector
    # detector (Medipix3 quad: 2x2 chips)
    edge_pixel_width: float = 2.5  # pixel pitches covered by each pixel along a chip boundary
    counter_max: int = 4095  # 12-bit counter: counts saturate here
    gain_sigma: float = 0.07  # relative per-pixel gain spread (threshold dispersion)
    chip_gain_sigma: float = 0.03  # relative gain spread between the four chips
    dead_fraction: float = 3e-4  # fraction of pixels that never count
    hot_fraction: float = 1e-4  # fraction of pixels that count without electrons
    hot_rate_counts: tuple[float, float] = (20.0, 20000.0)  # counts/frame of hot pixels (log-uniform)
    gain_seed: int | None = None  # gain map seed; None: derived from the session name
    flat_counts_per_px: float = 500.0  # counts/px/frame of a uniform flood (flat-field acquisition)
    # beam on the sample
    dose_e_per_A2: float = 2.0  # e-/Å² per scan point
    beam_diameter_nm: float = 55.0  # nm, parallel beam (50-60 nm in the paper)
    beam_edge_nm: float = 2.0  # nm, soft edge (Gaussian sigma) of the beam disc on the sample
    beam_halo_fraction: float = 0.15  # of the electrons in a Gaussian halo around the disc (aberrations)
    beam_halo_nm: float = 40.0  # nm, sigma of that halo
    scan_step_nm: float = 30.0  # nm between scan points (≈39 % overlap of 55-nm discs)
    # beam on the detector
    beam_offset_px: tuple[float, float] = (1.6, -2.3)  # px, direct beam at scan centre minus detector centre
    descan_px_per_nm: float = 0.5 / 30.0  # px of direct-beam shift per nm of beam shift (0.5 px/step)
    descan_angle_deg: float = 20.0  # direction of that shift relative to the scan axes
    scan_offset_px: float = 0.8  # px, per-scan random shift of the beam base position (sigma)
    jitter_px: float = 0.2  # px, per-frame random centre jitter (sigma per axis)
    beam_radius_px: float = 2.5  # px, radius of the direct-beam disc (convergence < 0.1 mrad + focus)
    psf_sigma_px: float = 0.7  # px, detector point spread (Gaussian sigma)
    beam_tail_fraction: float = 0.02  # fraction of the direct beam in its halo
    beam_tail_px: float = 4.0  # px, halo scale: (1 + (r/this)²)^-1.5
    stray_counts_per_px: float = 0.01  # counts/px/frame of uniform stray background
    # image mode
    overview_rotation_deg: float = 2.5  # rotation between image-mode overview and scan axes
    # what else real sessions vary (defaults: the original model, byte-identical output)
    convergence_mrad: float = 0.0  # beam convergence semi-angle (mrad): a larger direct-beam disc
    #   (radius hypot(beam_radius_px, α L/p)) and every ring, spot and halo blurred by that disc
    ice_thickness_scale: float = 1.0  # multiplies the vitreous-ice thickness (holes and over carbon)
    plural_scattering: bool = False  # electrons scattered more than once (Poisson in τ) go into a broad,
    #   ring-less profile (self-convolution of the single-scattering one): thick ice, weaker rings

    def __post_init__(self):
        for name in ("convergence_mrad", "ice_thickness_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def electrons_per_frame(self) -> float:
        """Incident electrons per scan point: dose (e-/Å²) times beam disc area (Å²)."""
        radius_A = self.beam_diameter_nm * 5.0  # nm diameter -> Å radius
        return self.dose_e_per_A2 * math.pi * radius_A**2

    @property
    def descan_matrix(self) -> np.ndarray:
        """2x2 px/nm: (d centre_y, d centre_x) = M @ (d beam_y, d beam_x), on the 512-px detector.

        The beam shift turned by ``descan_angle_deg`` (from +x towards +y) and scaled.
        """
        a = math.radians(self.descan_angle_deg)
        c, s = math.cos(a), math.sin(a)
        return self.descan_px_per_nm * np.array([[c, s], [-s, c]])

    @property
    def resolved_gain_seed(self) -> int:
        return session_seed(self.name) if self.gain_seed is None else int(self.gain_seed)

    def convergence_px(self, detector_px: int = REFERENCE_DETECTOR_PX) -> float:
        """Radius (detector px) of the disc the convergence semi-angle draws at the true camera length."""
        pixel_um = self.pixel_size_um * detector_scale(detector_px)
        return self.convergence_mrad * 1e-3 * (self.camera_length_mm * 1e-3) / (pixel_um * 1e-6)

    def to_dict(self) -> dict:
        """All values as JSON; the session variables added later (convergence, ice thickness scale,
        plural scattering) only when they differ from their defaults, so files of default sessions
        stay byte-identical to those written before they existed."""
        d = jsonable(asdict(self))
        for name, default in _LATER_DEFAULTS.items():
            if d.get(name) == default:
                d.pop(name, None)
        return d


#: Session fields added after files were first written, with the defaults that reproduce them.
_LATER_DEFAULTS = {"convergence_mrad": 0.0, "ice_thickness_scale": 1.0, "plural_scattering": False}


def session_params(session="A", base: SessionParams | None = None) -> SessionParams:
    """The parameters of a named session.

    "A" is the paper's alignment (the defaults). Any other name gives a session that differs slightly
    and deterministically (from the CRC-32 of the name): camera length 1.5-3 % off (the geometry still
    reports the nominal 900 mm), beam base position a few px off, descan direction turned by 20-45°,
    descan strength ±10 %, dose ±5-15 % and its own detector gain map.
    A :class:`SessionParams` is returned unchanged.
    """
    if isinstance(session, SessionParams):
        return session
    name = str(session)
    if not name:
        raise ValueError("session name must not be empty")
    base = replace(base or SessionParams(), name=name)
    if name == "A":
        return base
    rng = np.random.default_rng(session_seed(name))
    sign = rng.choice([-1.0, 1.0], size=3)
    dy, dx = (float(v) for v in rng.normal(0.0, 3.0, size=2))
    return replace(
        base,
        camera_length_mm=base.camera_length_mm * (1 + sign[0] * rng.uniform(0.015, 0.03)),
        beam_offset_px=(base.beam_offset_px[0] + dy, base.beam_offset_px[1] + dx),
        descan_angle_deg=base.descan_angle_deg + sign[1] * rng.uniform(20.0, 45.0),
        descan_px_per_nm=base.descan_px_per_nm * rng.uniform(0.9, 1.1),
        dose_e_per_A2=base.dose_e_per_A2 * (1 + sign[2] * rng.uniform(0.05, 0.15)),
        overview_rotation_deg=base.overview_rotation_deg + rng.normal(0.0, 1.0),
    )


@dataclass(frozen=True)
class SimParams:
    """The sample (holey carbon, vitreous ice, ice crystals) and its diffraction.

    Profiles: peaks are (d in Å, Gaussian sigma in Å⁻¹ of q = 1/d, weight); ``*_background`` is
    (q0 in Å⁻¹, weight) of the smooth falling term (1 + (q/q0)²)^-1.5 from inelastic and plural
    scattering. Weights are fractions of the material's elastically scattered electrons.
    """

    # holey carbon film
    hole_diameter_nm: tuple[float, float] = (1000.0, 2000.0)
    hole_spacing_nm: tuple[float, float] = (500.0, 1000.0)  # carbon bar between neighbouring holes
    hole_edge_roughness: float = 0.015  # relative radius modulation (orders 2-6)
    ice_area_fraction: tuple[float, float] = (0.35, 0.7)  # of the scan area; scan areas show a hole edge
    carbon_nm: tuple[float, float] = (15.0, 30.0)  # carbon film thickness
    # vitreous ice: thin in the hole centre, thick at the edge (meniscus)
    ice_centre_nm: tuple[float, float] = (40.0, 90.0)
    ice_edge_nm: tuple[float, float] = (100.0, 150.0)
    ice_profile_power: float = 4.0  # t = centre + (edge - centre) (ρ/R)^power
    ice_over_carbon_nm: tuple[float, float] = (0.0, 25.0)
    thickness_texture: float = 0.08  # relative smooth random thickness variation (sigma)
    texture_length_nm: float = 60.0  # correlation length of that variation
    # crystalline ice contaminants
    crystals_per_um2: float = 4.0
    min_crystals: int = 1
    crystal_size_nm: tuple[float, float] = (50.0, 200.0)
    crystal_in_ice: float = 0.85  # probability that a crystal sits in a hole
    crystal_aspect: tuple[float, float] = (0.7, 1.0)
    crystal_height_ratio: tuple[float, float] = (0.4, 0.9)  # dome height / size
    # elastic scattering at 200 kV: fraction scattered = 1 - exp(-sum t/mfp)
    carbon_mfp_nm: float = 240.0
    ice_mfp_nm: float = 600.0
    ice_peaks: tuple = ((3.70, 0.022, 0.55), (2.10, 0.035, 0.16), (1.22, 0.060, 0.07))
    ice_background: tuple = (0.04, 0.22)
    carbon_peaks: tuple = ((3.80, 0.050, 0.07), (2.13, 0.045, 0.42), (1.21, 0.060, 0.23))
    carbon_background: tuple = (0.04, 0.28)
    # hexagonal ice (Ih) Bragg reflections: d (Å) and relative intensity of each six-fold set
    bragg_d_A: tuple = (3.90, 3.67, 3.44, 2.67, 2.25, 2.07, 1.92)
    bragg_intensity: tuple = (1.0, 0.6, 0.8, 0.3, 0.5, 0.35, 0.3)
    bragg_excited: float = 0.5  # probability that a reflection set is excited in a crystal
    bragg_fraction: float = 0.5  # of a crystal's elastic scattering that goes into Bragg spots
    spot_sigma_px: float = 0.8  # px (512 detector): FWHM ≈ 1.9 px
    # classes
    mixed_threshold: float = 0.8  # a point is one material when it covers >= this fraction of the beam
    sample_grid_per_step: int = 12  # sample raster px per scan step (2.5 nm at 30 nm)
    # image-mode overview
    overview_per_step: int = 4  # overview px per scan step
    overview_margin_steps: float = 3.0  # overview extends this far beyond the scan area
    overview_counts: float = 400.0  # counts/px through vacuum
    # nm, image-mode attenuation (mass-thickness and diffraction contrast)
    image_mfp_nm: dict = field(default_factory=lambda: {"carbon": 45.0, "ice": 300.0, "crystal": 110.0})
    overview_blur_px: float = 0.8
    overview_shading: float = 0.05  # relative illumination gradient across the overview

    def to_dict(self) -> dict:
        return jsonable(asdict(self))
