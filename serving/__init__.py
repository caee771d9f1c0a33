"""Export, runtimes, the group scheduler, the BentoML and Triton services, metrics.

Not built yet: see the open issues.
"""
