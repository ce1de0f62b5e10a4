"""The thin napari layer: reader, sample data, widgets. Only this package imports napari/Qt."""
