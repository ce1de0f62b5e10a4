"""Ctrl-C that lands inside a progress bar's construction: still one line, no traceback.

The suite's SIGINT test (test_fixes_s23) once caught the signal inside tqdm's ``__init__``: the
command said "interrupted", then the half-made bar, collected afterwards, printed "Exception
ignored in: <function tqdm.__del__ ...>" and a traceback. Here the interrupt is put exactly there.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

#: tqdm's __init__ replaced by one that gets as far as a real one does before the signal (the
#: bar is ``disable``-d or not, but has no ``pos`` yet) and is interrupted there
HALF_MADE_BAR = """
import sys
import tqdm.std

def interrupted_init(self, *args, **kwargs):
    self.disable = False
    raise KeyboardInterrupt

tqdm.std.tqdm.__init__ = interrupted_init
from napari_sedclassify.cli import entry
entry()
"""


@pytest.mark.parametrize("argv", [
    ["simulate", "{out}", "--scan-shape", "8", "8", "--detector", "64"],
    ["preprocess", "{scan}", "-o", "{out}.h5"],
])
def test_ctrl_c_inside_a_bar_leaves_one_line_and_no_output(argv, tmp_path, realdata):
    scan = realdata / "merlin" / "001_4x2_6bit.mib"  # a real Merlin file (4 x 2 frames of 256²)
    out = tmp_path / "new" / "out"
    argv = [a.format(out=out, scan=scan) for a in argv]
    proc = subprocess.run([sys.executable, "-c", HALF_MADE_BAR, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == f"sedclassify {argv[0]}: interrupted\n", proc.stderr
    assert not (tmp_path / "new").exists()
    assert not list(tmp_path.glob("**/*.h5")) and not list(tmp_path.glob("**/*.npy"))
