"""tqdm progress bars (on stderr) for the commands: frames while scans are simulated,
preprocessed or classified, epochs while a model trains."""

from __future__ import annotations

import sys
import threading


class Bars:
    """Callbacks for ``progress(done, total)`` (:meth:`frames`), ``preprocess_progress(i, n, done,
    total)`` / ``scan_progress`` (:meth:`scan`: frames over all scans) and ``progress(epoch, logs)``
    (:meth:`epoch`: training epochs). One bar at a time: a bar of another kind or description
    replaces the one shown. Thread-safe. Use as a context manager."""

    def __init__(self, frames_desc: str = "preprocess", epochs_desc: str = "train"):
        self.frames_desc, self.epochs_desc = frames_desc, epochs_desc
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
                self.bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr)
            self.bar.total = total
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            if unit == "frame" and n >= self.bar.n:  # drawn when tqdm's 0.1 s since the last drawing
                self.bar.update(n - self.bar.n)  # have passed, and at close: a drawing costs the workers
            else:  # 0.3-0.5 ms; an epoch is drawn when it ends
                self.bar.n = n
                self.bar.refresh()

    def frames(self, done: int, total: int) -> None:
        self.scan(0, 1, done, total)

    def scan(self, i: int, n: int, done: int, total: int, desc: str | None = None) -> None:
        self._show("frame", desc or self.frames_desc, n * total, i * total + done)

    def epoch(self, epoch: int, logs: dict, desc: str | None = None) -> None:
        shown = {k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "val_loss", "val_accuracy")}
        self._show("epoch", desc or self.epochs_desc, int(logs.get("max_epochs", 0)) or None, int(epoch), shown)

    def log(self, msg: str) -> None:
        from tqdm import tqdm

        self.close()
        tqdm.write(msg, file=sys.stderr)
