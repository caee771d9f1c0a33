"""DiT's checkpoint layout, written independently of our module tree: the conversion tests load weights of it."""


def dit_shapes(config, out_channels: int) -> dict[str, tuple[int, ...]]:
    """DiT's parameter names and shapes (no ``pos_embed``): ``out_channels`` C, or 2C with learned σ."""
    d, p, c = config.hidden_size, config.patch_size, config.in_channels
    shapes = {
        "x_embedder.proj.weight": (d, c, p, p), "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (config.num_classes + 1, d),
        "final_layer.linear.weight": (p * p * out_channels, d), "final_layer.linear.bias": (p * p * out_channels,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d), "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(config.depth):
        shapes |= {
            f"blocks.{i}.attn.qkv.weight": (3 * d, d), f"blocks.{i}.attn.qkv.bias": (3 * d,),
            f"blocks.{i}.attn.proj.weight": (d, d), f"blocks.{i}.attn.proj.bias": (d,),
            f"blocks.{i}.mlp.fc1.weight": (4 * d, d), f"blocks.{i}.mlp.fc1.bias": (4 * d,),
            f"blocks.{i}.mlp.fc2.weight": (d, 4 * d), f"blocks.{i}.mlp.fc2.bias": (d,),
            f"blocks.{i}.adaLN_modulation.1.weight": (6 * d, d), f"blocks.{i}.adaLN_modulation.1.bias": (6 * d,),
        }
    return shapes
