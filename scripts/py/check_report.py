"""Loads a flyt report in headless Chromium (Debian's, driven by Playwright) and prints what a reader would see
as JSON: console errors, page errors, failed requests, the accuracy table's rows, images that did not decode,
the number of charts, the paired-difference chart and the ceiling note. Saves a full-page screenshot.

usage: check_report.py REPORT.html SCREENSHOT.png [CHROMIUM]
"""

import json
import pathlib
import sys

from playwright.sync_api import sync_playwright

html = pathlib.Path(sys.argv[1]).resolve()
shot = sys.argv[2]
exe = sys.argv[3] if len(sys.argv) > 3 else "/usr/bin/chromium"

console_errors, page_errors, failed = [], [], []
with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path=exe,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.on("requestfailed", lambda r: failed.append(r.url[:120]))
    page.goto(html.as_uri(), wait_until="load")
    rows = page.eval_on_selector_all(
        "#accuracy-table tr", "rs => rs.map(r => Array.from(r.cells).map(c => c.innerText.trim()))"
    )
    images = page.eval_on_selector_all(
        "img", "is => is.map(i => ({ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}))"
    )
    charts = page.eval_on_selector_all("svg", "s => s.length")
    visible = page.is_visible("#accuracy-table")
    headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.innerText)")
    paired = page.eval_on_selector_all("#paired svg", "s => s.length")
    ceiling = page.eval_on_selector_all("#ceiling", "ps => ps.map(p => p.innerText)")
    page.screenshot(path=shot, full_page=True)
    browser.close()

print(
    json.dumps(
        {
            "console_errors": console_errors,
            "page_errors": page_errors,
            "failed_requests": failed,
            "table": rows,
            "table_visible": visible,
            "images": len(images),
            "broken_images": sum(1 for i in images if not i["ok"]),
            "charts": charts,
            "headings": headings,
            "paired_charts": paired,
            "ceiling_note": ceiling[0] if ceiling else None,
        }
    )
)
