"""Mission Control in a real headless browser (Debian's chromium + chromedriver, Selenium):
sign up -> create a key -> use it with the official openai SDK -> the request is in the usage
chart. Screenshots of each step go to tests/artifacts/ (gitignored)."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions

from tests.conftest import ADMIN_TOKEN, REPO, Gateway
from tests.fakes.webhook_receiver import WebhookReceiver, verify
from tests.live_bound import polls

ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
IMPLICIT_WAIT_S = 10
BOUND_S = 30  # a wait's hang guard, in running time (tests/live_bound.py)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (make system-deps installs them)",
)


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # the test may run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.implicitly_wait(IMPLICIT_WAIT_S)  # lookups wait (bounded) for the page a click led to
    yield driver
    driver.quit()


@contextlib.contextmanager
def at_once(driver: WebDriver) -> Iterator[None]:
    """Lookups answered from the page as it is, for an element that may rightly be absent, once
    the page is known to be there: the implicit wait spends its whole bound on each absent one
    (30 s of the suite's slowest test went so)."""
    driver.implicitly_wait(0)
    try:
        yield
    finally:
        driver.implicitly_wait(IMPLICIT_WAIT_S)


def shot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"mission-control-{name}.png"
    driver.save_screenshot(str(path))
    return path


def until(driver: WebDriver, condition: Callable[[WebDriver], object]) -> None:
    """`WebDriverWait(driver, BOUND_S).until(condition)` over BOUND_S of this process's running
    time: WebDriverWait's bound is the wall clock's, which a stop of the machine spends."""
    for _ in polls(BOUND_S, 0.1):
        if condition(driver):
            return
    raise TimeoutException(f"not within {BOUND_S} s of running time")


def arrive(driver: WebDriver, path: str) -> None:
    """A click submits a form; wait (bounded) for the page it leads to."""
    try:
        until(driver, expected_conditions.url_contains(path))
    except Exception:
        shot(driver, "unexpected-page")
        raise


def submit_and_arrive_again(driver: WebDriver, button: str, path: str) -> None:
    """Clicks the button (CSS) of a form that leads back to the page it is on, and waits (bounded)
    for the new page. The URL says nothing, so the old page is marked in the browser and the wait
    is for a loaded page without the mark (else the next lookup may find the old page's element,
    gone a moment later). Not for an element of the old page to go stale: used while the new
    page replaces it, chromedriver may answer "Node with given id does not belong to the
    document", an unknown error and not a stale element, which ends the wait (seen under load)."""
    driver.execute_script("document.documentElement.dataset.leaving = 'yes'")
    driver.find_element(By.CSS_SELECTOR, button).click()
    try:
        until(
            driver,
            lambda d: d.execute_script(
                "return document.readyState === 'complete'"
                " && !document.documentElement.dataset.leaving"
            ),
        )
    except Exception:
        shot(driver, "unexpected-page")
        raise
    arrive(driver, path)


def fill(driver: WebDriver, name: str, value: str, within: str = "") -> None:
    """Types into the field `name` (the first one, or the first inside the CSS scope `within`:
    the create-key form and each key's settings form have the same fields)."""
    field = driver.find_element(By.CSS_SELECTOR, f'{within} [name="{name}"]'.strip())
    field.clear()
    field.send_keys(value)


def test_sign_up_create_a_key_use_it_and_see_it_in_the_usage_chart(
    mc_gateway: Gateway, browser: WebDriver
) -> None:
    base = mc_gateway.base_url
    browser.get(f"{base}/mission-control/")
    assert browser.current_url.endswith("/mission-control/login")
    browser.find_element(By.ID, "to-signup").click()
    arrive(browser, "/mission-control/signup")
    fill(browser, "name", "Browser Co")
    fill(browser, "email", f"browser-{int(time.time() * 1000)}@example.com")
    fill(browser, "password", "a long browser password")
    shot(browser, "1-signup")
    browser.find_element(By.ID, "sign-up").click()
    arrive(browser, "/mission-control/dashboard")
    assert browser.find_element(By.ID, "plan").text == "Free"
    assert browser.find_element(By.ID, "balance").text == "$5.00"
    shot(browser, "2-dashboard-new")

    browser.find_element(By.LINK_TEXT, "API keys").click()
    arrive(browser, "/mission-control/keys")
    fill(browser, "name", "selenium")
    browser.find_element(By.ID, "create-key").click()
    key = browser.find_element(By.ID, "new-key").text
    assert key.startswith("sk-klawd-")
    shot(browser, "3-key-created")

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(
        model="openai/gpt-fake", messages=[{"role": "user", "content": "Hello from a browser"}]
    )
    assert reply.choices[0].message.content

    bars: list[str] = []
    for _ in polls(BOUND_S, 0.1):  # the ledger settles within a fraction of a second
        browser.get(f"{base}/mission-control/dashboard")
        bars = [
            bar.get_attribute("data-value") or ""
            for bar in browser.find_elements(
                By.CSS_SELECTOR, 'svg[data-chart="requests-by-day"] rect.bar'
            )
        ]
        if "1" in bars:
            break
    assert bars[-1] == "1", "today's bar shows the one request"
    models = browser.find_elements(
        By.CSS_SELECTOR, 'svg[data-chart="requests-by-model"] rect[data-label="openai/gpt-fake"]'
    )
    assert [m.get_attribute("data-value") for m in models] == ["1"]
    assert "1 request ·" in browser.find_element(By.ID, "usage-totals").text
    assert browser.find_element(By.ID, "balance").text != "$5.00", "the request was billed"
    browser.find_element(By.ID, "quickstart").location_once_scrolled_into_view  # noqa: B018
    shot(browser, "4-dashboard-after-request")
    browser.execute_script("window.scrollTo(0, 0)")
    shot(browser, "5-dashboard-top")


def sign_up(driver: WebDriver, base: str, name: str) -> None:
    driver.get(f"{base}/mission-control/signup")
    fill(driver, "name", name)
    fill(driver, "email", f"{name.lower()}-{int(time.time() * 1000)}@example.com")
    fill(driver, "password", "a long browser password")
    driver.find_element(By.ID, "sign-up").click()
    arrive(driver, "/mission-control/dashboard")


def test_webhook_page_saves_reveals_and_sends_a_signed_test_event(
    mc_gateway: Gateway, browser: WebDriver, receiver: WebhookReceiver
) -> None:
    sign_up(browser, mc_gateway.base_url, "Hooks")
    browser.find_element(By.LINK_TEXT, "Webhook").click()
    arrive(browser, "/mission-control/webhook")
    fill(browser, "url", receiver.origin + "/browser")
    browser.find_element(By.ID, "save-webhook").click()
    arrive(browser, "/mission-control/webhook/save")
    secret = browser.find_element(By.ID, "webhook-secret").text
    assert secret.startswith("whsec_")
    browser.find_element(By.ID, "send-test").click()
    arrive(browser, "/mission-control/webhook/test")
    statuses: list[str] = []
    for _ in polls(BOUND_S, 0.1):  # the scheduler polls every 0.2 s here
        browser.get(f"{mc_gateway.base_url}/mission-control/webhook")
        statuses = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#deliveries .tag")]
        if statuses == ["delivered"]:
            break
    assert statuses == ["delivered"]
    browser.find_element(By.ID, "reveal-secret").click()
    arrive(browser, "/mission-control/webhook/reveal")
    assert browser.find_element(By.ID, "webhook-secret").text == secret
    shot(browser, "6-webhook")
    (got,) = receiver.deliveries("/browser")
    assert verify(got["body"], got["headers"]["x-klawd-signature"], secret)
    assert got["event"]["type"] == "webhook.test"


def test_operator_sees_accounts_plans_and_top_spenders(
    mc_gateway: Gateway, browser: WebDriver
) -> None:
    base = mc_gateway.base_url
    key = mc_gateway.new_key(plan="pro", credits_usd=20)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    client.chat.completions.create(
        model="openai/gpt-fake", messages=[{"role": "user", "content": "spend " * 200}]
    )
    browser.get(f"{base}/mission-control/operator/login")
    fill(browser, "token", ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    arrive(browser, "/mission-control/operator")
    spenders: list[str] = []
    for _ in polls(BOUND_S, 0.1):  # until the ledger has settled
        spenders = [
            bar.get_attribute("data-label") or ""
            for bar in browser.find_elements(By.CSS_SELECTOR, 'svg[data-chart="top-spenders"] rect')
        ]
        if any(label.startswith("test (") for label in spenders):
            break
        browser.refresh()
    assert any(label.startswith("test (") for label in spenders), "the account that just spent"
    plans = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "table tr td:first-child")]
    assert {"free", "pro", "enterprise"} <= set(plans)
    shot(browser, "7-operator")


