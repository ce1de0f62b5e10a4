"""HyperSpy/pyxem files: ``.hspy`` (HDF5, through h5py) and ``.zspy`` (a zarr v2 store, read by zarr 3)
open lazily, in the engine and through the napari reader. The files are laid out as HyperSpy writes
them (``Experiments/<title>/data`` beside axis and metadata groups), written here with h5py and zarr
(HyperSpy itself is not a dependency)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sedclassify.io import can_open, format_of, open_scan


@pytest.fixture
def data():
    return np.random.default_rng(0).poisson(3, (3, 4, 32, 32)).astype(np.uint16)


def _hspy(path, data):
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["file_format"] = "HyperSpy"
        f.attrs["file_format_version"] = "3.3"
        g = f.create_group("Experiments/__unnamed__")
        g.create_dataset("data", data=data, chunks=(1, 4, 32, 32))
        for i, (name, scale, units) in enumerate([("y", 30.0, "nm"), ("x", 30.0, "nm"), ("ky", 0.01, "1/Å"),
                                                   ("kx", 0.01, "1/Å")]):
            axis = g.create_group(f"axis-{i}")
            axis.attrs.update(name=name, scale=scale, offset=0.0, units=units, size=data.shape[i],
                              navigate=i < 2)
        g.create_group("metadata/Signal").attrs["signal_type"] = "electron_diffraction"
        g.create_group("original_metadata")
    return path


def _zspy(path, data):
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs.update(file_format="HyperSpy", file_format_version="3.3")
    g = root.create_group("Experiments").create_group("__unnamed__")
    g.create_array("data", shape=data.shape, dtype=data.dtype, chunks=(1, 4, 32, 32))[:] = data
    g.create_group("metadata").create_group("Signal").attrs["signal_type"] = "electron_diffraction"
    return path


@pytest.mark.parametrize("kind", ["hspy", "zspy"])
def test_hyperspy_files_open_lazily(tmp_path, data, kind):
    path = (_hspy if kind == "hspy" else _zspy)(tmp_path / f"scan.{kind}", data)
    assert format_of(path) == ("hdf5" if kind == "hspy" else "zarr_store")
    assert can_open(path)  # what the napari reader asks before taking the file
    scan = open_scan(path)
    assert scan.scan_shape == (3, 4) and tuple(scan.geometry.detector_shape) == (32, 32)
    assert scan.metadata["dataset"] == "Experiments/__unnamed__/data"
    np.testing.assert_array_equal(np.asarray(scan.data.compute()), data)


def test_napari_reader_patterns_include_hyperspy_files():
    from importlib.resources import files

    import yaml

    manifest = yaml.safe_load((files("napari_sedclassify") / "napari.yaml").read_text())
    patterns = manifest["contributions"]["readers"][0]["filename_patterns"]
    assert "*.hspy" in patterns and "*.zspy" in patterns
