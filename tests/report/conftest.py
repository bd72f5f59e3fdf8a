from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser import Browser, find_chromium


@pytest.fixture(scope="session")
def browser(tmp_path_factory) -> Iterator[Browser]:
    """One headless Chromium for the session (Debian's package, installed here when missing)."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed and apt-get (as root) cannot install it")
    chromium = Browser(binary, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chromium
    finally:
        chromium.close()
