"""napari sample data: a small simulated holey-carbon / vitreous-ice scan."""

from __future__ import annotations


def sample_scan():
    """Layers for File > Open Sample: integrated image (carrying the scan), overview, truth labels."""
    from ..simulate import sample_layers

    return sample_layers()
