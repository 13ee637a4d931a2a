"""Screenshots of the Dagster UI's metadata plots, for the README.

Needs a running `dagster-webserver` on an MM_HOME with a few materializations (e.g. after
`mmsearch demo` and two catalog drops) and Debian's Chromium:

    MM_HOME=... DAGSTER_HOME=$MM_HOME/dagster .venv/bin/dagster-webserver -w workspace.yaml -p 3111 &
    .venv/bin/python docs/ui_screenshots.py --url http://127.0.0.1:3111 --out docs
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

ASSETS = ("search_evaluation", "fusion_model", "clean_products")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3111")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1200})
        for asset in ASSETS:
            page.goto(f"{args.url}/assets/{asset}", wait_until="networkidle", timeout=60_000)
            if page.get_by_role("button", name="Skip").count():  # the newsletter prompt
                page.get_by_role("button", name="Skip").click()
            page.get_by_role("button", name="Plots").click()
            page.wait_for_timeout(3000)
            path = args.out / f"ui-plots-{asset}.png"
            page.screenshot(path=str(path), full_page=True)
            print(path)
        browser.close()


if __name__ == "__main__":
    main()
