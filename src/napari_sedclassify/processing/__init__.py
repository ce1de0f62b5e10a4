"""Preprocessing engine: flat-field, centring, RIA, crops, virtual images, PCC.

No napari or Qt here.
"""
