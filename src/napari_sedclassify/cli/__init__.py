"""The ``sedclassify`` command line.

Each subcommand lives in its own module ``napari_sedclassify.cli.<name>`` that defines
``register(subparsers)``; this module only dispatches, so ``sedclassify --help`` stays fast.

The console script imports this module before :func:`entry` runs, and a Ctrl-C then prints a
traceback: so it imports nothing at its top but ``sys`` and ``time`` (built in, loaded with the
interpreter), and everything else inside :func:`entry`, which turns Ctrl-C into one line. What
is left of that window is the interpreter's own start (site, the package's ``__init__``).
"""

from __future__ import annotations

import sys
import time

#: Subcommand modules, in the order shown by ``--help``.
SUBCOMMANDS = ["simulate", "info", "preprocess", "calibrate", "train", "evaluate", "predict", "propose", "demo",
               "watch", "reduce"]


class CLIError(Exception):
    """An error for the user: printed as one clear line, exit status 2."""


def add_command(subparsers, name: str, run, help: str, description: str) -> argparse.ArgumentParser:  # noqa: F821
    """The parser of subcommand ``name``, which calls ``run(args)``."""
    p = subparsers.add_parser(name, help=help, description=description, formatter_class=_help_formatter())
    p.set_defaults(func=run, command_parser=p)
    return p


def add_examples(p, *commands: str) -> None:
    """End the help of subcommand parser ``p`` (made by :func:`add_command`) with ``commands``,
    one example command line each, shown as written."""
    p.epilog = "examples:\n" + "\n".join(f"  {c}" for c in commands)


def _help_formatter():
    """argparse's help formatter, which keeps the lines of an "examples:" epilog as written."""
    import argparse

    class HelpFormatter(argparse.HelpFormatter):
        def _fill_text(self, text, width, indent):
            if text.startswith("examples:"):
                return "".join(indent + line for line in text.splitlines(keepends=True))
            return super()._fill_text(text, width, indent)

    return HelpFormatter


