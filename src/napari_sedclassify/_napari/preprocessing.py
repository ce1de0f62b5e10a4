"""One preprocessing pass of a scan as a background job (used by the centring, RIA and
training widgets): centres, descan fit, RIAs, virtual images and, when asked, crops."""

from __future__ import annotations

from .jobs import BackgroundJob
from .layers import find_scan, with_file_note
from .model_jobs import prepare
from .state import announce, flatfield_of, session_of


def preprocess_job(layer, params, on_done=None) -> BackgroundJob:
    """A job that preprocesses the scan of ``layer`` with ``params`` (PreprocessParams), keeps the
    result in the layer and calls ``on_done(result)`` on the UI thread. Warns when no flat-field
    is loaded (the frames are then used uncorrected)."""
    from napari.utils.notifications import show_warning

    from ..pipeline.preprocess import preprocess

    scan = find_scan(layer)
    flatfield = flatfield_of(layer)
    if flatfield is None:
        show_warning(
            f"No flat-field loaded for {layer.name}: frames are not gain-corrected "
            "(load one in the Flat-field widget)."
        )

    def work(report, cancelled):
        try:
            result = preprocess(scan, params, flatfield, progress=report, cancel=cancelled)
        except (ValueError, OSError) as exc:  # shown in napari's words (short_message): the fields that fix it
            changed = with_file_note(layer, exc)  # e.g. a file overwritten since it was opened: say so
            if changed is exc:
                raise
            raise changed from exc
        prepare("fcnn")  # training comes next: its child imports scikit-learn meanwhile
        return result

    geometry = scan.geometry

    def done(result):
        session_of(layer).store_result(result, flatfield=flatfield, geometry=geometry)
        announce(layer)
        if on_done is not None:
            on_done(result)

    return BackgroundJob(f"Preprocessing {layer.name}", work, on_returned=done)
