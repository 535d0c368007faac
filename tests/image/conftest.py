"""The image tests: test_image.py builds the node image and runs it in a lab, which
takes minutes, so it runs only under ``make test-image`` (VNETDP_IMAGE_TEST=1);
the other files here are quick and run with ``make test``."""
from __future__ import annotations

import os

import pytest

IMAGE_TEST_VAR = "VNETDP_IMAGE_TEST"


def pytest_collection_modifyitems(config, items):
    if os.environ.get(IMAGE_TEST_VAR) == "1":
        return
    skip = pytest.mark.skip(reason=f"builds and runs the node image: make test-image ({IMAGE_TEST_VAR}=1)")
    for item in items:
        if item.path.name == "test_image.py":
            item.add_marker(skip)
