"""The Models view in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven by
selenium logs in through Airflow's login page, opens the Models view in the Airflow UI, follows a link
to a model card, finds its plots loaded, and reads a retrain run's note on the run's page.

SCREENSHOT_DIR=docs saves the screenshots the README links (models-view.png, model-card.png, run-note.png).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.conftest import missing_tool
from tests.ui.conftest import ViewAirflow, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MODEL = "diabetes_progression"

if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    missing_tool(f"no browser: {CHROMIUM} or {CHROMEDRIVER} is missing; install Debian's chromium and "
                 "chromium-driver (.ci/run does, as root) to run the browser test")

from selenium import webdriver  # noqa: E402  (only once a browser is known to exist)
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT = 60


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver: WebDriver, name: str) -> None:
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def _log_in(driver: WebDriver, live: ViewAirflow) -> None:
    driver.get(f"{live.base_url}/auth/login")
    wait = WebDriverWait(driver, WAIT)
    wait.until(lambda d: d.find_elements(By.NAME, "username"))
    driver.find_element(By.NAME, "username").send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(live.password)
    driver.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
    wait.until(lambda d: d.get_cookie("_token"))


def _images_loaded(driver: WebDriver) -> list[int]:
    widths = driver.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1);")
    return [int(w) for w in widths] if widths and all(w >= 0 for w in widths) else []


def test_an_operator_sees_models_cards_and_run_notes(view_airflow: ViewAirflow, browser: WebDriver) -> None:
    wait = WebDriverWait(browser, WAIT)
    _log_in(browser, view_airflow)

    # The Models view inside the Airflow UI: its nav entry's page, with the view in a frame.
    browser.get(f"{view_airflow.base_url}/plugin/models")
    frame = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "iframe[src*='/models-view']"))[0]
    browser.switch_to.frame(frame)
    wait.until(lambda d: d.find_elements(By.LINK_TEXT, MODEL))
    browser.find_element(By.LINK_TEXT, MODEL).click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "p.champion a"))
    assert browser.find_elements(By.CSS_SELECTOR, "svg.trend polyline")
    browser.switch_to.default_content()
    _screenshot(browser, "models-view.png")

    # Follow the champion's link to its model card; its plots are images that loaded.
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe[src*='/models-view']"))
    browser.find_element(By.CSS_SELECTOR, "p.champion a").click()
    wait.until(lambda d: "/versions/" in d.execute_script("return location.pathname"))
    widths = wait.until(_images_loaded)
    assert len(widths) >= 2 and all(w > 0 for w in widths), f"card images did not load: {widths}"
    assert browser.find_elements(By.CSS_SELECTOR, "nav.models-view a[href$='/quality']")
    browser.execute_script("document.images[0].scrollIntoView({block: 'center'});")
    browser.switch_to.default_content()
    _screenshot(browser, "model-card.png")

    # The retrain run that made the champion, on its Airflow page: its note states the outcome.
    run_id = view_airflow.first_run
    note = view_airflow.api("GET", f"/dags/retrain/dagRuns/{quote(run_id, safe='')}").json().get("note")
    browser.get(f"{view_airflow.base_url}/dags/retrain/runs/{quote(run_id, safe='')}")
    try:
        wait_for(lambda: "promoted v1" in browser.find_element(By.TAG_NAME, "body").text, 20,
                 "the run's note on its page", interval=1)
    finally:
        _screenshot(browser, "run-note.png")
    assert note and note.startswith("promoted v1"), f"the run's note is {note!r}"


# --- the operator's day: every link and action of the Models view, from inside Airflow's frame -------

def _frame(driver: WebDriver, live: ViewAirflow, path: str) -> None:
    """Airflow's Models page, its frame entered, and the frame at the view's `path`."""
    wait = WebDriverWait(driver, WAIT)
    if "/plugin/models" not in driver.current_url:
        driver.get(f"{live.base_url}/plugin/models")
    driver.switch_to.default_content()
    frame = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "iframe[src*='/models-view']"))[0]
    driver.switch_to.frame(frame)
    target = f"/models-view{path}"
    if driver.execute_script("return location.pathname + location.search") != target:
        driver.execute_script("location.replace(arguments[0])", target)
    wait.until(lambda d: d.execute_script("return location.pathname + location.search") == target
               and d.execute_script("return document.readyState") == "complete" and d.find_elements(By.TAG_NAME, "h1"))


def _hrefs(driver: WebDriver) -> list[tuple[str, bool]]:
    """Every link of the frame's page, once each, as (href, opens an Airflow page)."""
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll('a[href]')).map(a => [a.getAttribute('href'), "
        "a.hasAttribute('data-airflow')]);")
    return list(dict.fromkeys((str(h), bool(a)) for h, a in found))


def _click(driver: WebDriver, href: str) -> None:
    link = next(a for a in driver.find_elements(By.CSS_SELECTOR, "a[href]") if a.get_attribute("href").endswith(href)
                or a.get_dom_attribute("href") == href)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", link)
    link.click()


def _top_path(driver: WebDriver) -> str:
    driver.switch_to.default_content()
    return str(driver.execute_script("return location.pathname"))


def _follow(driver: WebDriver, live: ViewAirflow, page: str, href: str, to_airflow: bool) -> str:
    """Click `href` on the view's `page` inside the frame; where it landed: the top window's path for an Airflow
    page (the frame itself never leaves the view), the frame's path and query for a view page."""
    _frame(driver, live, page)
    driver.execute_script("window.__before = true;")  # gone once a new page (even the same URL) has loaded
    _click(driver, href)
    wait = WebDriverWait(driver, WAIT)
    if to_airflow:  # Airflow's router took it: the top window is on the page, the view's frame is gone
        wait.until(lambda d: _top_path(d) != "/plugin/models"
                   and not d.find_elements(By.CSS_SELECTOR, "iframe[src*='/models-view']"))
        landed = _top_path(driver)
        assert landed == urlsplit(href).path.replace("%3A", ":").replace("%2B", "+") or landed == urlsplit(href).path, \
            f"{href} from {page} landed on {landed}"
        return landed
    wait.until(lambda d: not d.execute_script("return window.__before === true")
               and d.execute_script("return document.readyState") == "complete" and d.find_elements(By.TAG_NAME, "h1"))
    text = driver.find_element(By.TAG_NAME, "body").text
    assert "Internal Server Error" not in text and '"detail"' not in text, f"{href}: {text[:300]}"
    return str(driver.execute_script("return location.pathname + location.search"))


def _prefilled(driver: WebDriver) -> dict[str, Any]:
    return dict(driver.execute_script(
        "var o = {}; document.querySelectorAll('[data-param]').forEach(function (i) {"
        "o[i.name] = i.type === 'checkbox' ? i.checked : i.value; }); return o;"))


@pytest.mark.timeout(1800)
def test_an_operator_works_from_the_models_view(view_airflow: ViewAirflow, browser: WebDriver) -> None:
    live, wait = view_airflow, WebDriverWait(browser, WAIT)
    _log_in(browser, live)
    browser.get(f"{live.base_url}/plugin/models")
    _frame(browser, live, "/")
    _click(browser, f"/models-view/{MODEL}")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "section#versions"))
    model_page = f"/{MODEL}"

    # every link of the model page, clicked inside the frame, lands where it says
    landed: dict[str, str] = {}
    for href, to_airflow in _hrefs(browser):
        if href.endswith(".csv"):  # a download, no page: its content is test_models_view's
            continue
        try:
            landed[href] = _follow(browser, live, model_page, href, to_airflow)
        except TimeoutException:
            browser.switch_to.default_content()
            _screenshot(browser, "failed-link.png")
            raise AssertionError(f"the link {href} (Airflow page: {to_airflow}) did not land within {WAIT} s; the "
                                 f"window is at {browser.current_url}") from None
        if to_airflow:
            browser.get(f"{live.base_url}/plugin/models")
    runs = [h for h in landed if h.startswith("/dags/retrain/runs/")]
    assert len(runs) == 2 and all(landed[h].startswith("/dags/retrain/runs/") for h in runs)
    assert landed[f"/models-view/{MODEL}/actions/score"] == f"/models-view/{MODEL}/actions/score"
    assert any(p.startswith(f"/models-view/{MODEL}/compare?a=") for p in landed.values())
    assert f"/models-view/{MODEL}/forecasts" in landed.values() and f"/models-view/{MODEL}/metrics" in landed.values()
    assert {"/dags/set_champion", "/dags/set_shadow", "/dags/retrain", "/dags/score_patients"} <= set(landed.values())

    # each action's form is prefilled; "make champion" with no reason is refused by Airflow, in words, and no run
    champion = live.rows("SELECT version FROM pipeline.champion")[0]["version"]
    other = 2 if champion == 1 else 1
    _frame(browser, live, model_page)
    _follow(browser, live, model_page, f"/models-view/{MODEL}/actions/make_champion?version={other}", False)
    assert _prefilled(browser) == {"mode": "promote", "to_version": str(other), "reason": "", "force": False}
    browser.find_element(By.CSS_SELECTOR, "form.trigger button[type='submit']").click()
    wait.until(lambda d: "Airflow refused the run" in d.find_element(By.CSS_SELECTOR, ".outcome").text)
    assert "reason" in browser.find_element(By.CSS_SELECTOR, ".outcome").text.lower()
    assert live.dag_runs("set_champion") == []
    _follow(browser, live, model_page, f"/models-view/{MODEL}/actions/add_shadow?version={other}", False)
    assert _prefilled(browser) == {"action": "add", "version": str(other), "reason": ""}

    # "score now": the form's button triggers the run as the logged-in user, and its Airflow page opens
    _follow(browser, live, model_page, f"/models-view/{MODEL}/actions/score", False)
    browser.find_element(By.NAME, "note").send_keys("scored from the Models view")
    browser.find_element(By.CSS_SELECTOR, "form.trigger button[type='submit']").click()
    wait.until(lambda d: _top_path(d).startswith("/dags/score_patients/runs/"))
    [run] = [r for r in live.dag_runs("score_patients") if r["run_type"] == "manual"]
    assert _top_path(browser) == f"/dags/score_patients/runs/{quote(run['dag_run_id'], safe='')}" or \
        _top_path(browser) == f"/dags/score_patients/runs/{run['dag_run_id']}"
    assert run.get("triggering_user_name") == "admin" and "scored from the Models view" in (run["note"] or "")
    _screenshot(browser, "triggered-from-view.png")

    # compare two versions; the forecasts page, searched by id in the browser
    _frame(browser, live, f"/{MODEL}/compare?a=1&b=2")
    interval = browser.find_element(By.CSS_SELECTOR, "p.interval").text
    assert interval.count("interval of the RMSE change B − A (candidate − champion; negative: B is better)") == 1
    _frame(browser, live, f"/{MODEL}/forecasts")
    assert browser.find_element(By.CSS_SELECTOR, "section#scoring-runs")
    browser.find_element(By.CSS_SELECTOR, "form.search input[name='ids']").send_keys("1 2 3")
    browser.find_element(By.CSS_SELECTOR, "form.search button").click()
    wait.until(lambda d: "3 id(s) searched" in d.find_element(By.TAG_NAME, "body").text)
    browser.switch_to.default_content()


def test_a_logged_out_browser_logs_in_and_comes_back(view_airflow: ViewAirflow, browser: WebDriver) -> None:
    wait = WebDriverWait(browser, WAIT)
    browser.get(f"{view_airflow.base_url}/models-view/{MODEL}")
    wait.until(lambda d: d.find_elements(By.NAME, "username"))
    assert "/login" in browser.current_url and "next=" in browser.current_url
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(view_airflow.password)
    browser.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
    wait.until(lambda d: urlsplit(d.current_url).path == f"/models-view/{MODEL}")
    assert browser.find_elements(By.CSS_SELECTOR, "section#versions")
