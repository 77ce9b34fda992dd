"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium
opens the page against a server with a live worker, shows the numbers gearadmin
shows, and moves a running job's progress bar without a reload; on servers sharing
a PostgreSQL store it lists them as admin ``nodes`` does."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from test_http import gearadmin_status, start_web

import gearmill as gm
from conftest import Conn, Running, running_worker, start_gearmill
from gearmill.client.admin import AdminClient
from gearmill.protocol.packets import PacketType as P

sys.path.insert(0, str(Path(__file__).parents[1] / "stores"))
from storekit import Backend, make_backend
from test_http import Web


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


def click(driver: webdriver.Chrome, css: str, timeout: float = 15.0) -> None:
    """Click the element, again if the page replaced it meanwhile (it redraws every 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            assert time.monotonic() < deadline, f"{css}: replaced on every try"
            time.sleep(0.05)


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
            # one server on its own store: no list of servers
            assert not browser.find_element(By.ID, "servers").is_displayed()
            browser.save_screenshot(str(srv.tmp / "dashboard.png"))
            # nothing wider than the phone's screen but the scrolling tables
            width = browser.execute_script("return document.body.scrollWidth")
            assert width <= browser.execute_script("return window.innerWidth")
    finally:
        srv.stop()


TOKEN = "dashboard-token-0123456789"


def test_dead_letters_requeue_from_the_page_and_schedules_are_listed(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    conf = tmp_path / "gearmill.toml"
    conf.write_text(
        '[[schedule]]\nname = "nightly"\ncron = "30 2 * * *"\nfunction = "report"\ndata = "all"\n'
    )
    srv, web = start_web(
        *("--retry-on", "fail,exception", "--retry-max-attempts", "2"),
        *("--http-token", TOKEN, "--config", str(conf)),
    )
    try:
        # a background job fails twice and lands in the dead set with its failure text
        with Conn(srv.port) as failing, Conn(srv.port) as client:
            failing.send(P.CAN_DO, b"resize")
            client.send(P.SUBMIT_JOB_BG, b"resize", b"img-7", b"img-7.png")
            handle = client.expect(P.JOB_CREATED)
            failing.send(P.GRAB_JOB)
            failing.expect(P.JOB_ASSIGN)
            failing.send(P.WORK_FAIL, handle)
            failing.send(P.GRAB_JOB)
            failing.expect(P.JOB_ASSIGN)
            failing.send(P.WORK_EXCEPTION, handle, b"Traceback: disk full")
            failing.send(P.GRAB_JOB)
            failing.expect(P.NO_JOB)
        h = handle.decode()
        browser.get(web.base + "/")
        row = f'#dead tr[data-handle="{h}"]'
        shown(browser, f"{row} td.error", "Traceback: disk full")
        shown(browser, "#deadcount", "(1)")
        # the recurring job, with its next run (02:30 UTC)
        sched = '#schedules tr[data-schedule="nightly"]'
        shown(browser, f"{sched} td.cron", "30 2 * * *")
        shown(browser, f"{sched} td.function", "report")
        next_run = browser.execute_script(
            "return document.querySelector(arguments[0]).textContent", f"{sched} td.next"
        )
        assert next_run.endswith("02:30:00Z"), next_run
        browser.save_screenshot(str(srv.tmp / "dashboard-dead.png"))

        # without the token the button is refused and the job stays dead
        click(browser, f"{row} button.requeue")
        alert = WebDriverWait(browser, 15).until(expected_conditions.alert_is_present())
        assert "token" in alert.text
        alert.accept()
        assert h in [d["handle"] for d in web.json("/api/dead")["jobs"]]  # type: ignore[index]

        # with it, the job goes back to its queue and a real worker runs it
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        click(browser, f"{row} button.requeue")
        shown(browser, "#deadcount", "(none)")
        ran: list[bytes] = []

        def resize(job: gm.WorkerJob) -> bytes:
            ran.append(job.data)
            return b"done"

        worker = gm.Worker(f"127.0.0.1:{srv.port}")
        worker.register("resize", resize)
        with running_worker(worker):
            shown(browser, 'tr[data-function="resize"] td.done', "1")
        assert ran == [b"img-7.png"]
        done = web.json(f"/api/jobs/{h}")
        assert isinstance(done, dict) and (done["state"], done["outcome"]) == (
            "finished",
            "completed",
        )
        browser.save_screenshot(str(srv.tmp / "dashboard-requeued.png"))
    finally:
        srv.stop()


@pytest.fixture(name="postgresql")
def postgresql_fixture(tmp_path: Path) -> Iterator[Backend]:
    yield from make_backend("postgresql", tmp_path)


def test_servers_sharing_a_store_are_listed_as_nodes_lists_them(
    browser: webdriver.Chrome, postgresql: Backend
) -> None:
    def start(node: str, *extra: str) -> Running:
        return start_gearmill(
            *("--store", postgresql.url, "--node-id", node, "--lease", "2", *extra)
        )

    a = start("a", "--http", "127.0.0.1:0")
    b = start("b")
    try:
        web = Web(a, a.tmp / "server.log")
        with Conn(b.port) as client:
            for i in range(3):
                client.send(P.SUBMIT_JOB_BG, b"nobody", b"j%d" % i, b"x")
                client.expect(P.JOB_CREATED)  # committed: b holds them
        browser.get(web.base + "/")
        shown(browser, '#nodes tr[data-node="b"] td.jobs', "3")
        shown(browser, '#nodes tr[data-node="a"] td.jobs', "0")
        shown(browser, '#nodes tr[data-node="a"] td.self', "this server")
        shown(browser, '#nodes tr[data-node="b"] td.self', "")
        assert browser.find_element(By.ID, "servers").is_displayed()
        # the same servers and jobs as the admin command
        with AdminClient(a.address) as admin:
            listed = {n.node: n.jobs for n in admin.nodes()}
        assert listed == {"a": 0, "b": 3}
        rows = browser.execute_script(
            "return [...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node)"
        )
        assert sorted(rows) == sorted(listed)
        browser.save_screenshot(str(a.tmp / "dashboard-nodes.png"))
    finally:
        a.stop()
        b.stop()
