"""tqdm progress bars (on stderr) for the model commands: frames while scans are
preprocessed, epochs while a model trains."""

from __future__ import annotations

import sys


class Bars:
    """Callbacks for ``preprocess_progress(i, n, done, total)`` / ``scan_progress`` (frames over
    all scans) and ``progress(epoch, logs)`` (training epochs). Use as a context manager."""

    def __init__(self, frames_desc: str = "preprocess", epochs_desc: str = "train"):
        self.frames_desc, self.epochs_desc = frames_desc, epochs_desc
        self.frames = self.epochs = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for bar in (self.frames, self.epochs):
            if bar is not None:
                bar.close()

    def scan(self, i: int, n: int, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.frames is None:
            self.frames = tqdm(total=n * total, unit="frame", desc=self.frames_desc, file=sys.stderr)
        self.frames.n = i * total + done
        self.frames.refresh()

    def epoch(self, epoch: int, logs: dict) -> None:
        from tqdm import tqdm

        if self.frames is not None:
            self.frames.close()
            self.frames = None
        if self.epochs is None:
            self.epochs = tqdm(total=int(logs.get("max_epochs", 0)) or None, unit="epoch", desc=self.epochs_desc,
                               file=sys.stderr)
        self.epochs.n = int(epoch)
        shown = {k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "val_loss", "val_accuracy")}
        if shown:
            self.epochs.set_postfix(shown, refresh=False)
        self.epochs.refresh()
