"""The demo page (`GET /` with `Accept: text/html`): its HTTP contract, and a real headless Chromium
(Debian's `chromium` and `chromium-driver`, driven by selenium) that unlocks it with the token,
uploads two photographs, waits for the fused result and saves screenshots to tests/artefacts/
(demo-page.png; demo-unlock.png, demo-page-error.png, and demo-page-failed.png when it fails)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import time

import pytest
import requests
from PIL import Image

from .conftest import shared_file
from .server import REPO, FunctionServer

TOKEN = "demo-tok-7c2e9b41"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BROWSER_ACCEPT = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
ARTEFACTS = REPO / "tests" / "artefacts"
SOURCE, TARGET = "obama.jpg", "two_people.jpg"


@pytest.fixture(scope="module")
def server(model_root, tmp_path_factory):
    srv = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path_factory.mktemp("demo")),
                          "AUTH_TOKEN": TOKEN, "K_REVISION": "demo-00001"})
    yield srv
    srv.stop()


def _inline_blocks(html: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _assert_page_headers(r: requests.Response) -> None:
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = r.headers["Content-Security-Policy"]
    for directive in ("default-src 'none'", "img-src blob: data:", "connect-src 'self'", "form-action 'none'",
                      "frame-ancestors 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "no-store"


# -- HTTP --------------------------------------------------------------------------------------------
def test_page_with_token_is_self_contained(server):
    r = requests.get(server.url + "/", headers={**BROWSER_ACCEPT, **AUTH}, timeout=10)
    assert r.status_code == 200, r.text
    _assert_page_headers(r)
    assert 'id="fuse"' in r.text and 'type="file"' in r.text
    # nothing leaves the page's origin: no external scripts, styles, fonts, images or links
    assert "http://" not in r.text and "https://" not in r.text
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", r.text, re.I)
    assert not re.search(r"<(link|script)[^>]*\s(src|href)=(?!\"data:)", r.text, re.I)
    assert not re.search(r"@import|url\(", r.text)
    head = requests.head(server.url + "/", headers={**BROWSER_ACCEPT, **AUTH}, timeout=10)
    assert head.status_code == 200 and head.content == b""
    _assert_page_headers(head)


def test_csp_allows_exactly_the_inline_code(server):
    """Inline code runs by hash, so the policy must name every block, and no inline handlers or style
    attributes may exist (the policy would block them silently)."""
    page = requests.get(server.url + "/", headers={**BROWSER_ACCEPT, **AUTH}, timeout=10)
    unlock = requests.get(server.url + "/", headers=BROWSER_ACCEPT, timeout=10)
    csp = page.headers["Content-Security-Policy"]
    assert unlock.headers["Content-Security-Policy"] == csp  # the page is written into the unlock page's document
    for html in (page.text, unlock.text):
        for tag in ("script", "style"):
            blocks = _inline_blocks(html, tag)
            assert blocks and all(_sha256(block) in csp for block in blocks)
        assert not re.search(r"\s(on[a-z]+|style)\s*=", html.split("<script>")[0].split("</style>")[-1], re.I)


def test_without_token_the_page_is_a_401_unlock_form(server):
    for headers in (BROWSER_ACCEPT, {**BROWSER_ACCEPT, "Authorization": "Bearer wrong"}):
        r = requests.get(server.url + "/", headers=headers, timeout=10)
        assert r.status_code == 401
        _assert_page_headers(r)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert 'id="unlock"' in r.text and 'type="password"' in r.text
        assert 'id="fuse"' not in r.text  # the demo page itself is not given away
        assert "http://" not in r.text and "https://" not in r.text


def test_non_html_get_keeps_answering_as_before(server):
    for accept in ("application/json", "*/*", "application/json, text/html;q=0.5"):
        r = requests.get(server.url + "/", headers={"Accept": accept, **AUTH}, timeout=10)
        assert r.status_code == 405 and r.headers["Content-Type"] == "application/problem+json", accept
    r = requests.get(server.url + "/", headers={"Accept": "application/json"}, timeout=10)
    assert r.status_code == 401 and r.headers["Content-Type"] == "application/problem+json"
    r = requests.post(server.url + "/", headers=BROWSER_ACCEPT, timeout=10)  # only GET and HEAD serve the page
    assert r.status_code == 401 and r.headers["Content-Type"] == "application/problem+json"


def test_openapi_documents_the_page(server):
    from openapi_spec_validator import validate

    spec = requests.get(server.url + "/openapi.json", headers=AUTH, timeout=10).json()
    validate(spec)
    get = spec["paths"]["/"]["get"]["responses"]
    assert "text/html" in get["200"]["content"] and "text/html" in get["401"]["content"] and "405" in get


def test_without_auth_token_the_page_is_served_directly(model_root, tmp_path):
    srv = FunctionServer({"MODEL_PATH": str(model_root), "CACHE_PATH": str(tmp_path / "c"), "WARMUP": "false"},
                         wait_ready=False)
    try:
        r = requests.get(srv.url + "/", headers=BROWSER_ACCEPT, timeout=10)
        assert r.status_code == 200 and 'id="fuse"' in r.text
        _assert_page_headers(r)
    finally:
        srv.stop()


# -- a real browser ----------------------------------------------------------------------------------
def _browser():
    """selenium with Debian's chromium and chromedriver; skipped where they are missing, except in CI."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [p for p in (chromium, chromedriver) if not os.access(p, os.X_OK)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        message = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1360,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))


