"""Engine messages in the plugin's words.

The engine's errors and warnings advise what to type on the command line (``--camera-length
828``, ``sedclassify calibrate SCAN --write``, ``--flatfield-dataset NAME``); in napari the same
values are set in widgets, and a user there has no command line to type them into. Every
message the plugin shows from the engine goes through :func:`in_napari_words`.
"""

from __future__ import annotations

import re

from ..geometry import FLAGS, NAMES
from ..pipeline.calibrate import FURTHER_OFF_ADVICE, GOLD_ADVICE

#: The Scan geometry widget's field for ``--edge-pixel-width``: its name and unit.
EDGE_LABEL, EDGE_UNIT = "chip-edge pixel width", "pitches"
_BY_FLAG = {flag: (NAMES[name], unit) for name, (flag, unit) in FLAGS.items()}
_BY_FLAG["--edge-pixel-width"] = (EDGE_LABEL, EDGE_UNIT)
_FLAG = "|".join(re.escape(f) for f in _BY_FLAG)

#: The field of the Centring tab that gives the beam radius when none can be measured.
BEAM_FIELD_HINT = ("enter the beam's radius in 'beam radius (px, 0 = measure)' in the Centring tab (2 Centring) "
                   "and press Find centres again")


def _valued(match) -> str:
    name, unit = _BY_FLAG[match.group(1)]
    return f"{name} {match.group(2)} {unit} (Scan geometry)"


def _bare(match) -> str:
    return f"the {_BY_FLAG[match.group(1)][0]} (Scan geometry)"


_RULES = [
    # a parameter's Python name and flag after its words ("crop radius 100 px (crop_radius_px=100,
    # --crop-radius 100) is ..."): the widget's field is named in its own words already
    (re.compile(r" \([a-z][a-z0-9_]*=[^()]*\)"), ""),
    # the calibration's command-line-only advice: the RIA widget's Fit camera length searches ±15 % of
    # the camera length in Scan geometry, for the ice ring only
    (re.compile(re.escape(FURTHER_OFF_ADVICE)),
     "then set the camera length near the right value in Scan geometry and Fit camera length again"),
    (re.compile(", " + re.escape(GOLD_ADVICE)), ""),
    (re.compile(r"`sedclassify calibrate[^`]*`"), "the RIA widget's Fit camera length"),
    (re.compile(r"`sedclassify propose`"), "the 'Classify before labeling' widget's Propose classes"),
    # the no-beam error of preprocessing, whichever step (Centring, Propose classes, Classify) met it
    (re.compile(r" \(In Python, give bf_radius_px and adf_inner_px, or beam_radius_px\.\)"),
     f" If it is, {BEAM_FIELD_HINT}."),
    (re.compile(r" On the command line, give the beam's radius: --beam-radius PX\."), ""),
    (re.compile(r" \(sedclassify train\)"), " (the Training widget)"),
    (re.compile(r" \(`train --session-robust` on scans of several sessions holds better\)"),
     " (a model trained on scans of several sessions holds better)"),
    # the camera-length warning's way out: the Training widget has no session-robust recipe
    (re.compile(r"one with `train --session-robust`"),
     "one trained on the command line with `sedclassify train --session-robust` (the Training widget has no "
     "such option)"),
    (re.compile(r"--flatfield-dataset(?: NAME)?"), "the Flat-field widget's dataset box"),
    (re.compile(r"--scan-shape(?: SY SX)?(?![\w-])"), "the scan rows and columns"),  # Scan geometry's, Live's
    (re.compile(r"--edge-pixel-width \(leave it out to use the measured width\)"),
     f"the {EDGE_LABEL} (Scan geometry; 0 = measured from the frames)"),
    (re.compile(rf"({_FLAG}) (\d+(?:\.\d+)?)\b"), _valued),
    (re.compile(rf"({_FLAG})(?: [A-Z]{{2,}})?(?![\w-])"), _bare),
]


def _without_python_forms(text: str) -> str:
    """``text`` without its " (Python: ...)" and " (in Python: ...)" asides (parentheses balanced)."""
    out, i = [], 0
    for start in (m.start() for m in re.finditer(r" \((?:in )?Python: ", text)):
        if start < i:
            continue
        depth, j = 0, start + 1
        while j < len(text):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        out.append(text[i:start])
        i = j
    return "".join(out) + text[i:]


def in_napari_words(text: str) -> str:
    """``text`` with the command-line advice it holds put as the widgets that do the same, and
    without the asides for Python users."""
    text = _without_python_forms(text)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text