def test_a_keys_budget_models_and_tags_are_set_in_the_browser_and_enforced(
    mc_gateway: Gateway, browser: WebDriver
) -> None:
    base = mc_gateway.base_url
    sign_up(browser, base, "Teams")
    browser.get(f"{base}/mission-control/keys")
    fill(browser, "name", "search-team")
    browser.find_element(By.ID, "create-key").click()
    key = browser.find_element(By.ID, "new-key").text
    browser.get(f"{base}/mission-control/keys")
    browser.find_element(By.CSS_SELECTOR, "details.key-settings summary").click()
    fill(browser, "usd_per_day", "2.5", within="details.key-settings")
    fill(browser, "requests_per_minute", "30", within="details.key-settings")
    fill(browser, "models", "openai/gpt-*", within="details.key-settings")
    fill(browser, "tags", "team=search", within="details.key-settings")
    shot(browser, "6-key-settings")
    submit_and_arrive_again(
        browser, "details.key-settings button[type=submit]", "/mission-control/keys"
    )
    row = browser.find_element(By.CSS_SELECTOR, "#keys-table tbody tr")
    assert "$2.50 / none / none" in row.find_element(By.CSS_SELECTOR, ".budget").text
    assert row.find_element(By.CSS_SELECTOR, ".models").text == "openai/gpt-*"
    assert "team=search" in row.find_element(By.CSS_SELECTOR, ".tags").text

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="klawd/echo", messages=[{"role": "user", "content": "not on the list"}]
        )
    client.chat.completions.create(
        model="openai/gpt-fake", messages=[{"role": "user", "content": "on the list"}]
    )
    client.close()
    spent = ""
    for _ in polls(BOUND_S, 0.1):  # the ledger settles within a fraction of a second
        browser.get(f"{base}/mission-control/keys")
        spent = browser.find_element(By.CSS_SELECTOR, "#keys-table .spend").text
        if spent != "$0.00 / $0.00 / $0.00":
            break
    assert spent == "$0.00002 / $0.00002 / $0.00002", "12 + 4 tokens at $1 and $2 per million"
    tag_row = browser.find_element(By.CSS_SELECTOR, "#tag-spend tbody tr")
    assert "team=search" in tag_row.text and spent.split(" / ")[0] in tag_row.text
    shot(browser, "7-key-spend")


