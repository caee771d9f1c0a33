"""Few-step group students distilled from a GroupDiff teacher.

Method 1, flow-anchored consistency distillation (FACM), with the teacher target shared with the sampler.
"""
