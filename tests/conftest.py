"""Shared fixtures: a quick calibration and small configurations, so the suite stays fast."""

import os

import pytest
import torch

from efflab.measurement.hardware import calibrate


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_long = pytest.mark.skip(reason="a long check: run it with `make test-long`")
    long_on = os.environ.get("EFFLAB_LONG_TESTS") == "1"
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "long" in item.keywords and not long_on:
            item.add_marker(skip_long)


@pytest.fixture(scope="session")
def quick_cal():
    """A small-size calibration (not cached): enough for MFU arithmetic in tests."""
    return calibrate(quick=True)


@pytest.fixture(scope="session")
def corpus():
    from efflab.core.data import load_corpus

    return load_corpus()
