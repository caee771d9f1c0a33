"""GroupDiff: group diffusion from training to serving."""

__version__ = "0.1.0"
