"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test: on a shared 2-core machine one thread is faster than two
    under contention (NOTES.md), and the tests' small tensors gain nothing from more."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
