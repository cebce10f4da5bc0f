"""The dashboard in a real headless Chromium (the system's, driven by Selenium) over a live
system on a real redis-server: every page shows what the system holds, a dead letter is
redriven by clicks through the confirmation, a deferred message is cancelled through the
browser's confirm dialog, and the overview's counts refresh without a reload.

A screenshot of each page goes to the test's tmp_path, or to the folder named by
TEST_SCREENSHOTS. Without chromium and chromedriver on PATH the module is skipped, unless
TEST_REQUIRE_BROWSER=1 (as in CI), where that fails instead. These are TEST_ settings, not
ACTOR_SYSTEM_ ones: ActorSystem.from_env refuses an ACTOR_SYSTEM_ variable it does not know."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from actor_system import ActorSystem, ActorType, Context
from actor_system.dashboard import app
from tests.actors import Add, Boom, CounterState, Note, counter, logger
from tests.dashboard_server import serving
from tests.reminder_actors import Arm, timer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = [pytest.mark.integration]

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
REQUIRED = os.environ.get("TEST_REQUIRE_BROWSER") == "1"
if not (CHROMIUM and CHROMEDRIVER) and not REQUIRED:
    pytest.skip(
        "chromium or chromedriver is not installed (TEST_REQUIRE_BROWSER=1 fails instead)",
        allow_module_level=True,
    )

WIDTH, HEIGHT = 1280, 900
WAIT_S = 5.0  # the overview refreshes every 2 s

# The same actor type name and message as tests.actors' counter, in a deploy whose handler
# fails: what it dead-letters, the working counter (the system under test) redrives.
broken_counter = ActorType("counter", state=CounterState)


@broken_counter.handler
def add_fails(ctx: Context[CounterState], msg: Add) -> None:
    raise RuntimeError(f"this deploy cannot add {msg.n}")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail(
            "TEST_REQUIRE_BROWSER=1 but chromium or chromedriver is not on PATH",
            pytrace=False,
        )
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={WIDTH},{HEIGHT}",
    ):
        options.add_argument(arg)
    # The system's chromedriver, named: Selenium Manager (which downloads) never runs.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TEST_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def system(redis_url: str) -> Iterator[ActorSystem]:
    s = ActorSystem.from_url(redis_url, actors=[counter, logger, timer], max_attempts=1)
    yield s
    s.close()


def shoot(driver: WebDriver, folder: Path, name: str) -> None:
    """The whole page (the window grown to its height for the shot) as ``name``.png."""
    height, frame = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
    )
    driver.set_window_size(WIDTH, min(max(HEIGHT, int(height) + int(frame)), 6000))
    try:
        assert driver.save_screenshot(str(folder / f"{name}.png"))
    finally:
        driver.set_window_size(WIDTH, HEIGHT)


def text_of(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def rows_of(driver: WebDriver, table: str) -> list[list[str]]:
    """The cells' text (as rendered) of each body row of the table ``#table``, in one round
    trip."""
    rows: list[list[str]] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]),"
        " (tr) => Array.from(tr.cells, (td) => td.innerText.trim()));",
        f"#{table} tbody tr",
    )
    return rows


def count(driver: WebDriver, key: str) -> str:
    return text_of(driver, f'[data-key="{key}"]')


def actor_url(base: str, actor_type: str, actor_id: str) -> str:
    return f"{base}/actor?" + urlencode({"type": actor_type, "id": actor_id})


def test_every_page_a_redrive_by_clicks_and_the_live_overview(
    redis_url: str, system: ActorSystem, browser: WebDriver, shots: Path
) -> None:
    driver = browser
    # A dead letter: an Add to counter/c3 that a failing deploy of the counter dead-lettered.
    broken = ActorSystem.from_url(redis_url, actors=[broken_counter], max_attempts=1)
    lost = system.send(counter.ref("c3"), Add(n=5))
    assert broken.run_until_idle().dead_letters == 1
    broken.close()
    # State, a reminder, deferred messages, and a mailbox waiting for a drain.
    system.send(counter.ref("c1"), Add(n=3))
    system.send(counter.ref("c1"), Add(n=4))
    system.send(timer.ref("t1"), Arm(every=3600))
    assert system.run_until_idle().dead_letters == 0
    soon = system.send(counter.ref("c2"), Add(n=100), delay=600)
    later = system.send(logger.ref("l1"), Note(text="later"), delay=1500)
    doomed = system.send(logger.ref("l1"), Note(text="never"), delay=2400)
    system.send(counter.ref("c9"), Add(n=1))
    system.send(counter.ref("c9"), Add(n=2))
    [tick] = [d.id for d in system.deferred() if d.actor == "timer/t1"]
    assert tick == "~timer/t1\ntick"

    with serving(app(system)) as base:
        # -- overview --------------------------------------------------------------------
        driver.get(f"{base}/")
        assert driver.title == "Overview · actor-system"
        assert count(driver, "dead_letters") == "1"
        assert count(driver, "reminders") == "1"
        assert count(driver, "deferred") == "4"  # three sent with a delay, the reminder's next
        assert count(driver, "ready_actors") == "1"
        assert count(driver, "leases_held") == "0"
        assert rows_of(driver, "top") == [["counter/c9", "2"]]
        types = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "ul.types li")]
        assert types == ["counter", "logger", "timer"]
        assert "127.0.0.1" in text_of(driver, ".where")
        shoot(driver, shots, "01-overview")

        # -- deferred: the list, the timeline, a cancel through the confirm dialog -------
        driver.find_element(By.ID, "nav-deferred").click()
        WebDriverWait(driver, WAIT_S).until(ec.title_is("Deferred · actor-system"))
        listed = {row[0]: row[1:3] for row in rows_of(driver, "deferred-list")}
        assert listed == {
            soon: ["counter/c2", "Add"],
            later: ["logger/l1", "Note"],
            doomed: ["logger/l1", "Note"],
            # A reminder's pending occurrence: its member, with no body (and no cancel).
            "(the reminder's next occurrence)": ["timer/t1", "reminder:tick"],
        }
        bars = driver.find_elements(By.CSS_SELECTOR, "#timeline rect.bar")
        assert len(bars) == 12  # the next hour by 5 minutes
        heights = [float(b.get_attribute("height") or 0) for b in bars]
        assert sum(h > 0 for h in heights) == 4, heights  # at 10, 25, 40 and ~60 minutes
        assert len({h for h in heights if h > 0}) == 1  # one message each: bars of one height
        labels = driver.find_elements(By.CSS_SELECTOR, "#timeline text.count")
        assert sum(int(t.get_attribute("textContent") or 0) for t in labels) == 4
        assert not driver.find_elements(By.ID, "next-page")
        shoot(driver, shots, "02-deferred")

        row = driver.find_element(By.XPATH, f"//table[@id='deferred-list']//tr[td[1]='{doomed}']")
        row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        alert = WebDriverWait(driver, WAIT_S).until(ec.alert_is_present())
        assert alert.text == "Cancel this deferred message?"
        alert.accept()
        WebDriverWait(driver, WAIT_S).until(ec.url_contains("done=cancelled"))
        assert doomed not in {row[0] for row in rows_of(driver, "deferred-list")}
        assert doomed not in {d.id for d in system.deferred()}

        # A filter: the counter's messages only.
        driver.find_element(By.NAME, "actor_type").send_keys("counter")
        driver.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
        WebDriverWait(driver, WAIT_S).until(ec.url_contains("actor_type=counter"))
        assert [row[0] for row in rows_of(driver, "deferred-list")] == [soon]

        # -- actors ----------------------------------------------------------------------
        driver.get(actor_url(base, "counter", "c1"))
        state = json.loads(text_of(driver, "#state"))
        assert state["count"] == 7
        assert len(state["seen"]) == 2
        assert rows_of(driver, "mailbox") == [["empty"]]
        assert rows_of(driver, "actor-deferred") == [["none"]]
        assert rows_of(driver, "reminders") == [["none"]]
        shoot(driver, shots, "03-actor-counter")

        driver.get(actor_url(base, "counter", "c2"))
        [[mid, kind, _]] = rows_of(driver, "actor-deferred")
        assert (mid, kind) == (soon, "Add")

        driver.get(actor_url(base, "counter", "c9"))
        assert [row[1] for row in rows_of(driver, "mailbox")] == ["Add", "Add"]

        driver.get(actor_url(base, "timer", "t1"))
        [[name, message, due, schedule, left]] = rows_of(driver, "reminders")
        assert (name, message, left) == ("tick", "Tick", "-")
        assert schedule.startswith("every 3600")
        assert datetime.fromisoformat(due) - datetime.now(UTC) < timedelta(hours=1, minutes=1)
        assert [row[:2] for row in rows_of(driver, "actor-deferred")] == [
            ["(the reminder's next occurrence)", "reminder:tick"]
        ]
        shoot(driver, shots, "04-actor-timer")

        driver.get(actor_url(base, "counter", "c3"))
        assert json.loads(text_of(driver, "#state")) == {"count": 0, "seen": []}
        assert "No stored state: the model's defaults." in text_of(driver, "main")
        [[dead_id, reason, _]] = rows_of(driver, "actor-dead")
        assert dead_id == lost
        assert "RuntimeError: this deploy cannot add 5" in reason

        # -- dead letters ----------------------------------------------------------------
        driver.find_element(By.ID, "nav-dead").click()
        WebDriverWait(driver, WAIT_S).until(ec.title_is("Dead letters · actor-system"))
        assert "1 in all; 1 match." in text_of(driver, "main")
        [[_, dead_id, actor, kind, reason, attempts, _]] = rows_of(driver, "dead-letters")
        assert (dead_id, actor, kind, attempts) == (lost, "counter/c3", "Add", "1")
        assert reason == "failed 1 times, last: RuntimeError: this deploy cannot add 5"
        assert not driver.find_elements(By.ID, "done")
        shoot(driver, shots, "05-dead-letters")

        driver.find_element(By.LINK_TEXT, lost).click()
        WebDriverWait(driver, WAIT_S).until(ec.title_is("Dead letter · actor-system"))
        assert "RuntimeError: this deploy cannot add 5" in text_of(driver, "#reason")
        envelope = json.loads(text_of(driver, "#envelope"))
        assert (envelope["id"], envelope["target"], envelope["type"]) == (lost, "counter/c3", "Add")
        assert envelope["payload"]["n"] == 5
        traceback = text_of(driver, "#traceback")
        assert traceback.startswith("Traceback (most recent call last):")
        assert "add_fails" in traceback
        shoot(driver, shots, "06-dead-letter")

        # Redrive, confirmed.
        driver.find_element(By.ID, "redrive").click()
        WebDriverWait(driver, WAIT_S).until(ec.title_is("Confirm · actor-system"))
        assert text_of(driver, "h1") == "Redrive 1 dead letter?"
        assert lost in text_of(driver, "main ul")
        shoot(driver, shots, "07-confirm")
        driver.find_element(By.ID, "confirm").click()
        WebDriverWait(driver, WAIT_S).until(ec.presence_of_element_located((By.ID, "done")))
        assert "/dead-letters" in driver.current_url
        done = text_of(driver, "#done")
        assert "redrive" in done.lower()
        assert "1" in done
        assert rows_of(driver, "dead-letters") == [["no dead letter"]]
        assert "0 in all; 0 match." in text_of(driver, "main")
        shoot(driver, shots, "08-redriven")
        assert system.dead_letters() == []

        # The redriven Add runs on the next drain, and the actor's page shows it.
        report = system.run_until_idle()
        assert (report.dead_letters, report.messages) == (0, 3)  # c3's Add and c9's two
        driver.get(actor_url(base, "counter", "c3"))
        state = json.loads(text_of(driver, "#state"))
        assert state["count"] == 5
        assert state["seen"] == [lost]
        assert rows_of(driver, "actor-dead") == [["none"]]
        shoot(driver, shots, "09-actor-redriven")

        # -- the overview refreshes itself -----------------------------------------------
        driver.get(f"{base}/")
        assert (count(driver, "dead_letters"), count(driver, "deferred")) == ("0", "3")
        driver.execute_script("window.notReloaded = true;")
        system.send(logger.ref("l2"), Boom(times=1))
        assert system.run_until_idle().dead_letters == 1
        system.send(counter.ref("c2"), Add(n=1), delay=900)
        WebDriverWait(driver, WAIT_S).until(lambda d: count(d, "dead_letters") == "1")
        WebDriverWait(driver, WAIT_S).until(lambda d: count(d, "deferred") == "4")
        assert driver.execute_script("return window.notReloaded === true;")
        shoot(driver, shots, "10-overview-refreshed")


def test_deferred_pages_through_every_message(
    system: ActorSystem, browser: WebDriver, shots: Path
) -> None:
    driver = browser
    sent = {system.send(counter.ref("many"), Add(n=i), delay=600 + 10 * i) for i in range(57)}
    with serving(app(system)) as base:
        driver.get(f"{base}/deferred")
        first = [row[0] for row in rows_of(driver, "deferred-list")]
        assert len(first) == 50
        shoot(driver, shots, "11-deferred-page-1")
        driver.find_element(By.ID, "next-page").click()
        WebDriverWait(driver, WAIT_S).until(ec.url_contains("after="))
        second = [row[0] for row in rows_of(driver, "deferred-list")]
        assert not driver.find_elements(By.ID, "next-page")
    assert len(second) == 7
    assert set(first) | set(second) == sent


def test_deferred_pages_through_messages_due_at_the_same_time(
    system: ActorSystem, browser: WebDriver
) -> None:
    driver = browser
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    sent = {system.send(counter.ref("batch"), Add(n=i), at=at) for i in range(55)}
    with serving(app(system)) as base:
        driver.get(f"{base}/deferred")
        first = [row[0] for row in rows_of(driver, "deferred-list")]
        assert len(first) == 50
        driver.find_element(By.ID, "next-page").click()
        WebDriverWait(driver, WAIT_S).until(ec.url_contains("after="))
        second = [row[0] for row in rows_of(driver, "deferred-list")]
    assert set(first) | set(second) == sent
