"""Few-step group students distilled from a GroupDiff teacher.

Not built yet: see the open issues.
"""
