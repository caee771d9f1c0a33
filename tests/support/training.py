"""The tiny training recipe the trainer tests share (Fashion-MNIST from Debian's package; make provides it)."""

FMNIST = "/usr/share/datasets/fashion-mnist"
TINY = [
    "model=DiT-T/4", "model_overrides={depth: 2, hidden_size: 64, num_heads: 4}", "batch_size=32",
    "plan.group_size=4", "plan.group_share=0.25", "plan.query=class", "plan.noise_variation=50",
    "optim.lr=0.001", "optim.warmup_steps=2", "log_every=2", "checkpoint_every=3", "sample.every=0",
    "sample.steps=2", "sample.rows=2", "precision=fp32", "device=cpu",
]
