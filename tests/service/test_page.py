"""The radiologist page in headless Chromium: upload, see the image, draft, check a report; screenshot kept."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from servicesupport import Server, build_tiny_classifier, make_settings, start_server
from testsupport import REPO, pydicom_file

ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server_with_classifier(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    """The tiny model with a finding classifier beside it, so the page shows image findings and an image check."""
    model = tmp_path_factory.mktemp("page") / "tiny-radlvlm"
    shutil.copytree(tiny_model_dir, model)
    # Reads "abnormal" (a finding is stated); pleural thickening is read but never called.
    build_tiny_classifier(model / "findings", abnormal_threshold=0.01, never_called=("Pleural_Thickening",))
    settings, key, check_key = make_settings(tmp_path_factory.mktemp("page-service"), model)
    uv, thread, url, app = start_server(settings)
    yield Server(url, key, check_key, settings, app)
    uv.should_exit = True
    thread.join(timeout=30)


def test_page_drafts_and_checks_a_real_study(browser, server_with_classifier: Server) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server = server_with_classifier
    wait = WebDriverWait(browser, 120)
    browser.get(server.url + "/")
    assert "radlvlm" in browser.title
    browser.find_element(By.ID, "key").send_keys(server.key)
    browser.find_element(By.ID, "file").send_keys(str(pydicom_file("RG1_UNCR.dcm")))
    image = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#preview img")))
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 0)
    browser.find_element(By.ID, "explain").click()
    browser.find_element(By.ID, "draft-btn").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "draft"), "Impression"))
    assert "tiny-radlvlm" in browser.find_element(By.ID, "draft").text
    assert "Image findings" in browser.find_element(By.ID, "draft").text  # what the classifier read
    thickening = browser.find_element(By.XPATH, "//td[text()='Pleural_Thickening']/following-sibling::td").text
    assert thickening.endswith("(never called: too imprecise)")  # not "called at 0%"
    # Where: a button per stated finding lays its heat map over the radiograph, and takes it off again.
    heat = browser.find_element(By.ID, "heat")
    assert not heat.is_displayed()
    button = browser.find_element(By.CSS_SELECTOR, ".where button")
    assert button.text == "Effusion"
    button.click()
    wait.until(lambda d: heat.is_displayed() and d.execute_script("return arguments[0].naturalWidth", heat) > 0)
    assert heat.get_attribute("src").startswith("data:image/png;base64,")
    assert heat.size == image.size  # stretched over the displayed radiograph
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "page-where.png"))
    button.click()
    assert not heat.is_displayed()
    report = browser.find_element(By.ID, "report")
    report.clear()
    report.send_keys("FINDINGS: Small left pleural effusion. IMPRESSION: No effusion.")
    # SIMPLE: the tiny test model's context (512 tokens) has no room for a COMPLEX answer after the image.
    Select(browser.find_element(By.ID, "mode")).select_by_value("simple")
    browser.find_element(By.ID, "check-btn").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "check"), "checked against the image"))
    assert "probability of an error" in browser.find_element(By.ID, "check").text
    assert "Not checked: laterality" in browser.find_element(By.ID, "check").text
    assert "No effusion." in browser.find_element(By.ID, "report-view").text
    # A text-only check of a report without an impression cannot be done: the page says why, not "no error".
    browser.execute_script("arguments[0].value = ''", browser.find_element(By.ID, "file"))
    report.clear()
    report.send_keys("FINDINGS: Small left pleural effusion.")
    browser.find_element(By.ID, "check-btn").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "check"), "cannot check"))
    assert "no error found" not in browser.find_element(By.ID, "check").text
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_page_drafts_a_png_with_the_default_view(browser, server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from PIL import Image as PILImage
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    png = tmp_path / "cxr.png"
    PILImage.fromarray((np.add.outer(np.arange(96), np.arange(80)) * 2 % 256).astype(np.uint8)).save(png)
    wait = WebDriverWait(browser, 120)
    browser.get(server.url + "/")
    browser.find_element(By.ID, "key").send_keys(server.key)
    browser.find_element(By.ID, "file").send_keys(str(png))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#preview img")))
    browser.find_element(By.ID, "draft-btn").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "draft"), "Impression"))
    text = browser.find_element(By.ID, "draft").text
    assert "view PA (assumed)" in text and "view_assumed" in text
