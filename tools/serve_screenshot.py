"""A screenshot of `swcm serve`'s try-it page (docs/serve-page.png): serve the given models, type a
sentence, translate it into the languages the page offers first, and capture the page in Debian's
chromium (playwright; `apt-get install chromium`, fonts-noto-core and fonts-noto-cjk for the scripts).

    python tools/serve_screenshot.py [--text 保存文档] [--out docs/serve-page.png] [NAME=]DIR [[NAME=]DIR ...]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys

from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--text", default="保存文档")
    parser.add_argument("--out", default="docs/serve-page.png")
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "swcm.cli", "serve", *args.models, "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = re.search(r"http://[\d.]+:\d+", server.stdout.readline()).group(0)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": args.width, "height": 800})
            page.goto(url)
            page.wait_for_selector("body[data-ready]")
            page.locator("#source-text").press_sequentially(args.text)
            page.locator("#source-text").press("Control+Enter")
            page.wait_for_selector("#results[data-done]", timeout=300_000)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)


if __name__ == "__main__":
    main()
