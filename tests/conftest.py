import os

import pytest
import torch

# Without a GPU, opengemma's Triton kernels run on CPU tensors through Triton's interpreter (read when a
# kernel is defined, so before opengemma.kernels is imported): tests/test_kernels.py checks them that way.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")
    parser.addoption("--run-cuda", action="store_true", default=False,
                     help="run the GPU tier (tests marked cuda); fails, not skips, without a GPU")


def pytest_collection_modifyitems(config, items):
    tiers = {"slow": "slow tier: pass --run-slow", "cuda": "GPU tier: pass --run-cuda on a machine with a GPU"}
    for tier, reason in tiers.items():
        if config.getoption(f"--run-{tier}"):
            continue
        for item in items:
            if tier in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
