"""Detector and diffraction geometry: the one place where px, Å and Å⁻¹ are converted.

A small immutable value, separate from the engines that use it (as pyFAI separates
geometry from integrator).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

# CODATA constants (SI)
_H = 6.62607015e-34  # J s
_M_E = 9.1093837015e-31  # kg
_E = 1.602176634e-19  # C
_C = 299792458.0  # m/s


def electron_wavelength_A(voltage_kv: float) -> float:
    """Relativistic electron wavelength (Å) for an accelerating voltage (kV)."""
    v = voltage_kv * 1e3
    lam_m = _H / math.sqrt(2 * _M_E * _E * v * (1 + _E * v / (2 * _M_E * _C**2)))
    return lam_m * 1e10


@dataclass(frozen=True)
class Geometry:
    """Detector and calibration of a scan.

    detector_shape: (rows, cols) px. pixel_size_um: detector pixel pitch (µm).
    camera_length_mm: effective camera length (mm), None when unknown.
    voltage_kv: accelerating voltage (kV), None when unknown.
    scan_step_nm: distance between scan points (nm), None when unknown.
    """

    detector_shape: tuple[int, int] = (512, 512)
    pixel_size_um: float = 55.0
    camera_length_mm: float | None = 900.0
    voltage_kv: float | None = 200.0
    scan_step_nm: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "detector_shape", tuple(int(s) for s in self.detector_shape))

    @property
    def calibrated(self) -> bool:
        """True when px can be converted to Å (camera length and voltage known)."""
        return self.camera_length_mm is not None and self.voltage_kv is not None

    @property
    def wavelength_A(self) -> float:
        if self.voltage_kv is None:
            raise ValueError("voltage unknown: cannot compute the electron wavelength")
        return electron_wavelength_A(self.voltage_kv)

    @property
    def lambda_L_over_p(self) -> float:
        """λL/p in Å·px: d (Å) = this / r (px). About 410 Å·px at 200 kV, 90 cm, 55 µm."""
        if not self.calibrated:
            raise ValueError("geometry is not calibrated (camera length or voltage unknown)")
        return self.wavelength_A * (self.camera_length_mm * 1e-3) / (self.pixel_size_um * 1e-6)

    def radius_px_to_d_A(self, r_px):
        """Lattice spacing d (Å) seen at radius r (px): d = λL/(r p)."""
        return self.lambda_L_over_p / r_px

    def d_A_to_radius_px(self, d_A):
        """Radius (px) at which spacing d (Å) diffracts."""
        return self.lambda_L_over_p / d_A

    def radius_px_to_q_invA(self, r_px):
        """Scattering vector magnitude q = 1/d (Å⁻¹) at radius r (px)."""
        return r_px / self.lambda_L_over_p

    def q_invA_to_radius_px(self, q):
        return q * self.lambda_L_over_p

    def replace(self, **changes) -> "Geometry":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["detector_shape"] = list(self.detector_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)
