"""tqdm progress bars (on stderr) for the commands: frames while scans are simulated,
preprocessed or classified, epochs while a model trains. A prediction shows two stages, one
after the other, per scan: "preprocess" (the scan's frames) then "classify" (the recorded frames
the model has classified, block by block).

On a terminal a frame bar is redrawn at most every BAR_INTERVAL_S; written to a file or a pipe
(a batch job's log) at most every LOG_INTERVAL_S, and whole at its end: tqdm redraws in place with
carriage returns, which a file keeps: a 10-minute run could log 6,000 drawings on one line."""

from __future__ import annotations

import sys
import threading
from typing import Sequence


#: Seconds between two drawings of a frame bar on a terminal (tqdm's own default) ...
BAR_INTERVAL_S = 0.1
#: ... and in a file or pipe (an epoch bar is drawn at every epoch either way).
LOG_INTERVAL_S = 10.0


def tqdm_version_from_files() -> None:
    """Let tqdm's import skip ``importlib.metadata``: its ``tqdm.version`` module, which only asks
    ``importlib.metadata`` for tqdm's version (26 ms of imports: email, zipfile, csv..., then a
    scan of every path entry: 32 of the 39 ms ``import tqdm`` takes), is given beforehand with the
    same version read from the name of tqdm's ``.dist-info`` folder (``optional.installed_version``).
    A command calls it before anything imports tqdm; nothing changes where tqdm is imported already
    or is not installed as a distribution (tqdm then asks as usual)."""
    import types

    from ..optional import installed_version

    if "tqdm" in sys.modules or "tqdm.version" in sys.modules:
        return
    version = installed_version("tqdm")
    if version is None:
        return
    module = types.ModuleType("tqdm.version", "tqdm's version, from its .dist-info folder (cli._bars)")
    module.__version__ = version
    sys.modules["tqdm.version"] = module


def drawing_interval(stream) -> float:
    """BAR_INTERVAL_S where ``stream`` is a terminal, else LOG_INTERVAL_S (a closed stream: a file's)."""
    try:
        return BAR_INTERVAL_S if stream.isatty() else LOG_INTERVAL_S
    except (AttributeError, OSError, ValueError):
        return LOG_INTERVAL_S


class Bars:
    """Callbacks for ``progress(done, total)`` (:meth:`frames`), ``preprocess_progress(i, n, done,
    total)`` / ``scan_progress`` (:meth:`scan`: frames over all scans), ``classify_progress(i, n,
    done, total)`` (:meth:`classify`: the model's stage of a prediction, per scan) and
    ``progress(epoch, logs)`` (:meth:`epoch`: training epochs). One bar at a time: a bar of another
    kind or description replaces the one shown. Thread-safe. Use as a context manager."""

    def __init__(self, frames_desc: str = "preprocess", epochs_desc: str = "train", classify_desc: str = "classify"):
        self.frames_desc, self.epochs_desc, self.classify_desc = frames_desc, epochs_desc, classify_desc
        self.bar = self.key = None
        self._lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _show(self, unit: str, desc: str, total, n: int, postfix=None) -> None:
        from tqdm import tqdm

        with self._lock:
            if self.bar is None or self.key != (unit, desc):
                self.close()
                self.key = (unit, desc)
                if not hasattr(tqdm, "_lock"):  # else tqdm makes a multiprocessing lock (10 ms, in the
                    tqdm.set_lock(threading.RLock())  # middle of the frames); only threads draw bars here
                self.bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr,
                                mininterval=drawing_interval(sys.stderr))
            self.bar.total = total
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            if unit == "frame" and n >= self.bar.n:  # drawn when the interval since the last drawing
                self.bar.update(n - self.bar.n)  # has passed, and at close: a drawing costs the workers
            else:  # 0.3-0.5 ms; an epoch is drawn when it ends
                self.bar.n = n
                self.bar.refresh()

    def frames(self, done: int, total: int) -> None:
        self.scan(0, 1, done, total)

    def scan(self, i: int, n: int, done: int, total: int, desc: str | None = None) -> None:
        self._show("frame", desc or self.frames_desc, n * total, i * total + done)

    def classify(self, i: int, n: int, done: int, total: int) -> None:
        """Scan i of n: ``done`` of its ``total`` recorded frames classified by the model (reported
        once per block: 512 crops or 4096 radial profiles), on a bar of its own after the scan's
        preprocessing bar ("classify", "classify scan 2/3")."""
        self._show("frame", f"{self.classify_desc} scan {i + 1}/{n}" if n > 1 else self.classify_desc, total, done)

    def epoch(self, epoch: int, logs: dict, desc: str | None = None) -> None:
        shown = {k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "val_loss", "val_accuracy")}
        desc = desc or self.epochs_desc
        if "members" in logs:  # an ensemble's networks train one after another: a bar each, not one going back
            desc = f"{desc} member {logs['member']}/{logs['members']}"
        self._show("epoch", desc, int(logs.get("max_epochs", 0)) or None, int(epoch), shown)

    def note(self, text: str) -> None:
        """``text`` after the bar on show (what follows it while it stays full: "starting TensorFlow")."""
        with self._lock:
            if self.bar is not None:
                self.bar.set_postfix_str(text)

    def log(self, msg: str) -> None:
        from tqdm import tqdm

        self.close()
        tqdm.write(msg, file=sys.stderr)


def by_pass(bars: Bars, n_frames: int, desc: str | None = None):
    """A scan's ``progress(done, total)`` shown on ``bars`` as frames of the scan, the pass named:
    fitted centring reads every frame twice and counts both passes as one (total 2 x
    ``n_frames``; a bar showed 512/512 frames for a scan of 256), shown here as "preprocess pass
    1/2", then "pass 2/2", each over the scan's frames. ``desc``: the bar's name before the pass
    (default: ``bars.frames_desc``)."""
    desc = desc or bars.frames_desc

    def show(done: int, total: int) -> None:
        passes = max(1, round(total / max(n_frames, 1)))
        if passes == 1:
            return bars.scan(0, 1, done, total, desc=desc)
        k = min(max(done - 1, 0) // n_frames, passes - 1)  # a pass's last frame is shown on its own bar
        bars.scan(0, 1, done - k * n_frames, n_frames, desc=f"{desc} pass {k + 1}/{passes}")

    return show


def scans_by_pass(bars: Bars, n_frames: Sequence[int]):
    """A ``scan_progress(i, n, done, total)`` (scan i of n; ``n_frames``: each scan's frames) shown
    on ``bars``, a bar per scan ("preprocess scan 2/3", its "classify scan 2/3" bar follows), by
    :func:`by_pass` ("preprocess scan 2/3 pass 1/2" when fitted centring reads its frames twice)."""
    def show(i: int, n: int, done: int, total: int) -> None:
        by_pass(bars, n_frames[i], f"{bars.frames_desc} scan {i + 1}/{n}" if n > 1 else None)(done, total)

    return show
