"""The dashboard (GitHub issue 11, part 2) in a real headless browser: Debian's chromium and
chromium-driver (scripts/install-test-tools.sh) driven by selenium, against a real broker
whose MQTT clients are real sockets (paho, RawClient).

What a person would check: the page shows the version, the uptime and a connected client's
id; the connection count follows clients as they come and go; the disconnect button really
disconnects (the broker drops the client, an MQTT 5 client sees DISCONNECT 0x98); the token
works from the URL and from the field; a hostile client id shows as text.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from _testbase import RawClient
from cymqtt._fast.codec import Connect
from cymqtt.config import HttpConfig
from helpers_http import HTTP
from helpers_paho import V5, V311, PahoClient, wait_until
from mqtt5_helpers import expect_disconnect, next_packet

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="chromium and chromium-driver are not installed (scripts/install-test-tools.sh)")

UI_TIMEOUT = 10.0     # the page polls every 1-2 s; a slow shared machine gets some slack


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000"):
        opts.add_argument(arg)
    profile = tempfile.mkdtemp(prefix="cymqtt-chrome-")
    opts.add_argument("--user-data-dir=" + profile)
    opts.binary_location = CHROMIUM
    # An explicit driver path: selenium-manager never looks for (or downloads) one.
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def bt(make_broker):
    return make_broker(http=HTTP)


@pytest.fixture
def clients():
    made: list = []
    yield made
    for c in made:
        c.close()


def open_page(driver, bt, suffix: str = "") -> None:
    driver.get(f"http://127.0.0.1:{bt.broker.http_port}/{suffix}")


def text_of(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def eventually(driver, pred, what: str):
    """Poll the page until `pred(driver)` is truthy; fail naming `what` and the page's errors."""
    from selenium.common.exceptions import StaleElementReferenceException

    def check():
        try:
            return pred(driver)
        except StaleElementReferenceException:    # the list was redrawn under us
            return None
    try:
        return wait_until(check, UI_TIMEOUT, 0.05, what)
    except AssertionError:
        logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
        raise AssertionError(f"timed out waiting for {what}; status "
                             f"{text_of(driver, 'status-text')!r}; console {logs}") from None


def client_row(driver, client_id: str):
    rows = driver.find_elements("css selector", "#clients-table tbody tr[data-client-id]")
    return next((r for r in rows if r.get_attribute("data-client-id") == client_id), None)


def test_page_shows_version_uptime_and_a_connected_client(driver, bt, clients):
    from cymqtt._version import __version__

    clients.append(PahoClient(bt.port, "sensor-42", V5, username="alice"))
    open_page(driver, bt)
    assert driver.title == "cymqtt dashboard"
    eventually(driver, lambda d: text_of(d, "status-text") == "live", "the page to go live")
    assert text_of(driver, "version") == "v" + __version__
    assert text_of(driver, "uptime").endswith("s")
    row = eventually(driver, lambda d: client_row(d, "sensor-42"), "sensor-42 in the table")
    cells = [c.text for c in row.find_elements("tag name", "td")]
    assert cells[:4] == ["sensor-42", "MQTT 5.0", cells[2], "alice"]
    assert cells[2].startswith("127.0.0.1:")
    listeners = driver.find_element("id", "listen-summary").text
    assert f"127.0.0.1:{bt.port}" in listeners


def test_connection_count_follows_clients(driver, bt, clients):
    open_page(driver, bt)
    eventually(driver, lambda d: text_of(d, "stat-connections") == "0", "0 connections")
    first = PahoClient(bt.port, "c-1", V311)
    clients.append(first)
    clients.append(RawClient(bt.port))                # a socket that has not sent CONNECT
    eventually(driver, lambda d: text_of(d, "stat-connections") == "2", "2 connections")
    assert text_of(driver, "stat-clients") == "1"
    first.close()
    eventually(driver, lambda d: text_of(d, "stat-connections") == "1", "1 connection")
    eventually(driver, lambda d: text_of(d, "stat-clients") == "0", "0 clients")


def test_messages_show_in_the_counters(driver, bt, clients):
    sub = PahoClient(bt.port, "watcher", V5)
    clients.append(sub)
    sub.subscribe("t/#", qos=1)
    open_page(driver, bt)
    eventually(driver, lambda d: text_of(d, "status-text") == "live", "live")
    for i in range(7):
        bt.publish(f"t/{i}", b"x", qos=1)
    eventually(driver, lambda d: text_of(d, "stat-sent") == "7", "7 messages sent")