def test_browser_unlocks_uploads_and_shows_the_result(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    source, target = shared_file("images", SOURCE), shared_file("images", TARGET)
    ARTEFACTS.mkdir(exist_ok=True)
    started = time.perf_counter()
    driver = _browser()
    passed = False
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(server.url + "/")
        wait.until(lambda d: d.find_elements(By.ID, "unlock"))
        driver.save_screenshot(str(ARTEFACTS / "demo-unlock.png"))
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "open").click()
        wait.until(lambda d: d.find_elements(By.ID, "fuse"))  # the page replaced the unlock form
        assert driver.find_element(By.ID, "token").get_attribute("value") == TOKEN  # carried over for fusions
        driver.find_element(By.ID, "source").send_keys(str(source))
        driver.find_element(By.ID, "target").send_keys(str(target))
        wait.until(lambda d: d.execute_script("return document.getElementById('target-view').naturalWidth > 0"))
        fuse = driver.find_element(By.ID, "fuse")
        assert fuse.is_enabled()
        fuse.click()
        wait.until(lambda d: d.execute_script(
            "const r = document.getElementById('result'); return r.complete && r.naturalWidth > 0")
            or not d.find_element(By.ID, "error").get_attribute("hidden") and d.find_element(By.ID, "error").text)
        assert driver.find_element(By.ID, "error").get_attribute("hidden"), driver.find_element(By.ID, "error").text
        wait.until(lambda d: "swap" in d.find_element(By.ID, "timings").text)
        sizes = driver.execute_script("""
            const t = document.getElementById('target-view'), r = document.getElementById('result');
            return [t.naturalWidth, t.naturalHeight, r.naturalWidth, r.naturalHeight];""")
        assert sizes[:2] == sizes[2:] == [1126, 661]
        stages = [li.get_attribute("data-stage") for li in driver.find_elements(By.CSS_SELECTOR, "#timings li")]
        assert {"decode", "detect", "swap", "paste", "encode"} <= set(stages)
        assert driver.find_element(By.ID, "r-swapped").text == "1"
        assert driver.find_element(By.ID, "r-model").text == "test"
        curl = driver.find_element(By.ID, "curl").text
        assert f"-F source=@{SOURCE}" in curl and f"-F target=@{TARGET}" in curl
        assert '-H "Authorization: Bearer $TOKEN"' in curl and TOKEN not in curl
        assert server.url + "/" in curl
        driver.save_screenshot(str(ARTEFACTS / "demo-page.png"))

        # a dropped reference face (faces=reference shows its zone) and the curl command follows the options
        Select(driver.find_element(By.ID, "faces")).select_by_visible_text("reference")
        assert driver.find_element(By.ID, "drop-reference").is_displayed() and not fuse.is_enabled()
        driver.execute_script("""
            const dt = new DataTransfer();
            dt.items.add(document.getElementById('source').files[0]);
            document.getElementById('drop-reference').dispatchEvent(
                new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));""")
        wait.until(lambda d: "set" in d.find_element(By.ID, "drop-reference").get_attribute("class"))
        assert fuse.is_enabled()
        curl = driver.find_element(By.ID, "curl").text
        assert "-F faces=reference" in curl and f"-F reference=@{SOURCE}" in curl
        Select(driver.find_element(By.ID, "faces")).select_by_visible_text("largest")

        # an error is shown with its status and the problem's detail
        blank = tmp_path / "blank.png"
        Image.new("RGB", (320, 240), (200, 200, 200)).save(blank)
        driver.find_element(By.ID, "source").send_keys(str(blank))
        fuse.click()
        wait.until(lambda d: not d.find_element(By.ID, "error").get_attribute("hidden"))
        error = driver.find_element(By.ID, "error").text
        assert error.startswith("422") and "face" in error, error
        assert "422" in driver.find_element(By.ID, "status").text
        driver.save_screenshot(str(ARTEFACTS / "demo-page-error.png"))
        blocked = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not blocked, blocked
        passed = True
    finally:
        if not passed:
            driver.save_screenshot(str(ARTEFACTS / "demo-page-failed.png"))
        driver.quit()
    assert TOKEN not in server.logs()
    assert time.perf_counter() - started < 60
