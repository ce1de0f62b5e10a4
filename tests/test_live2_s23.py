"""`sedclassify watch` at the microscope (session 23 sweep): what it says before the detector is armed,
and what a script that runs it can rely on.

1. A model the given geometry cannot serve (the built-in model needs a known camera length and
   voltage) was refused only once frames arrived, the detector armed: now at once, in one line.
2. Two runs writing the same --out folder and name both started, then overwrote each other: the
   second is refused at start (a lock file holding the first one's process id; a lock left by a
   process that no longer exists is taken over).
3. `<name>_keep.json` did not exist until the first frames were classified: it says `waiting` from
   the start.
4. A run that ended `timeout` (or `incomplete`) exited 0, like a complete one: it exits 3.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_sedclassify.cli import main
from napari_sedclassify.optional import live_available

simulate = pytest.importorskip("napari_sedclassify.simulate")

#: A geometry the built-in model reads (pixel size, camera length and voltage stated, 200 kV).
GIVEN = ["--pixel-size", "55", "--camera-length", "900", "--voltage", "200"]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not live_available("merlin"), reason='the live extra is not installed (no libertem_qd_mpx)')
def test_a_model_the_stream_geometry_cannot_serve_is_refused_before_waiting(tmp_path, capsys):
    """`watch builtin --merlin HOST:PORT --scan-shape 3 3` without --camera-length: one line naming the
    model, the stream and the missing camera length, at once (it waited for the detector, here the
    whole --timeout, and said nothing listened). Nothing is written to --out."""
    where = f"127.0.0.1:{_free_port()}"
    code, out, err = _run(capsys, "watch", "builtin", "--merlin", where, "--scan-shape", 3, 3, "--timeout", 5,
                          "--out", tmp_path / "out")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert f"cannot be applied to merlin://{where}" in line and "camera length is assumed" in line
    assert "--camera-length" in line and "listened" not in line and "armed" not in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_model_the_folder_geometry_cannot_serve_is_refused_before_waiting(tmp_path, capsys):
    """The same for a folder where frame files will land (no live extra needed): the built-in model
    and no pixel size, camera length or voltage given: refused at once (it ran the whole --timeout
    on the empty folder and ended `timeout`); with them given, it is not refused."""
    (tmp_path / "frames").mkdir()
    code, _, err = _run(capsys, "watch", "builtin", "--input", tmp_path / "frames", "--scan-shape", 3, 3,
                        "--timeout", 5, "--out", tmp_path / "out")
    assert code == 2 and "cannot be applied to" in err and "--camera-length" in err
    assert not (tmp_path / "out" / "frames_keep.json").exists()
    code, _, err = _run(capsys, "watch", "builtin", "--input", tmp_path / "frames", "--scan-shape", 3, 3,
                        *GIVEN, "--timeout", 0.5, "--out", tmp_path / "out")
    assert "cannot be applied" not in err
    assert json.loads((tmp_path / "out" / "frames_keep.json").read_text())["status"] == "timeout"


def test_a_second_watch_on_the_same_outputs_is_refused_and_the_first_says_waiting(tmp_path, capsys):
    """A first `watch` (its own process) waits for a folder the acquisition has not created yet:
    `<name>_keep.json` says `waiting` at once. A second `watch` with the same --out and --name is
    refused at start, in one line naming the lock and the first run's process (it started, and
    both wrote the same files). Once the first process is killed outright, its lock is stale: a
    new run takes the outputs over (--force, the files being there)."""
    out, frames = tmp_path / "out", tmp_path / "frames"  # frames: not created yet
    first = subprocess.Popen([sys.executable, "-m", "napari_sedclassify.cli", "watch", "builtin", "--input",
                              str(frames), "--scan-shape", "3", "3", *GIVEN, "--timeout", "600", "--out", str(out),
                              "--name", "run"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        keep, t0 = out / "run_keep.json", time.monotonic()
        while not keep.exists():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() - t0 < 300, "the first run never wrote its status"
            time.sleep(0.1)
        status = json.loads(keep.read_text())
        assert status["status"] == "waiting" and str(frames) in status["message"]
        assert status["frames_done"] == 0 and status["kept_positions"] == []
        assert (out / "run_watch.lock").read_text().strip() == str(first.pid)

        code, _, err = _run(capsys, "watch", "builtin", "--input", frames, "--scan-shape", 3, 3, *GIVEN,
                            "--timeout", 0.5, "--out", out, "--name", "run", "--force")
        assert code == 2
        (line,) = err.strip().splitlines()
        assert f"another live run (process {first.pid})" in line and "run_watch.lock" in line
        assert json.loads(keep.read_text())["status"] == "waiting"  # the first run's file, untouched
    finally:
        first.kill()  # no clean-up in the first process: its lock stays, stale
        first.wait()
    assert (out / "run_watch.lock").exists()
    frames.mkdir()
    code, _, err = _run(capsys, "watch", "builtin", "--input", frames, "--scan-shape", 3, 3, *GIVEN,
                        "--timeout", 0.5, "--out", out, "--name", "run", "--force")
    assert "another live run" not in err and json.loads(keep.read_text())["status"] == "timeout"
    assert not (out / "run_watch.lock").exists()  # removed at the end of the run


def test_keep_json_says_how_a_wait_that_never_ended_ended(tmp_path, capsys):
    """A .mib file never written: `waiting`, then `error` with the message the command printed (the
    file said nothing, or `waiting` forever, to a script polling it)."""
    code, _, err = _run(capsys, "watch", "builtin", "--input", tmp_path / "scan.mib", "--scan-shape", 3, 3, *GIVEN,
                        "--timeout", 0.3, "--out", tmp_path / "out")
    assert code == 2
    status = json.loads((tmp_path / "out" / "scan_keep.json").read_text())
    assert status["status"] == "error" and status["message"] in err and "no frame arrived" in err


def test_a_run_that_ends_without_every_position_exits_3(tmp_path, capsys):
    """20 of the 36 frames of a simulated 6 x 6 scan land in the folder, then none: the run ends
    `timeout` with the 20 frames classified and its outputs written, and exits 3 (not 0, as a
    complete run; not 2, as an error); `--help` says so. (It also printed a traceback: the frames
    classified after the calibration waited for it, and their latency line had no calibration.)"""
    sim = simulate.simulate_scan(tmp_path / "sim.npy", scan_shape=(6, 6), detector_px=128, session="A", seed=3)
    frames = np.load(sim.scan.source, mmap_mode="r").reshape((-1, 128, 128))
    (tmp_path / "frames").mkdir()
    for k in range(20):
        np.save(tmp_path / "frames" / f"f{k:03d}.npy", frames[k])
    code, out, err = _run(capsys, "watch", "builtin", "--input", tmp_path / "frames", "--scan-shape", 6, 6,
                          "--calibration", sim.scan.source, "--flatfield", sim.flatfield_path, "--timeout", 1,
                          "--out", tmp_path / "out", "--json")
    assert code == 3, err
    d = json.loads(out)
    assert d["status"] == "timeout" and d["frames"] == 20 and d["positions"] == 36
    status = json.loads((tmp_path / "out" / "frames_keep.json").read_text())
    assert status["status"] == "timeout" and status["frames_done"] == 20
    code, out, err = _run(capsys, "watch", "builtin", "--input", tmp_path / "frames", "--scan-shape", 6, 6,
                          "--calibration", sim.scan.source, "--flatfield", sim.flatfield_path, "--timeout", 1,
                          "--out", tmp_path / "out2")
    assert code == 3 and out.startswith("timeout: 20 of 36 frames classified") and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["watch", "--help"])
    assert "3 when the run ended with positions never classified" in " ".join(capsys.readouterr().out.split())