def test_disconnect_button_disconnects_the_client(driver, bt, clients):
    c = RawClient(bt.port, 5)
    clients.append(c)
    c.send_packet(Connect("to-kick", version=5))
    assert next_packet(c, "CONNACK").reason_code == 0
    bystander = PahoClient(bt.port, "bystander", V311)
    clients.append(bystander)
    open_page(driver, bt)
    row = eventually(driver, lambda d: client_row(d, "to-kick"), "to-kick in the table")
    button = row.find_element("css selector", "button.disconnect")
    assert button.text == "Disconnect"
    button.click()                                        # first click: asks to confirm

    def confirm(d) -> bool:
        # The table is redrawn every 2 s (a redrawn button stays armed): find it afresh.
        again = client_row(d, "to-kick").find_element("css selector", "button.disconnect")
        if again.text != "Confirm":
            return False
        again.click()
        return True
    eventually(driver, confirm, "the button to ask, and the second click")

    expect_disconnect(c, 0x98)                            # the client's side
    wait_until(lambda: bt.call(lambda: bt.broker.client("to-kick")) is None,
               what="the broker to drop to-kick")         # the broker's side
    eventually(driver, lambda d: client_row(d, "to-kick") is None, "to-kick gone from the table")
    assert client_row(driver, "bystander") is not None
    assert bt.call(lambda: bt.broker.client("bystander")) is not None


def test_search_narrows_the_clients_table(driver, bt, clients):
    for cid in ("kitchen/temp", "kitchen/hum", "garage/door"):
        clients.append(PahoClient(bt.port, cid, V311))
    open_page(driver, bt)
    eventually(driver, lambda d: client_row(d, "garage/door"), "all three")
    box = driver.find_element("id", "client-search")
    box.send_keys("KITCHEN")
    eventually(driver, lambda d: client_row(d, "garage/door") is None, "the search to apply")
    assert client_row(driver, "kitchen/temp") and client_row(driver, "kitchen/hum")


def test_other_tabs_show_subscriptions_retained_and_listeners(driver, bt, clients):
    c = PahoClient(bt.port, "tabby", V5)
    clients.append(c)
    c.subscribe("home/+/state", qos=1)
    bt.publish("home/lamp/state", b"on", retain=True)
    open_page(driver, bt)

    def tab(name: str, table: str, needle: str) -> None:
        driver.find_element("css selector", f'.tab[data-tab="{name}"]').click()
        eventually(driver, lambda d: needle in d.find_element("id", table).text,
                   f"{needle!r} in the {name} tab")

    tab("subscriptions", "subscriptions-table", "home/+/state")
    tab("retained", "retained-table", "home/lamp/state")
    tab("listeners", "listeners-table", f"127.0.0.1:{bt.port}")
    assert f"127.0.0.1:{bt.broker.http_port}" in text_of(driver, "listeners-table")


def test_a_hostile_client_id_is_shown_as_text(driver, bt, clients):
    evil = '<img src=x onerror="document.title=\'pwned\'">'
    clients.append(PahoClient(bt.port, evil, V5))
    open_page(driver, bt)
    row = eventually(driver, lambda d: client_row(d, evil), "the hostile id")
    assert row.find_element("tag name", "td").text == evil
    assert driver.title == "cymqtt dashboard"
    assert not driver.find_elements("css selector", "#clients-table img")


def test_token_from_the_url_and_from_the_field(driver, make_broker, clients):
    bt = make_broker(http=HttpConfig(port=0, token="open-sesame"))
    clients.append(PahoClient(bt.port, "secret-client", V311))
    driver.get("about:blank")
    open_page(driver, bt)                      # a fresh tab's storage: no token yet
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    eventually(driver, lambda d: d.find_element("id", "token-bar").is_displayed(),
               "the token field")
    assert client_row(driver, "secret-client") is None
    field = driver.find_element("id", "token-input")
    field.send_keys("wrong")
    field.submit()
    eventually(driver, lambda d: text_of(d, "token-error") == "wrong token", "'wrong token'")
    field.send_keys("open-sesame")
    field.submit()
    eventually(driver, lambda d: client_row(d, "secret-client"), "the list with the token")

    driver.execute_script("sessionStorage.clear()")
    open_page(driver, bt, "?token=open-sesame")
    eventually(driver, lambda d: client_row(d, "secret-client"), "the list with ?token=")
    assert "token" not in driver.current_url                  # taken out of the address bar
    assert not driver.find_element("id", "token-bar").is_displayed()
