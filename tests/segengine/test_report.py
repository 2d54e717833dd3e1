"""`report.html` of a real tiny run and search, opened in headless Chromium (Debian's, driven by Playwright): no
console errors, no request leaves the file, every image decodes, the first screen shows the score, the curve and an
overlay, the trials table sorts, and the page fits a phone's width. Screenshots are kept in .test-artifacts/."""

from pathlib import Path

import pytest
import yaml
from engine_helpers import REPO

from launch import main

DATA = "synth:seed=5,n_train=8,n_val=4,size=64"
ARTIFACTS = REPO / ".test-artifacts"
LAPTOP, PHONE = (1366, 768), (390, 844)


@pytest.fixture(scope="module")
def reports(tmp_path_factory, ray_local):
    storage = tmp_path_factory.mktemp("reports")
    assert main(["train", "--encoder", "mini", "--data", DATA, "--input-size", "64", "64", "--batch-size", "2",
                 "--epochs", "3", "--val-every", "2", "--workers", "0", "--storage", str(storage),
                 "--name", "run"]) == 0
    search = storage / "search.yaml"
    search.write_text(yaml.safe_dump({
        "train": {"encoder": "mini", "data": DATA, "input_size": [64, 64], "batch_size": 2, "epochs": 2},
        "search": {"lr": {"grid": [3e-3, 1e-4, 1e-6]}}, "searcher": {"type": "random"}, "samples": 1,
        "scheduler": {"type": "fifo"}}))
    assert main(["tune", "--config", str(search), "--storage", str(storage), "--name", "search"]) == 0
    return {"run": storage / "run" / "report.html", "search": storage / "search" / "report.html"}


def _open(browser, path: Path, size: tuple[int, int]):
    """The page at `size`, loaded, with what went wrong on the way: console errors, page errors, failed requests
    and any request that is not the file itself or an embedded data: URL."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
    page.on("request", lambda r: problems.append(f"request: {r.url[:80]}")
            if not r.url.startswith(("data:", f"file://{path}")) else None)
    page.goto(f"file://{path}")
    page.wait_for_load_state("load")
    return page, problems


def _images_decode(page) -> list[int]:
    return page.evaluate("Promise.all([...document.images].map(i => i.decode().then(() => i.naturalWidth)))")


def test_the_run_report_opens_offline_and_shows_score_curve_and_overlay_first(reports, browser):
    path = reports["run"]
    assert path.stat().st_size < 5 * 2**20
    ARTIFACTS.mkdir(exist_ok=True)
    page, problems = _open(browser, path, LAPTOP)
    widths = _images_decode(page)
    assert len(widths) >= 8 and all(w > 0 for w in widths), widths  # curves, charts, heatmap, gallery, previews
    for selector in ("#kpi", "img[alt='validation mIoU curve']", "img[alt$='prediction']"):
        box = page.locator(selector).first.bounding_box()
        assert box is not None and box["y"] + min(box["height"], 40) <= LAPTOP[1], selector  # on the first screen
    assert "val_miou" in page.locator("#kpi").inner_text()
    page.screenshot(path=str(ARTIFACTS / "report-run-laptop.png"))
    phone, phone_problems = _open(browser, path, PHONE)
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE[0]  # no sideways scrolling
    phone.screenshot(path=str(ARTIFACTS / "report-run-phone.png"))
    assert problems + phone_problems == []


def test_the_search_report_sorts_its_trials_and_links_the_best_trial(reports, browser):
    path = reports["search"]
    page, problems = _open(browser, path, LAPTOP)
    assert all(w > 0 for w in _images_decode(page))
    header = page.locator("table.sortable th", has_text="best_val_miou")
    column = page.evaluate("[...document.querySelectorAll('table.sortable th')].findIndex("
                           "th => th.textContent === 'best_val_miou')")

    def values() -> list[float]:
        cells = page.locator(f"table.sortable tbody tr td:nth-child({column + 1})").all_inner_texts()
        return [float(v) for v in cells]

    header.click()
    assert values() == sorted(values()) and len(values()) == 3
    header.click()
    assert values() == sorted(values(), reverse=True)
    link = page.locator("a", has_text="the best trial's report").get_attribute("href")
    best = (path.parent / link).resolve()
    assert best.exists()
    trial, trial_problems = _open(browser, best, PHONE)
    assert all(w > 0 for w in _images_decode(trial))
    page.screenshot(path=str(ARTIFACTS / "report-search-laptop.png"), full_page=True)
    assert problems + trial_problems == []
