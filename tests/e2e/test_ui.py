"""What a person sees, in a real headless Chromium (Debian's chromium + chromedriver): the
Airflow UI (log in, a stage's log, the trigger form), the run report from the task's link,
from MLflow's artifact viewer and from disk. Screenshots go to build/test-artifacts."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tasks.settings import PROJECT_ROOT
from tasks.stage import safe_name
from tests.e2e.conftest import PASSWORD

pytestmark = [pytest.mark.rest, pytest.mark.browser]
SCREENSHOTS = PROJECT_ROOT / "build" / "test-artifacts"
WAIT_S = 60
SECTIONS = ["Data", "Model", "Training", "Evaluation", "Compression", "Canary"]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        reason = ("Debian's chromium and chromium-driver are not installed "
                  "(scripts/get_chromium.sh installs them where apt is allowed)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    session = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield session
    finally:
        session.quit()


def _until(browser, condition: Callable, what: str, screenshot: str):
    """Wait for condition(browser); on timeout, leave a screenshot of what was there."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # The UI re-renders while it loads: an element found a moment ago may be replaced.
        return WebDriverWait(browser, WAIT_S, ignored_exceptions=[
            StaleElementReferenceException]).until(condition)
    except TimeoutException:
        browser.save_screenshot(str(SCREENSHOTS / f"{screenshot}-timeout.png"))
        raise AssertionError(f"{what} did not happen within {WAIT_S}s; "
                             f"see {SCREENSHOTS / screenshot}-timeout.png") from None


