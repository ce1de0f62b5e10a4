"""napari sample data: a small simulated holey-carbon / vitreous-ice scan.

Three layers in scan space (nm): the image-mode overview registered onto the scan grid, the
integrated image (carrying the Scan, so every widget can use it) and the true class map.
"""

from __future__ import annotations

import numpy as np

from ..classes import ClassTable
from .layers import scan_layer_data


def sample_scan():
    """Layers for File > Open Sample: overview, integrated image (carrying the scan), truth labels."""
    from ..processing.virtual import virtual_image
    from ..simulate import sample_scan as simulate_sample

    sim = simulate_sample()
    step = sim.geometry.scan_step_nm
    to_nm = np.diag([step, step, 1.0])
    integrated = np.asarray(virtual_image(sim.scan), dtype=np.float32)
    colours = ClassTable.default().colours
    overview = (
        sim.overview,
        {
            "name": "overview (image mode)",
            "affine": to_nm @ sim.overview_to_scan,
            "units": ("nm", "nm"),
            "colormap": "gray",
        },
        "image",
    )
    image = scan_layer_data(sim.scan, integrated, name="simulated scan (integrated)")
    truth = (
        sim.truth,
        {
            "name": "truth",
            "scale": (step, step),
            "units": ("nm", "nm"),
            "colormap": {**colours, None: "#00000000"},
            "opacity": 0.5,
        },
        "labels",
    )
    return [overview, image, truth]
