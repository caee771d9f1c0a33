"""GroupDiT (class- or text-conditioned), the flow-matching and DDPM transports, samplers, GroupDiff guidance and
checkpoints."""

from .checkpoint import load_model, save_model
from .config import SIZES, GroupDiTConfig, model_config, model_names
from .cross_attention import CrossSampleAttention
from .dit import GroupDiT, fixed_sample_ids, random_sample_ids
from .guidance import GUIDANCE_MODES, Guidance, guided_velocity, velocity_function
from .samplers import SAMPLERS, sample
from .schedule import GroupAttentionSchedule
from .text_condition import TextCondition
from .text_encoder import PromptTooLong, TextEncoder, TextEncoderRecord
from .transport import flow_matching_loss, interpolate, velocity_target

__all__ = [
    "GUIDANCE_MODES",
    "SAMPLERS",
    "SIZES",
    "CrossSampleAttention",
    "GroupAttentionSchedule",
    "GroupDiT",
    "GroupDiTConfig",
    "Guidance",
    "PromptTooLong",
    "TextCondition",
    "TextEncoder",
    "TextEncoderRecord",
    "fixed_sample_ids",
    "flow_matching_loss",
    "guided_velocity",
    "interpolate",
    "load_model",
    "model_config",
    "model_names",
    "random_sample_ids",
    "sample",
    "save_model",
    "velocity_function",
    "velocity_target",
]
