"""Simulator of holey-carbon / vitreous-ice narrow-beam diffraction scans."""
