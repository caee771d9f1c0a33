"""Evaluation: sample grids, sample files (ADM .npz, PNG folders), FID and precision/recall on the TF
Inception, the project's classifier (accuracy, fd_classifier), group diversity and S_cross."""

from .evaluate import METRICS, EvalSettings, evaluate
from .images import SampleSet, load_npz, load_png_folder, load_samples, save_npz

__all__ = [
    "METRICS",
    "EvalSettings",
    "SampleSet",
    "evaluate",
    "load_npz",
    "load_png_folder",
    "load_samples",
    "save_npz",
]
