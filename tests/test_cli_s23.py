"""The `sedclassify` commands as a new user meets them (session 23): the wait for the workers of a
dask cluster that starts empty (an autoscaling cluster), and what a first try of each command
shows."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from distributed import LocalCluster

from napari_sedclassify.cli import main
from napari_sedclassify.processing import runner


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A simulated 8 x 8 scan on a 128 px detector, with its flat-field."""
    from napari_sedclassify.simulate import simulate_scan

    d = tmp_path_factory.mktemp("cli23")
    s = simulate_scan(d / "scan.npy", scan_shape=(8, 8), detector_px=128, seed=23)
    return {"dir": d, "scan": Path(s.scan.source), "flat": str(s.flatfield_path)}


@pytest.fixture
def empty_cluster():
    """A real dask.distributed scheduler on loopback with no workers (an autoscaling cluster
    before it has started any)."""
    with LocalCluster(n_workers=0, host="127.0.0.1", processes=True, dashboard_address=":0") as cluster:
        yield cluster


# -- the wait for workers ------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_worker_wait_option_sets_how_long_an_empty_cluster_is_waited_for(sim, tmp_path, empty_cluster, capsys):
    """--worker-wait S on the command line: the run stops after S seconds without workers (it was
    always 60 s), and the message says how to wait longer."""
    rc = main(["preprocess", str(sim["scan"]), "-o", str(tmp_path / "r.h5"), "--flatfield", sim["flat"],
               "--scheduler", empty_cluster.scheduler_address, "--worker-wait", "1.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "has had no workers for 1.5 s (none joined; 0 of 64 frames done)" in err
    assert "--worker-wait 600 on the command line, worker_wait_s=600 in Python" in err
    assert not (tmp_path / "r.h5").exists()


@pytest.mark.timeout(120)
def test_worker_wait_in_python_api(sim, tmp_path, empty_cluster):
    """The same wait from Python: batch_preprocess(..., worker_wait_s=...)."""
    from napari_sedclassify.pipeline.batch import batch_preprocess

    with pytest.raises(ConnectionError, match="has had no workers for 1.5 s"):
        batch_preprocess([sim["scan"]], [tmp_path / "r.h5"], flatfield=sim["flat"],
                         scheduler=empty_cluster.scheduler_address, worker_wait_s=1.5)
    assert not (tmp_path / "r.h5").exists()
    assert runner._worker_wait_s.get() is None  # the wait set for that run only


@pytest.mark.timeout(180)
def test_workers_that_join_within_the_wait_do_the_work(sim, tmp_path, empty_cluster, monkeypatch, capsys):
    """An autoscaling cluster: its first worker joins after the run has started waiting. With the
    default wait shorter than the worker's start (here 0.5 s) the run stopped; --worker-wait lets
    it wait for the worker, which then processes every frame."""
    monkeypatch.setattr(runner, "WORKERLESS_S", 0.5)
    address = empty_cluster.scheduler_address
    workers = []

    def start_worker():  # a separate `dask worker` process, as a cluster manager starts one
        workers.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                         "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    timer = threading.Timer(1.0, start_worker)
    timer.start()
    try:
        rc = main(["preprocess", str(sim["scan"]), "-o", str(tmp_path / "r.h5"), "--flatfield", sim["flat"],
                   "--scheduler", address, "--worker-wait", "120", "--json"])
    finally:
        timer.join()
        for w in workers:
            w.terminate()
            w.wait(30)
    out, err = capsys.readouterr()
    assert rc == 0, err

    assert json.loads(out)["frames"] == 64
    assert (tmp_path / "r.h5").exists()


@pytest.mark.parametrize("value", ["0", "-5", "nan", "soon"])
def test_worker_wait_must_be_a_positive_number_of_seconds(sim, tmp_path, value, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["preprocess", str(sim["scan"]), "-o", str(tmp_path / "r.h5"), "--worker-wait", value])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert "argument --worker-wait: a positive number of seconds" in err


def test_every_command_with_a_scheduler_takes_worker_wait(capsys):
    """--worker-wait sits beside --scheduler in every command's help, with its default as the
    engine's."""
    from napari_sedclassify.cli import SUBCOMMANDS, build_parser

    with_scheduler = []
    for name in SUBCOMMANDS:
        sub = build_parser(name)._subparsers._group_actions[0].choices[name]
        text = sub.format_help()
        if "--scheduler" in text:
            with_scheduler.append(name)
            assert "--worker-wait S" in text and f"(default {runner.WORKERLESS_S:g};" in text, name
    assert {"preprocess", "train", "evaluate", "predict", "reduce"} <= set(with_scheduler)


# -- what a first try of each command shows ------------------------------------------------------

def _examples(name: str) -> list[list[str]]:
    """The example command lines at the end of ``sedclassify NAME --help``, as argument lists."""
    import shlex

    from napari_sedclassify.cli import build_parser

    sub = build_parser(name)._subparsers._group_actions[0].choices[name]
    text = sub.format_help()
    assert "\nexamples:\n" in text, name
    lines = text.split("\nexamples:\n", 1)[1].strip().splitlines()
    return [shlex.split(line)[1:] for line in lines]


def test_every_help_ends_with_examples_that_parse():
    """Each command's help showed no example; now it ends with examples, each a command line that
    its parser accepts as written (options that exist, the values they take, the arguments needed)."""
    from napari_sedclassify.cli import SUBCOMMANDS, build_parser

    for name in SUBCOMMANDS:
        if name == "watch":  # its module is not this session's
            continue
        examples = _examples(name)
        assert examples
        for argv in examples:
            assert argv[0] == name
            args, unknown = build_parser(name).parse_known_args(argv)
            assert not unknown and args.command == name, argv


def test_info_names_its_argument_scan():
    from napari_sedclassify.cli import build_parser

    usage = build_parser("info")._subparsers._group_actions[0].choices["info"].format_usage()
    assert usage.rstrip().endswith("SCAN")


@pytest.mark.parametrize("command", ["predict", "evaluate", "reduce"])
def test_a_folder_given_as_model_is_one_clear_line(sim, tmp_path, command, capsys):
    """A folder as MODEL (or --model) was '[Errno 21] Is a directory: ...'."""
    folder = tmp_path / "models"
    folder.mkdir()
    scan = str(sim["scan"])
    argv = {"predict": ["predict", str(folder), scan, "-o", str(tmp_path / "out")],
            "evaluate": ["evaluate", str(folder), "--scans", scan, "--labels", scan],
            "reduce": ["reduce", scan, "--model", str(folder), "-o", str(tmp_path / "r.h5")]}[command]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Errno" not in err
    assert f"sedclassify {command}: error: {folder}: a folder, not a model file (.sedmodel)" in err
    assert not (tmp_path / "r.h5").exists() and not (tmp_path / "out").exists()


def test_reduce_names_classes_it_does_not_know_before_any_work(sim, tmp_path, capsys):
    """--classes ice was refused without naming the option; now named, before any output."""
    from napari_sedclassify.simulate import load_simulated

    np.save(tmp_path / "labels.npy", load_simulated(sim["scan"]).truth)
    rc = main(["reduce", str(sim["scan"]), "--labels", str(tmp_path / "labels.npy"), "--classes", "ice",
               "-o", str(tmp_path / "sub" / "r.h5")])
    err = capsys.readouterr().err
    assert rc == 2 and "sedclassify reduce: error: --classes ice: unknown class 'ice'" in err
    assert not (tmp_path / "sub").exists()



def test_force_never_replaces_an_input_with_the_output(sim, tmp_path, capsys):
    """`reduce scan.h5 ... -o scan.h5 --force` replaced the scan being read with its own reduction
    (and preprocess, train alike): an output that is one of the command's inputs, by any name, is
    refused before any work, and the input is left as it was."""
    from napari_sedclassify.simulate import load_simulated

    np.save(tmp_path / "labels.npy", load_simulated(sim["scan"]).truth)
    labels = str(tmp_path / "labels.npy")
    scan_h5 = tmp_path / "scan.h5"  # an HDF5 scan: a reduction keeping every class
    assert main(["reduce", str(sim["scan"]), "--labels", labels, "--classes", "1", "2", "3", "4",
                 "-o", str(scan_h5)]) == 0
    (tmp_path / "same.h5").symlink_to(scan_h5)
    before = scan_h5.read_bytes()
    capsys.readouterr()
    for argv in (["reduce", str(scan_h5), "--labels", labels, "-o", str(tmp_path / "same.h5"), "--force"],
                 ["preprocess", str(scan_h5), "-o", str(scan_h5), "--force"],
                 ["train", "--scans", str(scan_h5), "--labels", labels, "-o", str(scan_h5), "--force"]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and f"sedclassify {argv[0]}: error: " in err, err
        assert ("is the input" in err and "write the output to another file" in err) or \
            (argv[0] == "train" and "ends in .sedmodel" in err), err
    assert scan_h5.read_bytes() == before
    assert np.load(labels).shape == (8, 8)


def test_train_refuses_a_model_file_name_without_sedmodel(sim, tmp_path, capsys):
    """`train -o m.txt` wrote a model that napari's reader and the docs would not know as one:
    refused before any work, nothing written."""
    from napari_sedclassify.simulate import load_simulated

    np.save(tmp_path / "labels.npy", load_simulated(sim["scan"]).truth)
    out = tmp_path / "new" / "m.txt"
    rc = main(["train", "--scans", str(sim["scan"]), "--labels", str(tmp_path / "labels.npy"), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "m.txt: a model file's name ends in .sedmodel (e.g. m.sedmodel)" in err, err
    assert not out.parent.exists()


def test_labels_that_are_a_folder_or_an_image_are_named_as_such(sim, tmp_path, capsys):
    """A folder given as labels said "no such labels file"; an image (the integrated image saved as
    TIFF, counts 100-400) said only that ids must lie in 0..255."""
    import tifffile

    image = tmp_path / "integrated.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(100, 400, (8, 8)).astype(np.float32))
    for labels, said in ((tmp_path, "a folder, not a labels file"), (image, "an image, not a class map")):
        rc = main(["train", "--scans", str(sim["scan"]), "--labels", str(labels), "-o", str(tmp_path / "m.sedmodel")])
        err = capsys.readouterr().err
        assert rc == 2 and str(labels) in err and said in err, err
        assert "Traceback" not in err
