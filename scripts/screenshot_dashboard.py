"""Saves a screenshot of a running dashboard, once it is live and shows at least `--min-count` events.

    .venv/bin/python scripts/screenshot_dashboard.py [--url http://localhost:8000/] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from browser import Browser


def shown_count(driver) -> int:
    text = driver.find_element(By.CSS_SELECTOR, '.tile [data-figure="all.count"]').text
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else -1


def wait_until_live(driver, min_count: int, timeout: float) -> None:
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, "connection").text == "live" and shown_count(d) >= min_count
        and not d.find_element(By.ID, "drift-status").text.endswith("…"),  # the drift panel has drawn
        message=f"the page to be live with at least {min_count} events")


def save_full_page(driver, out: Path) -> None:
    """The whole page, below the fold included (Chrome DevTools' captureBeyondViewport)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                             "clip": clip})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://localhost:8000/")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--min-count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args(argv)
    with Browser(width=args.width) as driver:
        driver.get(args.url)
        wait_until_live(driver, args.min_count, args.timeout)
        save_full_page(driver, args.out)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
