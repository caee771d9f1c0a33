"""Thread settings for tests of tiny networks."""

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    """Tiny MLPs run faster on one torch thread, and far faster on a loaded machine: two threads that spin
    waiting for each other made a 1000-step MLP run take 50 s instead of 1.5 s there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
