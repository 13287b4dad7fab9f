"""Fixtures the test files share; and, before any test imports Ray, the settings Ray reads once at import."""

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray node binds to 127.0.0.1


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (reductions on a shared 2-core machine are far slower with
    more); files that need it say `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
