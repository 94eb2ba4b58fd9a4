"""Shared fixtures: a quick calibration and small configurations, so the suite stays fast."""

import pytest
import torch

from efflab.measurement.hardware import calibrate


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def quick_cal():
    """A small-size calibration (not cached): enough for MFU arithmetic in tests."""
    return calibrate(quick=True)


@pytest.fixture(scope="session")
def corpus():
    from efflab.data import load_corpus

    return load_corpus()
