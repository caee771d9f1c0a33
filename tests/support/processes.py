"""Subprocesses of the command line: stopped part-way, or run where torch cannot be imported."""

import signal
import subprocess
import sys
import time
from pathlib import Path


def sigterm_once_logging(arguments: list[str], log: Path, timeout: float = 120) -> tuple[int, str]:
    """Run ``python -m groupdiff <arguments>``, send SIGTERM once ``log`` exists (training has taken a
    step), and return its exit code and combined output."""
    process = subprocess.Popen([sys.executable, "-m", "groupdiff", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while not log.is_file() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


# Python source that makes importing torch fail, as on the base install (the SDK and the client verbs)
NO_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is not installed (the base install has no torch)")

sys.meta_path.insert(0, NoTorch())
"""
