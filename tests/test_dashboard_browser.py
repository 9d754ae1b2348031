"""The dashboard in a real headless Chromium (Debian's chromium and chromium-driver), by selenium.

Outside CI the tests are skipped when Chromium, ChromeDriver or selenium is
missing; with ``CI`` set they fail instead (``.ci/run`` installs the packages).
Selenium is pointed at /usr/bin/chromedriver and /usr/bin/chromium explicitly,
so Selenium Manager never runs and nothing is downloaded.

One test also writes docs/dashboard.png, the screenshot the documentation shows.
"""

import os
import pathlib
import shutil
import tempfile

import pytest
from freezegun import freeze_time

import cbsync
from cbsync import State
from cbsync.integrations.dashboard import Dashboard, start_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-token-0123456789abcdef"
#: Where the documentation's screenshot is written.
SCREENSHOT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
#: The flags Chromium needs on these machines: no sandbox as root, and no
#: background connections (the network is closed; they would fail, many at a time).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def _missing(message):
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: the browser tests are required)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def chrome():
    """One headless Chromium for the module's tests, with a fresh profile."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            _missing("{} is missing: apt-get install -y chromium chromium-driver".format(path))
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        _missing("selenium is not installed ({})".format(exc))
    profile = tempfile.mkdtemp(prefix="cbsync-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--user-data-dir=" + profile)
    options.add_argument("--window-size=1280,800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(chrome):
    """Serve a dashboard and open it: ``page(dashboard, path="")`` returns the server."""
    started = []

    def open_page(dashboard, path=""):
        server = start_server(dashboard, port=0)
        started.append((server, dashboard))
        chrome.get_log("browser")  # forget what earlier tests logged
        chrome.get(server.url + path)
        return server

    yield open_page
    chrome.get("about:blank")  # stop the page's polling before its server goes
    for server, dashboard in started:
        server.close()
        dashboard.close()


def wait_for(chrome, condition, timeout, message):
    """Poll ``condition(chrome)`` every 50 ms until true; fail after ``timeout`` seconds."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # Real time: what is waited for is the page's own polling of the server.
        return WebDriverWait(chrome, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        pytest.fail("timed out after {}s waiting for {}".format(timeout, message))


def updates(chrome):
    return int(chrome.find_element("css selector", "body").get_attribute("data-updates") or 0)


def wait_for_refresh(chrome, timeout=5):
    """Wait until the page has refreshed its tiles from the server once more."""
    seen = updates(chrome)
    wait_for(chrome, lambda c: updates(c) > seen, timeout, "the page to refresh")


def tile(chrome, name):
    """The tile of breaker ``name`` (looked up by its data, never by a selector built from it)."""
    for element in chrome.find_elements("css selector", "article.tile"):
        if element.get_attribute("data-name") == name:
            return element
    return None


def severe_logs(chrome):
    return [entry for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]


def test_page_loads_and_refreshes_without_console_errors(chrome, page):
    """The page, its script and style load from the app; refreshes log no console error."""
    registry = cbsync.Registry()
    registry.get("payments").call(lambda: None)
    page(Dashboard(registry, interval=0.2, poll=0.2))
    wait_for_refresh(chrome)
    wait_for_refresh(chrome)
    assert severe_logs(chrome) == []
    assert chrome.title == "cbsync breakers"
    # The style sheet applied (a closed badge is green) and the script ran.
    badge = tile(chrome, "payments").find_element("css selector", ".state")
    assert badge.value_of_css_property("background-color") == "rgba(46, 125, 50, 1)"
    assert badge.text == "\u2714 closed"


def test_a_breaker_tripped_from_python_turns_red_without_a_reload(chrome, page):
    """breaker.trip() in the application: within 2 s the tile is red and says forced open."""
    registry = cbsync.Registry()
    breaker = registry.get("payments")
    page(Dashboard(registry, interval=None, poll=0.5))
    wait_for_refresh(chrome)
    chrome.execute_script("window.cbsyncNoReload = true;")  # gone if the page reloads
    breaker.trip("incident 42")
    wait_for(
        chrome,
        lambda c: "state-forced_open" in tile(c, "payments").get_attribute("class"),
        2.0,
        "the tile to turn red",
    )
    element = tile(chrome, "payments")
    badge = element.find_element("css selector", ".state")
    assert badge.value_of_css_property("background-color") == "rgba(198, 40, 40, 1)"
    assert badge.text == "\u2298 forced open"
    assert (
        element.find_element("css selector", '[data-field="reason"]').text == "manual=incident 42"
    )
    assert chrome.execute_script("return window.cbsyncNoReload") is True
    assert severe_logs(chrome) == []


def test_the_reset_button_with_the_token_closes_the_breaker(chrome, page):
    """With a token: type it, press reset, confirm: the breaker closes and the tile says so."""
    from selenium.webdriver.support import expected_conditions

    registry = cbsync.Registry()
    breaker = registry.get("payments")
    breaker.trip()
    page(Dashboard(registry, token=TOKEN, interval=None, poll=0.5))
    wait_for_refresh(chrome)
    chrome.find_element("css selector", 'input[name="operator"]').send_keys("ana")
    chrome.find_element("css selector", 'input[name="token"]').send_keys(TOKEN)
    tile(chrome, "payments").find_element("css selector", 'button[data-action="reset"]').click()
    wait_for(chrome, expected_conditions.alert_is_present(), 2.0, "the confirmation")
    chrome.switch_to.alert.accept()
    wait_for(
        chrome,
        lambda c: "state-closed" in tile(c, "payments").get_attribute("class"),
        2.0,
        "the tile to show the reset",
    )
    assert breaker.state is State.CLOSED
    notice = chrome.find_element("css selector", '[data-field="notice"]').text
    assert notice == "payments: reset done, now closed."
    assert severe_logs(chrome) == []


def test_a_wrong_token_is_refused_and_said_so(chrome, page):
    """A wrong token: the server refuses (403), the page says why, the breaker stays open."""
    from selenium.webdriver.support import expected_conditions

    registry = cbsync.Registry()
    breaker = registry.get("payments")
    breaker.trip()
    page(Dashboard(registry, token=TOKEN, interval=None, poll=0.5))
    chrome.find_element("css selector", 'input[name="token"]').send_keys("not-the-token-at-all")
    tile(chrome, "payments").find_element("css selector", 'button[data-action="reset"]').click()
    wait_for(chrome, expected_conditions.alert_is_present(), 2.0, "the confirmation")
    chrome.switch_to.alert.accept()
    wait_for(
        chrome,
        lambda c: "refused" in c.find_element("css selector", '[data-field="notice"]').text,
        2.0,
        "the refusal",
    )
    assert breaker.state is State.FORCED_OPEN
    chrome.get_log("browser")  # the 403 is logged by the browser as a failed resource


def test_without_a_token_there_are_no_buttons_and_a_forged_post_gets_403(chrome, page):
    """Read-only: no button on any tile; a POST sent from the page anyway is refused."""
    registry = cbsync.Registry()
    breaker = registry.get("payments")
    page(Dashboard(registry, interval=None, poll=0.5))
    wait_for_refresh(chrome)
    assert chrome.find_elements("css selector", "main button") == []
    assert chrome.find_elements("css selector", 'input[name="token"]') == []
    status = chrome.execute_async_script(
        """
        var done = arguments[arguments.length - 1];
        fetch(document.body.dataset.api + "/trip", {
          method: "POST",
          headers: {"Content-Type": "application/json", "Authorization": "Bearer guess"},
          body: JSON.stringify({name: "payments"}),
        }).then(function (r) { done(r.status); }, function (e) { done(String(e)); });
        """
    )
    assert status == 403
    assert breaker.state is State.CLOSED
    chrome.get_log("browser")  # the 403 is logged by the browser as a failed resource


def test_a_hostile_breaker_name_renders_as_text(chrome, page):
    """A breaker named <script>alert(1)</script>, rendered or added live, shows as text."""
    from selenium.common.exceptions import NoAlertPresentException

    hostile = "<script>alert(1)</script>"
    registry = cbsync.Registry()
    registry.get(hostile).trip('<img src=x onerror="alert(2)">')
    page(Dashboard(registry, interval=None, poll=0.3))
    late = '"><svg onload=alert(3)>'
    registry.get(late)  # added after the page loaded: the script makes its tile
    wait_for(chrome, lambda c: tile(c, late) is not None, 3.0, "the new tile")
    for name in (hostile, late):
        heading = tile(chrome, name).find_element("css selector", "h2")
        assert heading.text == name
    reason = tile(chrome, hostile).find_element("css selector", '[data-field="reason"]')
    assert reason.text == 'manual=<img src=x onerror="alert(2)">'
    assert chrome.execute_script("return document.scripts.length") == 1  # ours only
    assert chrome.find_elements("css selector", "main img, main svg:not(.spark)") == []
    with pytest.raises(NoAlertPresentException):
        chrome.switch_to.alert.text  # noqa: B018 -- reading it is what raises
    assert severe_logs(chrome) == []


def test_refreshed_tiles_read_as_the_server_rendered_them(chrome, page):
    """The script's formatting mirrors the server's: a refresh changes no text, no path."""
    registry = cbsync.Registry()
    # Count-based windows: what they hold does not depend on the time of the render.
    steady = registry.get(
        "steady", failure_threshold=None, minimum_calls=1, window_type="count_based"
    )
    flaky = registry.get("flaky", failure_threshold=2, window_type="count_based")
    dashboard = Dashboard(registry, interval=None, history=20)
    with freeze_time("2026-12-01 09:00:00") as frozen:
        dashboard.sample()
        for step in range(12):
            for _ in range(step * 7 + 3):
                steady.call(frozen.tick, 0.0123)
            if step % 4 == 3:
                with pytest.raises(OSError):
                    steady.call(_fail)
            frozen.tick(1.7)
            dashboard.sample()
        with pytest.raises(OSError):
            flaky.call(_fail)
        with pytest.raises(OSError):
            flaky.call(_fail)
    parts = (
        '[data-field="state"]',
        '[data-field="reason"]',
        "dl.metrics",
        "svg.spark",
        '[data-field="transitions"]',
    )

    def rendered():
        return {
            (name, part): tile(chrome, name)
            .find_element("css selector", part)
            .get_attribute("innerHTML")
            for name in ("steady", "flaky")
            for part in parts
        }

    page(dashboard, "?live=0")
    served = rendered()
    assert 'd="M' in served[("steady", "svg.spark")]
    assert "<li>" in served[("flaky", '[data-field="transitions"]')]
    chrome.get(chrome.current_url.replace("?live=0", ""))
    wait_for_refresh(chrome)
    assert rendered() == served


def _fail(*args):
    raise OSError("dependency down")


def _screenshot_scene():
    """A registry in every state with five minutes of history, built under frozen time."""
    registry = cbsync.Registry({"default": {"timeout": 30, "failure_threshold": 5}})
    dashboard = Dashboard(registry, interval=None, history=150, title="shop: circuit breakers")
    with freeze_time("2026-12-01 09:30:00") as frozen:
        payments = registry.get("payments-api", slow_call_duration=1.0)
        orders = registry.get("postgresql://orders-db:5432/orders", failure_threshold=3)
        search = registry.get("http://search.internal:9200")
        soap = registry.get("legacy.billing:SoapClient.charge")
        recs = registry.get("recommendations")
        rates = registry.get("rates.fetch_rate", timeout=20)
        dashboard.sample()
        for step in range(150):
            for _ in range(8 + step % 5):
                search.call(frozen.tick, 0.004 + (step % 7) * 0.001)
            for _ in range(4):
                recs.call(frozen.tick, 0.02)
            if step < 120:
                for _ in range(6):
                    payments.call(frozen.tick, 0.09 + (step % 3) * 0.01)
                orders.call(frozen.tick, 0.003)
                rates.call(frozen.tick, 0.05)
            elif step == 120:
                soap.trip("vendor maintenance until 10:00")
                recs.disable()
            if step >= 130 and payments.state is State.CLOSED:
                with pytest.raises(OSError):
                    payments.call(_fail)
            if step == 132:
                for _ in range(3):
                    with pytest.raises(OSError):
                        orders.call(_fail)
            if step == 134:
                for _ in range(5):
                    with pytest.raises(OSError):
                        rates.call(_fail)
            for breaker in (payments, orders):
                if breaker.state is State.OPEN:
                    for _ in range(3):
                        with pytest.raises(cbsync.CircuitOpenError):
                            breaker.call(lambda: None)
            frozen.tick(2.0 - 0.5)
            dashboard.sample()
        permit = rates.acquire()  # a trial call in flight: half-open
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "live=0"}
        replies = []
        body = b"".join(dashboard(environ, lambda status, headers: replies.append(status)))
        permit.success()
    assert replies == ["200 OK"]
    return dashboard, body


