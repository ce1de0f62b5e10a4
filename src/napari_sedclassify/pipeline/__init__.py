"""Workflows the CLI and the napari widgets both call: one module per job
(``preprocess``, ``train``, ``predict``, ``reduce``...). No napari or Qt here."""
