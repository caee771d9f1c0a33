"""Exceptions the command line turns into exit codes (kept free of heavy imports: the CLI loads it first)."""


class RunStopped(Exception):
    """A run stopped by SIGTERM before its last step, with its checkpoint saved: a rerun resumes it.

    Raised by commands that go on to use the finished run (benchmarks), so they exit without a result."""