def test_screenshot_for_the_docs(chrome):
    """docs/dashboard.png: a made-up shop's page, taken by the browser (rewritten if changed)."""
    dashboard, frozen_page = _screenshot_scene()

    def app(environ, start_response):
        # The page as rendered under frozen time; its script, style and icon live.
        if environ.get("PATH_INFO") in ("", "/"):
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [frozen_page]
        return dashboard(environ, start_response)

    server = start_server(app, port=0)
    try:
        chrome.set_window_size(1280, 660)
        chrome.get(server.url)
        wait_for(
            chrome,
            lambda c: c.execute_script("return document.readyState") == "complete",
            5.0,
            "the page to load",
        )
        png = chrome.get_screenshot_as_png()
    finally:
        chrome.get("about:blank")
        server.close()
        chrome.set_window_size(1280, 800)
    assert png.startswith(b"\x89PNG")
    if not SCREENSHOT.exists() or SCREENSHOT.read_bytes() != png:
        SCREENSHOT.write_bytes(png)


def test_fleet_outage_banner_shows_in_the_browser(chrome, page):
    """Redis gone: the page shows "Fleet state unavailable since" without a reload."""
    from _redis_support import private_fleet

    with private_fleet() as (redis_server, worker_store, view_store):
        breaker = cbsync.CircuitBreaker("payments", store=worker_store)
        breaker.call(lambda: None)
        assert worker_store.sync()
        page(Dashboard(store=view_store, interval=None, poll=0.3))
        wait_for_refresh(chrome)
        banner = chrome.find_element("css selector", '[data-field="banner"]')
        assert not banner.is_displayed()
        redis_server.kill()
        wait_for(chrome, lambda c: banner.is_displayed(), 5.0, "the outage banner")
        assert banner.text.startswith("Fleet state unavailable since ")
        assert tile(chrome, "payments") is not None  # the last state read stays shown
        redis_server.start()
        wait_for(chrome, lambda c: not banner.is_displayed(), 10.0, "the recovery")
