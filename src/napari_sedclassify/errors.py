"""The package's exceptions, each defined once: one ``except`` catches it whichever module raised it."""

from __future__ import annotations


class Cancelled(Exception):
    """Work stopped early because its ``cancel`` callable returned True (nothing is written)."""


class ScanFormatError(ValueError):
    """A file that cannot be read as a scan; the message names the file and the problem."""


class ModelFileError(ValueError):
    """A model file that cannot be read or is refused (unknown format, untrusted content)."""


class IncompatibleModelError(ValueError):
    """A model applied to a scan (or features) it was not made for; the message says why."""


class CalibrationError(ValueError):
    """A calibration that cannot be fitted from the data (no ring, ring outside the search); the
    message says what was looked for, where, and what to do instead."""
