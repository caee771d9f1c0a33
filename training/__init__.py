"""Data, latent cache, image encoders and neighbour index, group batch plan, run configs and the trainer
(single process and `torchrun` DDP)."""
