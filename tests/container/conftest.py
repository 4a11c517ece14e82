"""Registers the `container` marker of tests/test_container.py (pytest collects this folder first)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "container: builds the container image with podman and checks it running "
        "(tests/container/run.sh; several minutes; deselect with -m 'not container')")
