"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium
opens the page against a server with a live worker, shows the numbers gearadmin
shows, and moves a running job's progress bar without a reload."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from test_http import gearadmin_status, start_web

from conftest import Conn
from gearmill.protocol.packets import PacketType as P


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--window-size=390,844",  # a phone's screen
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()


def shown(driver: webdriver.Chrome, css: str, want: str, timeout: float = 15.0) -> None:
    """Wait until the element's text (or, for a bar, its width) is ``want``. Read in
    one script: the page replaces its rows on every refresh."""
    script = (
        "const el = document.querySelector(arguments[0]);"
        "return el === null ? null : arguments[1] ? el.style.width : el.textContent;"
    )
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = driver.execute_script(script, css, "bar" in css)
        if got == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"{css}: {got!r}, wanted {want!r}")


def test_dashboard_shows_gearadmins_numbers_and_live_progress(browser: webdriver.Chrome) -> None:
    srv, web = start_web()
    try:
        with Conn(srv.port) as worker, Conn(srv.port) as client:
            worker.send(P.CAN_DO, b"resize")
            for i in range(3):
                client.send(P.SUBMIT_JOB_BG, b"resize", b"", b"%d" % i)
                client.expect(P.JOB_CREATED)
            worker.send(P.GRAB_JOB)
            handle = worker.expect(P.JOB_ASSIGN).split(b"\0")[0].decode()
            worker.send(P.WORK_STATUS, handle.encode(), b"3", b"10")
            total, running, workers = gearadmin_status(srv.port)["resize"]
            browser.get(web.base + "/")
            row = 'tr[data-function="resize"]'
            shown(browser, f"{row} td.queued", str(total - running))
            shown(browser, f"{row} td.running", str(running))
            shown(browser, f"{row} td.workers", str(workers))
            bar = f'tr[data-handle="{handle}"] .bar > span'
            shown(browser, bar, "30%")
            worker.send(P.WORK_STATUS, handle.encode(), b"7", b"10")
            shown(browser, bar, "70%")  # refreshed without a reload
            assert "live" in browser.find_element(By.ID, "status").text
            browser.save_screenshot(str(srv.tmp / "dashboard.png"))
            # nothing wider than the phone's screen but the scrolling tables
            width = browser.execute_script("return document.body.scrollWidth")
            assert width <= browser.execute_script("return window.innerWidth")
    finally:
        srv.stop()
