"""The toy atlas in a real browser: Debian's chromium driven by Playwright (pointed at the
system browser; Playwright never downloads one here). Skipped with a reason where either is
missing; ``.ci/run`` installs chromium so that CI runs these tests.

Playwright rather than Selenium: it waits for navigations and elements by itself (no sleeps, no
driver binary that must match the browser's version), and it reports page errors directly.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from atlas_site import CAR, toy_atlas_fixture

toy_atlas = toy_atlas_fixture()


@pytest.fixture
def tab(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    page.close()
    assert not errors, errors  # no JavaScript error on any page visited


def _url(path: Path) -> str:
    return path.resolve().as_uri()


def _path(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


def test_index_layer_search_unit_and_follow_an_input(toy_atlas, tab):
    site = toy_atlas.out
    tab.goto(_url(site / "index.html"))
    tab.click("table.layers a:has-text('mixed4b')")
    assert _path(tab.url) == (site / "layers" / "mixed4b.html").resolve()
    assert tab.locator(".grid .cell").count() == 3
    # typing filters the grid; Enter opens the unit
    tab.fill("form.search input", "64")
    assert tab.locator(".grid .cell:not(.hidden)").count() == 1
    tab.press("form.search input", "Enter")
    tab.wait_for_url("**/units/mixed4b/64.html")
    assert tab.locator("h1").inner_text() == CAR
    first = tab.locator("#inputs li.conn").first
    target = first.get_attribute("data-unit")
    first.locator(".id a").click()
    layer, ch = target.split(":")
    tab.wait_for_url(f"**/units/{layer}/{ch}.html")
    assert tab.locator("h1").inner_text() == target
    # and the way back: the input's outputs include the car unit, linked
    assert tab.locator(f"#outputs li.conn[data-unit='{CAR}'] .id a").count() == 1


def test_search_from_the_index_takes_short_names_and_explains_misses(toy_atlas, tab):
    tab.goto(_url(toy_atlas.out / "index.html"))
    tab.fill("form.search input", "4b:5")
    tab.press("form.search input", "Enter")
    msg = tab.locator(".search-msg")
    assert "mixed4b:5 has no page" in msg.inner_text()
    assert tab.url.endswith("index.html")
    tab.fill("form.search input", "4b:63")
    tab.press("form.search input", "Enter")
    tab.wait_for_url("**/units/mixed4b/63.html")


def test_no_broken_link_and_no_missing_image_on_the_whole_site(toy_atlas, tab):
    site = toy_atlas.out.resolve()
    todo, seen, n_images = [site / "index.html"], set(), 0
    while todo:
        page_path = todo.pop()
        if page_path in seen:
            continue
        seen.add(page_path)
        tab.goto(_url(page_path))
        # load the lazy images too, then check every one decoded
        tab.evaluate("""() => Promise.all([...document.images].map(i => {
            i.loading = 'eager';
            return i.complete && i.naturalWidth ? 1 : new Promise(r => {
                i.addEventListener('load', r); i.addEventListener('error', r); });
        }))""")
        broken = tab.evaluate("[...document.images].filter(i => !i.naturalWidth).map(i => i.src)")
        assert not broken, (page_path, broken)
        n_images += tab.evaluate("document.images.length")
        for href in tab.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            assert href.startswith("file://"), (page_path, href)
            target = _path(href.split("#")[0])
            assert target.is_file(), (page_path, href)
            if target.suffix == ".html" and target not in seen:
                todo.append(target)
    assert seen == {p.resolve() for p in site.rglob("*.html")}  # every page is reachable
    assert n_images > 100
