"""Figures, reports and tidy frames of results folders.

``analysis.load(DIR)``: a run folder or a sweep folder as pandas DataFrames
(analysis/frames.py); imported on first use, so ``import analysis.tables``
stays light.
"""
from __future__ import annotations


def load(path):
    """The tidy frames (:class:`analysis.frames.Frames`) of a run or sweep folder."""
    from analysis.frames import load as _load
    return _load(path)