def build_parser(only: str | None = None) -> argparse.ArgumentParser:  # noqa: F821 (imported inside)
    """The command line's parser; only: the one subcommand to register (its module alone is
    imported: 8-10 ms less before a command starts), default all of them (``--help``)."""
    import argparse
    import importlib

    from .. import __version__

    parser = argparse.ArgumentParser(prog="sedclassify", description=(
        "Classify narrow-beam electron diffraction scans (carbon, amorphous ice, "
        "crystalline ice, mixed): simulate, read, preprocess, train, predict, reduce."))
    parser.add_argument("--version", action="version", version=f"sedclassify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [only] if only in SUBCOMMANDS else SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(argv, t0)
    except KeyboardInterrupt:  # Ctrl-C before the command ran (parsing, imports): one line, as during it
        return interrupted(argv)


def interrupted(argv) -> int:
    """Say that Ctrl-C ended the command, in one line on standard error (no traceback): status 130.

    From here on, errors in finalizers are not reported: what the interrupt left half-made (a tqdm
    bar whose ``__init__`` it cut before ``pos`` was set) is collected once the interrupt's
    traceback is dropped, and its ``__del__`` printed "Exception ignored in ..." and a traceback
    after that line."""
    sys.unraisablehook = _ignore_unraisable
    command = f" {argv[0]}" if argv and argv[0] in SUBCOMMANDS else ""
    try:
        print(f"sedclassify{command}: interrupted", file=sys.stderr)
    except (OSError, ValueError):
        pass
    return 130


def _ignore_unraisable(unraisable) -> None:
    """``sys.unraisablehook`` once a command is interrupted (see ``interrupted``)."""


def _main(argv: list[str], t0: float) -> int:
    parser = build_parser(argv[0] if argv else None)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand, with its own usage (argparse would show the top level's)
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from ..optional import MissingOptionalDependency
    from ..pipeline import tally

    _collect_from_here()
    try:
        with tally.recording() as frames:
            rc = int(args.func(args) or 0)
        if rc == 0:
            print(_speed_line(args.command, time.perf_counter() - t0, sum(frames.values())), file=sys.stderr)
            kernels = sys.modules.get("napari_sedclassify.processing.kernels")  # only where frames ran
            hint = kernels.missing_module_hint() if kernels is not None else None
            if hint:
                print(f"sedclassify: {hint}", file=sys.stderr)
        return rc
    except BrokenPipeError:  # the reader went away (`sedclassify info SCAN | head`): end quietly, as
        _quiet_stdout()      # a command killed by SIGPIPE would (status 141)
        return 141
    # MissingOptionalDependency: e.g. the CNN without TensorFlow, its message gives the pip command
    except (CLIError, MissingOptionalDependency, FileNotFoundError, ValueError, OSError) as exc:
        print(f"sedclassify {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted([args.command])
    finally:  # an output folder the command made and left empty (stopped before it wrote) goes
        options = sys.modules.get(f"{__name__}._scan_options")  # loaded by the commands that make one
        if options is not None:
            options.remove_created_empty_folders()


def _collect_from_here() -> None:
    """Switch the cyclic garbage collector back on where :func:`entry` switched it off, the
    objects made so far (numpy's, the parser's) set aside for good: a command's collections go
    through what it makes, not through the modules. Nothing where the collector runs already
    (``main`` called from Python: a test, a notebook)."""
    import gc

    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _quiet_stdout() -> None:
    """Point standard output at the null device: nothing more is written to a closed pipe (nor
    at the interpreter's exit, which would print a second error)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stream without a file (a test's capture)
        pass


#: The commands' GIL switch interval (s; Python's default is 0.005): see :func:`entry`.
COMMAND_SWITCH_INTERVAL_S = 0.0005


def entry() -> None:
    """The ``sedclassify`` console script (and ``python -m napari_sedclassify.cli``): ``main()``,
    then a quick exit. Python's own teardown of the interpreter afterwards (unloading
    scikit-learn, SciPy, numba and LLVM object by object) took 0.5-0.7 s after every command; by
    then every output is written and closed (atomically), so the exit handlers are run
    (temporary files, thread pools, logging) and the process ends without that teardown.

    The numba extensions of other installed packages are not loaded (``SEDCLASSIFY_NUMBA_EXTENSIONS``
    set to "skip", unless set already; the kernels use none): 60-90 ms before the first frame.

    The interpreter hands the GIL over every 0.5 ms instead of 5 ms (``COMMAND_SWITCH_INTERVAL_S``):
    ``predict`` with a CNN, or an FCNN or SVM file without arrays, imports TensorFlow or
    scikit-learn and skops (about 2 s of Python) in a thread while the frames are processed, and
    the processing threads, which hold the GIL only between kernel calls, waited up to 5 ms for it
    each time (docs/performance.md, session 8).

    numpy's OpenBLAS threads go to sleep as soon as a call is done (``OPENBLAS_THREAD_TIMEOUT``
    set to 4, unless set already; read when numpy is imported, just below): by default each waits
    2^28 cycles spinning, and OpenBLAS starts its threads as numpy is imported, so every command
    burnt about 0.1 s of a core in its first 0.15 s (perf: ``blas_thread_server``, 8 % of a
    ``preprocess``'s CPU time) while its own threads wanted both cores; multi-threaded BLAS calls
    (a CNN's convolutions in numpy) still run on every core.

    numpy advises huge pages for its arrays only when the files named on the command line hold
    2 GiB or more (``pages.small_pages``): in a shorter run, the first blocks of frames read into
    fresh memory waited for the kernel to compact memory longer than huge pages saved
    (docs/performance.md, session 12).

    The cyclic garbage collector waits until the command runs (:func:`_collect_from_here`):
    importing numpy makes some 60,000 objects that live as long as the process, and the
    collector went through them again and again while they were made (about 9 % of numpy's
    import, docs/performance.md, session 31); they are then set aside for good (``gc.freeze``)
    and the collector runs as usual on what the command makes."""
    import gc

    gc.disable()  # until _collect_from_here, once the start-up's imports are done
    import atexit
    import os

    try:  # Ctrl-C at any moment from here: one line, "sedclassify COMMAND: interrupted" (no traceback)
        from ..pages import input_bytes, small_pages

        sys.setswitchinterval(COMMAND_SWITCH_INTERVAL_S)
        # a process of our own: numba need not load other packages' numba extensions (processing._kernels)
        os.environ.setdefault("SEDCLASSIFY_NUMBA_EXTENSIONS", "skip")
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before numpy's import (small_pages)
        small_pages(input_bytes(sys.argv[1:]))  # huge-page advice for long runs only (pages.py)
        from ._bars import tqdm_version_from_files

        tqdm_version_from_files()  # tqdm's import without importlib.metadata (_bars.py)
        rc = main()
    except KeyboardInterrupt:
        rc = interrupted(sys.argv[1:])
    try:
        atexit._run_exitfuncs()  # CPython's own call at exit: the handlers, in their order
    except KeyboardInterrupt:
        rc = rc if rc == 130 else interrupted(sys.argv[1:])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (| head), a closed stream
            pass
    os._exit(rc)


def _speed_line(command: str, seconds: float, frames: int) -> str:
    """The closing line of every command: wall time from the start of ``main`` and frames/s."""
    line = f"sedclassify {command}: {seconds:.2f} s"
    if frames:
        line += f", {frames} frames, {frames / max(seconds, 1e-9):.0f} frames/s"
    return line