def test_a_key_created_with_budgets_limits_models_and_tags_shows_them_and_bad_ones_say_why(
    mc_gateway: Gateway, browser: WebDriver
) -> None:
    base = mc_gateway.base_url
    new_key_form = "#create-key-form"
    sign_up(browser, base, "Creators")
    browser.get(f"{base}/mission-control/keys")
    fill(browser, "name", "batch-jobs", within=new_key_form)
    browser.find_element(By.CSS_SELECTOR, "#new-key-attributes summary").click()
    for name, value in (
        ("usd_per_day", "1.25"),
        ("usd_total", "40"),
        ("requests_per_minute", "12"),
        ("requests_per_day", "500"),
        ("models", "openai/gpt-*, klawd/standard"),
        ("tags", "team=batch\nenv=staging"),
    ):
        fill(browser, name, value, within=new_key_form)
    shot(browser, "8-create-key-with-attributes")
    browser.find_element(By.ID, "create-key").click()
    key = browser.find_element(By.ID, "new-key").text
    assert key.startswith("sk-klawd-")
    row = browser.find_element(By.CSS_SELECTOR, "#keys-table tbody tr")
    assert row.find_element(By.CSS_SELECTOR, ".budget").text == "$1.25 / none / $40.00"
    assert row.find_element(By.CSS_SELECTOR, ".models").text == "openai/gpt-*, klawd/standard"
    assert row.find_element(By.CSS_SELECTOR, ".tags").text.split() == ["team=batch", "env=staging"]
    row.find_element(By.CSS_SELECTOR, "details.key-settings summary").click()
    with at_once(browser):  # the row is on the page: its inputs are (or are not) with it
        settings = {
            name: row.find_element(By.CSS_SELECTOR, f'[name="{name}"]').get_attribute("value")
            for name in ("usd_per_day", "usd_month", "requests_per_minute", "requests_per_day")
            if row.find_elements(By.CSS_SELECTOR, f'[name="{name}"]')
        }
    assert settings == {
        "usd_per_day": "1.25",
        "requests_per_minute": "12",
        "requests_per_day": "500",
    }
    shot(browser, "9-created-key-attributes")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):  # the new key's allowlist holds at once
        client.chat.completions.create(
            model="klawd/echo", messages=[{"role": "user", "content": "not on the list"}]
        )
    client.close()

    for field, bad, named in (
        ("usd_per_day", "-1", "budget.usd_per_day"),
        ("models", "openai/[gpt]", "models[0]"),
    ):
        browser.get(f"{base}/mission-control/keys")
        fill(browser, "name", "rejected", within=new_key_form)
        browser.find_element(By.CSS_SELECTOR, "#new-key-attributes summary").click()
        fill(browser, "models", "openai/*", within=new_key_form)
        fill(browser, field, bad, within=new_key_form)
        browser.find_element(By.ID, "create-key").click()
        error = browser.find_element(By.CSS_SELECTOR, ".error[role=alert]").text
        assert named in error, error
        with at_once(browser):  # the page the refusal led to is there (its error found)
            assert not browser.find_elements(By.ID, "new-key"), "no key was made"
        form = browser.find_element(By.CSS_SELECTOR, new_key_form)
        kept = form.find_element(By.CSS_SELECTOR, f'[name="{field}"]').get_attribute("value")
        assert kept == bad, "the form comes back as typed"
    shot(browser, "10-create-key-refused")
    names = [
        td.text for td in browser.find_elements(By.CSS_SELECTOR, "#keys-table tbody td:first-child")
    ]
    assert names == ["batch-jobs"], "the refused forms made no key"
