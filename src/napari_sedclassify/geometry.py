"""Detector and diffraction geometry: the one place where px, Å and Å⁻¹ are converted.

A small immutable value, separate from the engines that use it (as pyFAI separates
geometry from integrator).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

#: The calibration values a Geometry holds besides the detector shape.
CALIBRATION_FIELDS = ("pixel_size_um", "camera_length_mm", "voltage_kv", "scan_step_nm")
#: The values that set the q axis (px -> Å⁻¹).
Q_FIELDS = ("pixel_size_um", "camera_length_mm", "voltage_kv")
#: Where a calibration value came from: the scan file, the user (command line, napari),
#: fitted from the data (``sedclassify calibrate``), or assumed (a default nobody stated).
ORIGINS = ("file", "user", "fitted", "assumed")
#: What users type to set each value (command line flag, unit).
FLAGS = {"pixel_size_um": ("--pixel-size", "µm"), "camera_length_mm": ("--camera-length", "mm"),
         "voltage_kv": ("--voltage", "kV"), "scan_step_nm": ("--scan-step", "nm")}
#: The calibration values in the user's words.
NAMES = {"pixel_size_um": "pixel size", "camera_length_mm": "camera length", "voltage_kv": "voltage",
         "scan_step_nm": "scan step"}

# CODATA constants (SI)
_H = 6.62607015e-34  # J s
_M_E = 9.1093837015e-31  # kg
_E = 1.602176634e-19  # C
_C = 299792458.0  # m/s


def reach_px(detector_shape, min_fraction: float = 0.25) -> float:
    """How far (px) from a detector's centre a radial profile is still measured: the largest
    radius whose circle about the centre lies on the detector for at least ``min_fraction`` of its
    length (the largest inscribed circle, half the shorter side, and beyond: on a 256 x 128
    region of interest the arcs along the long side still hold a third of a circle at 120 px)."""
    a, b = 0.5 * float(detector_shape[0]), 0.5 * float(detector_shape[1])

    def fraction(r):
        return max(0.0, math.asin(min(1.0, a / r)) - math.acos(min(1.0, b / r))) * 2.0 / math.pi

    lo, hi = min(a, b), math.hypot(a, b)
    for _ in range(50):  # the fraction falls with r beyond the inscribed circle
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fraction(mid) >= min_fraction else (lo, mid)
    return lo


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
    origins: where each calibration value came from, as ((name, origin), ...) with origin one
        of ORIGINS; a value not listed is "assumed" (or "unknown" when None). Not part of
        equality: two geometries with the same numbers are the same geometry.
    """

    detector_shape: tuple[int, int] = (512, 512)
    pixel_size_um: float = 55.0
    camera_length_mm: float | None = 900.0
    voltage_kv: float | None = 200.0
    scan_step_nm: float | None = None
    origins: tuple = field(default=(), compare=False)

    def __post_init__(self):
        object.__setattr__(self, "detector_shape", tuple(int(s) for s in self.detector_shape))
        origins = dict(self.origins.items() if isinstance(self.origins, dict) else self.origins)
        for name, origin in origins.items():
            if name not in CALIBRATION_FIELDS or origin not in ORIGINS:
                raise ValueError(f"bad geometry origin {name!r}: {origin!r} (names {CALIBRATION_FIELDS}, "
                                 f"origins {ORIGINS})")
        # "assumed" is what an unlisted value is: keep the tuple canonical
        object.__setattr__(self, "origins", tuple(sorted((k, v) for k, v in origins.items() if v != "assumed")))

    # ---- where the values came from ----------------------------------------------------------

    def origin(self, name: str) -> str:
        """"file", "user", "fitted" or "assumed" for a calibration value; "unknown" when it is None."""
        if getattr(self, name) is None:
            return "unknown"
        return dict(self.origins).get(name, "assumed")

    def marked(self, origin: str, *names: str) -> "Geometry":
        """The same values with ``names`` (default: every value that is set) marked as ``origin``."""
        names = names or tuple(n for n in CALIBRATION_FIELDS if getattr(self, n) is not None)
        return replace(self, origins={**dict(self.origins), **{n: origin for n in names}})

    def with_values(self, origin: str, **values) -> "Geometry":
        """Set calibration values (None entries are ignored) and mark them as coming from ``origin``."""
        values = {k: float(v) for k, v in values.items() if v is not None}
        unknown = sorted(set(values) - set(CALIBRATION_FIELDS))
        if unknown:
            raise ValueError(f"unknown geometry values: {', '.join(unknown)}")
        for k, v in values.items():
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{FLAGS[k][0].lstrip('-').replace('-', ' ')} must be a positive number, got {v}")
        return replace(self, **values).marked(origin, *values) if values else self

    def assumed(self, names=Q_FIELDS) -> list[str]:
        """The values among ``names`` that nobody stated (defaults)."""
        return [n for n in names if self.origin(n) == "assumed"]

    def values_text(self, names) -> str:
        """"pixel size 55 µm, voltage 200 kV" for the calibration values ``names``."""
        return ", ".join(f"{NAMES[n]} {getattr(self, n):g} {FLAGS[n][1]}" for n in names)

    def describe(self) -> str:
        """One line for users, e.g. "pixel 55 µm (assumed), camera length 900 mm (file), ..."."""
        labels = {"pixel_size_um": "pixel", "camera_length_mm": "camera length", "voltage_kv": "voltage",
                  "scan_step_nm": "scan step"}
        parts = []
        for n in CALIBRATION_FIELDS:
            v = getattr(self, n)
            parts.append(f"{labels[n]} " + ("unknown" if v is None else f"{v:g} {FLAGS[n][1]} ({self.origin(n)})"))
        return ", ".join(parts)

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
        d["origins"] = {n: self.origin(n) for n in CALIBRATION_FIELDS if getattr(self, n) is not None}
        return d

    @classmethod
    def from_dict(cls, d: dict, origin: str = "file") -> "Geometry":
        """From ``to_dict`` output. Values the dict states without an ``origins`` entry (files
        written before origins existed, a scan's sidecar) are marked ``origin``."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "origins"}
        stated = dict(d.get("origins") or {})
        origins = {k: stated.get(k, origin) for k in CALIBRATION_FIELDS if known.get(k) is not None}
        return cls(**known, origins=origins)
