"""The chat page in a real browser: Debian's Chromium, headless, driven through chromedriver.

The test types a question about the sample corpus, watches the answer grow while the request is
still running (it streams), and finds the sources as links to the right document."""

import shutil
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By

from helpers import EXPECTED_TITLE, QUESTION, Service

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("Chromium and chromedriver are needed (scripts/test.sh installs Debian's chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def test_the_page_streams_an_answer_with_sources(corpus, browser):
    env, _ = corpus
    server = Service(env)
    try:
        browser.get(f"{server.base}/")
        assert browser.title == "engram"
        browser.find_element(By.ID, "question").send_keys(QUESTION)
        browser.find_element(By.ID, "send").click()
        send = browser.find_element(By.ID, "send")
        partial, deadline = None, time.time() + 300
        while True:
            answers = browser.find_elements(By.CSS_SELECTOR, "#log .answer")
            text = answers[-1].text.strip() if answers else ""
            running = not send.is_enabled()
            if running and text and partial is None:
                partial = text  # text on the page while the request still runs: it streams
            if not running and answers:
                break
            assert time.time() < deadline, "no answer within 300 s"
            time.sleep(0.05)
        assert not browser.find_elements(By.CSS_SELECTOR, "#log .error"), browser.find_element(By.ID, "log").text
        final = answers[-1].text.strip()
        assert final, "the page shows an answer"
        assert partial is not None and len(partial) < len(final), (partial, final)
        links = browser.find_elements(By.CSS_SELECTOR, "#log .sources a")
        assert links, "the page lists the sources"
        assert EXPECTED_TITLE in links[0].text and links[0].get_attribute("href").startswith("https://www.notion.so/")
    finally:
        assert server.stop() == 0
