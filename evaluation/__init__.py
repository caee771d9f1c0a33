"""Evaluation: sample grids now; FID, precision/recall, class accuracy and group diversity to come."""

from .grid import group_grid, save_group_grid

__all__ = ["group_grid", "save_group_grid"]
