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
from urllib.parse import quote

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
