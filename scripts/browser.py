"""Headless Chromium through Selenium, as Debian packages it (`chromium`, `chromium-driver`).

Used by the dashboard's browser test and by scripts/screenshot_dashboard.py. Selenium is given the
driver's path, so it never tries to download one. scripts/ensure_chromium.sh installs both.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)


class Browser:
    """A Chromium with a fresh profile, removed again on close: `with Browser() as driver: ...`."""

    def __init__(self, width: int = 1400, height: int = 1100):
        for path in (CHROMIUM, CHROMEDRIVER):
            if not os.access(path, os.X_OK):
                raise RuntimeError(f"{path} is missing: run scripts/ensure_chromium.sh (apt-get install chromium "
                                   "chromium-driver)")
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self._profile}")
        options.add_argument(f"--window-size={width},{height}")
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)

    def __enter__(self) -> webdriver.Chrome:
        return self.driver

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)
