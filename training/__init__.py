"""Data, latent cache, image encoders and neighbour index, group batch plan, trainer and recipes.

Not built yet: see the open issues.
"""
