"""Analyses of trained models: the long-range probe, head diagnostics and the claims report.

Each module backs one command (``skipxl probe``, ``skipxl heads``, ``skipxl claims``) and
keeps its math in pure functions so that the tests can check them on hand-built cases.
"""
