"""The Python API on data the project did not make: plain numpy and dask 4D arrays without
metadata, flood stacks given as arrays, and inputs that are not scans at all, each refused with
a message naming the scan and the problem before any work."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_sedclassify import Geometry, Scan
from napari_sedclassify.pipeline.preprocess import preprocess
from napari_sedclassify.pipeline.predict import predict_scan
from napari_sedclassify.pipeline.train import train_model
from napari_sedclassify.simulate import simulate_scan


@pytest.fixture(scope="module")
def sim():
    return simulate_scan(None, scan_shape=(8, 8), detector_px=128, session="A", seed=3)


@pytest.fixture(scope="module")
def frames(sim):
    return np.asarray(sim.scan.frame_source)


@pytest.fixture(scope="module")
def flood(sim):
    return np.asarray(sim.load_flatfield())


def test_plain_numpy_and_dask_arrays_preprocess_as_the_scan_they_hold(frames, flood):
    """A 4D array without metadata is a scan with the default (assumed) geometry: numpy and dask
    give the RIAs of the same frames wrapped in a Scan, to the bit."""
    want = preprocess(Scan(frames), flatfield=flood)
    for given in (frames, da.from_array(frames, chunks=(2, 8, 128, 128))):
        got = preprocess(given, flatfield=flood)
        assert got.beam_found.all()
        np.testing.assert_array_equal(got.ria, want.ria)
        np.testing.assert_array_equal(got.centres, want.centres)


def test_flood_stack_given_as_an_array_is_the_flood_file(tmp_path, sim, frames, flood):
    np.save(tmp_path / "flood.npy", flood)
    from_file = preprocess(sim.scan, flatfield=tmp_path / "flood.npy")
    from_array = preprocess(sim.scan, flatfield=flood)
    np.testing.assert_array_equal(from_array.ria, from_file.ria)
    with pytest.raises(ValueError, match=r"flat-field from an array: 64 x 64 px, does not match the detector"):
        preprocess(frames, flatfield=flood[:, :64, :64])


def test_train_on_arrays_and_predict_a_dask_array(sim, frames, flood):
    """Labels as arrays, scans as arrays with a stated geometry: a model trains and classifies a
    dask array of the same frames as it classifies the Scan."""
    geometry = sim.scan.geometry
    model = train_model([Scan(frames, geometry)], [sim.truth], model="fcnn", flatfield=flood)
    want = predict_scan(model, sim.scan, flatfield=flood)
    got = predict_scan(model, Scan(da.from_array(frames, chunks=(4, 8, 128, 128)), geometry), flatfield=flood)
    np.testing.assert_array_equal(got.class_map, want.class_map)
    assert (got.class_map > 0).all()


def test_a_one_point_scan_is_classified(sim, frames, flood):
    one = Scan(frames[2:3, 5:6], sim.scan.geometry)
    result = preprocess(one, flatfield=flood)
    assert result.scan_shape == (1, 1) and result.beam_found.all()


@pytest.mark.parametrize("make, error, words", [
    (lambda f: f.reshape(-1, 128, 128), ValueError,
     r"scan 1: expected a 4D array .* got shape \(64, 128, 128\); a stack of 64 frames needs its scan shape"),
    (lambda f: f[0, 0], ValueError, r"scan 1: expected a 4D array .* got shape \(128, 128\)"),
    (lambda f: f[:0, :0], ValueError, r"scan 1: the scan is empty: 0 x 0 positions of 128 x 128 px frames"),
    (lambda f: np.zeros((4, 4, 0, 0), np.uint16), ValueError, r"scan 1: the scan is empty: 4 x 4 positions of 0 x 0"),
    (lambda f: f > 2, ValueError, r"scan 1: frames of dtype bool cannot be processed"),
    (lambda f: f.astype(np.complex64), ValueError, r"scan 1: frames of dtype complex64 cannot be processed"),
    (lambda f: f.tolist(), TypeError, r"scan 1: expected a Scan, a file path or a 4D array .* got list"),
    (lambda f: None, TypeError, r"scan 1: expected a Scan, a file path or a 4D array .* got NoneType"),
])
def test_what_is_not_a_scan_is_refused_naming_the_problem(frames, make, error, words):
    given = make(frames)
    with pytest.raises(error, match=words):
        preprocess(given)
    with pytest.raises(error, match=words):
        train_model([given], [np.ones((8, 8), np.uint8)], model="svm")


def test_a_scan_object_with_frames_of_no_numbers_is_refused(frames):
    scan = Scan(frames > 2, Geometry((128, 128), 220.0, 900.0, 200.0))
    with pytest.raises(ValueError, match=r"scan 1: frames of dtype bool cannot be processed"):
        predict_scan("builtin", scan)


def test_a_binned_flood_for_an_unbinned_scan_is_refused_saying_so(frames, flood):
    """The Python API's shape error says what the CLI's says: the flood is the detector binned."""
    binned = flood.reshape(flood.shape[0], 64, 2, 64, 2).sum(axis=(2, 4))
    with pytest.raises(ValueError, match=r"64 x 64 px, does not match the detector \(128, 128\).*binned 2x2"):
        preprocess(frames, flatfield=binned)