def _log_in(browser, base: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    browser.get(f"{base}/auth/login")
    _until(browser, ec.presence_of_element_located((By.NAME, "username")), "the login form",
           "login").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    _until(browser, ec.element_to_be_clickable((By.CSS_SELECTOR, "button[type=submit]")),
           "the sign-in button", "login").click()
    _until(browser, lambda b: "/auth/login" not in b.current_url, "signing in", "login")


def _click(element) -> bool:
    element.click()
    return True


def _body_text(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.TAG_NAME, "body").text


def _images(browser) -> list[dict]:
    return browser.execute_script(
        "return Array.from(document.images).map(i => ({src: i.src.slice(0, 40), "
        "complete: i.complete, width: i.naturalWidth}))")


def _assert_report_rendered(browser, screenshot: str) -> list[dict]:
    """Every chart of the report page in view has loaded (natural width > 0)."""
    _until(browser, lambda b: (imgs := _images(b)) and all(i["complete"] for i in imgs),
           "the report's charts to load", screenshot)
    images = _images(browser)
    browser.save_screenshot(str(SCREENSHOTS / f"{screenshot}.png"))
    assert len(images) >= 3 and all(i["width"] > 0 for i in images), images
    assert all(i["src"].startswith("data:image/png;base64,") for i in images), images
    assert "Validation" in _body_text(browser)
    return images


def _task_page(base: str, run_id: str, task: str) -> str:
    return f"{base}/dags/aigc_lifecycle/runs/{quote(run_id, safe='')}/tasks/{task}"


def test_a_person_logs_in_and_reads_a_stage_log(server, triggered, browser):
    _log_in(browser, server.base)
    browser.get(f"{server.base}/dags/aigc_lifecycle")
    _until(browser, lambda b: "aigc_lifecycle" in _body_text(b) and "ingest" in
           _body_text(b), "the DAG page", "dag")
    browser.save_screenshot(str(SCREENSHOTS / "dag.png"))
    # The run a person has (made with the executor, as `make run` does) shows its logs.
    browser.get(_task_page(server.base, triggered.run_id, "ingest"))
    _until(browser, lambda b: "[stage ingest]" in _body_text(b), "the ingest log", "log")
    browser.save_screenshot(str(SCREENSHOTS / "ingest-log.png"))
    assert "ingested 400 rows from demo://chatterbot" in _body_text(browser)


def test_the_trigger_form_has_sections_and_refuses_an_out_of_range_value(server, api,
                                                                          browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    session, dag_url = api
    runs_before = session.get(f"{dag_url}/dagRuns", timeout=60).json()["total_entries"]
    _log_in(browser, server.base)
    browser.get(f"{server.base}/dags/aigc_lifecycle")
    _until(browser, ec.element_to_be_clickable(
        (By.XPATH, "//button[normalize-space()='Trigger']")), "the Trigger button",
        "trigger").click()
    dialog = _until(browser, ec.visibility_of_element_located(
        (By.CSS_SELECTOR, "[role=dialog][data-state=open]")), "the trigger form", "trigger")
    for section in SECTIONS:
        _until(browser, ec.visibility_of_element_located(
            (By.CSS_SELECTOR, f"[id$=':trigger:{section}']")), f"the {section} section",
            "trigger")
    submit = browser.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")
    # With the defaults the form is valid: no optional field counts as a missing value.
    assert submit.is_enabled()
    browser.save_screenshot(str(SCREENSHOTS / "trigger-form.png"))
    browser.find_element(By.CSS_SELECTOR, "[id$=':trigger:Training']").click()
    max_steps = _until(browser, ec.visibility_of_element_located(
        (By.NAME, "element_max_steps")), "the max_steps field", "trigger")
    # Typed so that every intermediate text is a number: a lone "-" is not one, and the field
    # may redraw itself empty in between under load. (Home would be the spin button's "set
    # to minimum", hence the arrow key.)
    max_steps.send_keys(Keys.CONTROL, "a")
    max_steps.send_keys("1", Keys.ARROW_LEFT, "-")
    _until(browser, lambda b: max_steps.get_attribute("value") == "-1", "typing -1",
           "trigger-typed")
    max_steps.send_keys(Keys.TAB)
    assert max_steps.get_attribute("value") == "-1"  # kept as typed, not clamped to 1
    submit.click()
    _until(browser, lambda b: "Invalid input for param max_steps" in dialog.text,
           "the form's refusal", "trigger-refused")
    message = dialog.find_element(By.XPATH, ".//*[contains(text(), 'Invalid input for param')]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", message)
    browser.save_screenshot(str(SCREENSHOTS / "trigger-refused.png"))
    assert "-1 is less than the minimum of 1" in dialog.text
    assert session.get(f"{dag_url}/dagRuns", timeout=60).json()["total_entries"] == \
        runs_before


def test_the_run_report_renders_from_the_task_link_mlflow_and_disk(server, triggered,
                                                                    browser):
    from selenium.webdriver.common.by import By

    _log_in(browser, server.base)
    browser.get(_task_page(server.base, triggered.run_id, "report"))
    _until(browser, lambda b: _click(b.find_element(By.CSS_SELECTOR, "a[title=Details]")),
           "the task's Details tab", "report-task")
    # The tab re-renders while it loads: read and click the link by looking it up each time.
    report_page = _until(browser, lambda b: next(
        (a.get_attribute("href") for a in b.find_elements(
            By.CSS_SELECTOR, "a[href*='/artifacts/report/report.html']") if a.is_displayed()),
        None), "the Run report link", "report-task")
    browser.save_screenshot(str(SCREENSHOTS / "report-task.png"))
    assert report_page.startswith(server.mlflow)
    home = browser.current_window_handle
    # Opens MLflow's artifact viewer in a new tab.
    _until(browser, lambda b: _click(b.find_element(By.CSS_SELECTOR, f"a[href='{report_page}']")),
           "clicking the Run report link", "report-task")
    _until(browser, lambda b: len(b.window_handles) == 2, "the report's tab", "report-task")
    browser.switch_to.window(next(h for h in browser.window_handles if h != home))
    # MLflow shows an HTML artifact inside a sandboxed frame.
    frame = _until(browser, lambda b: b.find_elements(By.TAG_NAME, "iframe"),
                   "MLflow's artifact viewer", "report-mlflow")[0]
    browser.save_screenshot(str(SCREENSHOTS / "report-mlflow-page.png"))
    browser.switch_to.frame(frame)
    in_mlflow = _assert_report_rendered(browser, "report-mlflow")
    browser.switch_to.default_content()
    browser.close()
    browser.switch_to.window(home)

    result = (Path(server.env["AIGC_HOME"]) / "artifacts" / "aigc_lifecycle"
              / safe_name(triggered.run_id) / "report" / "result.json")
    report = json.loads(result.read_text())
    assert report["url"] == report_page
    browser.get(Path(report["report_uri"]).as_uri())
    assert _assert_report_rendered(browser, "report-disk") == in_mlflow


def test_mlflow_opens_on_runs_and_a_stage_run_links_back_to_airflow(server, api, triggered,
                                                                      browser):
    from selenium.webdriver.common.by import By

    session, _ = api
    links = session.get(f"{triggered.url}/taskInstances/train/links", timeout=60).json()
    browser.get(links["extra_links"]["MLflow run"])
    back = _task_page("", triggered.run_id, "train")
    hrefs = _until(browser, lambda b: [h for a in b.find_elements(
        By.CSS_SELECTOR, "a[href*='/dags/aigc_lifecycle/runs/']")
        if (h := a.get_attribute("href")).endswith(back)], "the link back to Airflow",
        "mlflow-train")
    browser.save_screenshot(str(SCREENSHOTS / "mlflow-train.png"))
    assert "Evaluation runs" not in _body_text(browser)  # the training view, not GenAI's
    assert requests.get(hrefs[0], timeout=30).status_code == 200
