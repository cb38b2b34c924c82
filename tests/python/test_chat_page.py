"""The chat page in a real browser: Debian's Chromium, headless, driven through chromedriver.

One test types a question about the sample corpus, watches the answer grow while the request is
still running (it streams), and finds the sources as links to the right document. Another holds a
three-turn conversation over a corpus with a note that carries `<script>` and HTML: the follow-up
finds its document through the conversation, the note's snippet shows as text and nothing in it
runs, a reload keeps the conversation and "New conversation" forgets it."""

import shutil
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By

from helpers import EXPECTED_TITLE, QUESTION, Service, build_corpus, pipeline

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


HOSTILE_NOTE = """Spare house key

The spare house key is kept in the blue flowerpot beside the back door, under the saucer. The
neighbours at number 12 have the second spare, and the garage code is written on the card in the
kitchen drawer. <script>window.pwned = true</script> <img src=x onerror="window.pwned = true">
If the key is missing, call the letting agent before anyone else, and remember to put it back under
the saucer after use so that the next person who needs it can find it without phoning anyone.
"""


@pytest.fixture(scope="module")
def hostile_corpus(tmp_path_factory):
    home = tmp_path_factory.mktemp("engram-home-hostile")
    env = build_corpus(home)
    note = tmp_path_factory.mktemp("notes") / "spare-key.txt"
    note.write_text(HOSTILE_NOTE)
    pipeline(env, "extract", "files", str(note))
    pipeline(env, "filter")
    pipeline(env, "index")
    return env


def ask(browser, question):
    """Types a question, waits for its answer; returns the turn's element."""
    before = len(browser.find_elements(By.CSS_SELECTOR, "#log .turn"))
    browser.find_element(By.ID, "question").send_keys(question)
    browser.find_element(By.ID, "send").click()
    deadline = time.time() + 300
    while True:
        turns = browser.find_elements(By.CSS_SELECTOR, "#log .turn")
        if len(turns) > before and browser.find_element(By.ID, "send").is_enabled():
            break
        assert time.time() < deadline, f"no answer to {question!r} within 300 s"
        time.sleep(0.05)
    assert not browser.find_elements(By.CSS_SELECTOR, "#log .error"), browser.find_element(By.ID, "log").text
    turn = turns[-1]
    assert turn.find_element(By.CSS_SELECTOR, ".answer").text.strip(), "the page shows an answer"
    return turn


def test_a_three_turn_conversation_with_sources_and_a_hostile_note_shown_as_text(hostile_corpus, browser):
    server = Service(hostile_corpus)
    try:
        browser.get(f"{server.base}/")
        browser.execute_script("localStorage.clear()")
        browser.refresh()

        key = ask(browser, "Where is the spare house key kept?")
        titles = [a.text for a in key.find_elements(By.CSS_SELECTOR, ".sources li > a, .sources li > span:first-child")]
        assert any("spare-key" in t for t in titles), titles
        snippets = " ".join(q.text for q in key.find_elements(By.CSS_SELECTOR, ".snippet"))
        assert "<script>window.pwned = true</script>" in snippets, snippets
        assert browser.execute_script("return window.pwned === undefined"), "nothing from a note runs"
        assert not browser.find_elements(By.CSS_SELECTOR, "#log script, #log img"), "no element from a note"

        ask(browser, "What goes into the weeknight dal?")
        follow_up = ask(browser, "And how long does it keep in the fridge?")
        searched = follow_up.find_element(By.CSS_SELECTOR, ".searched").text
        assert "weeknight dal" in searched.lower(), searched
        first = follow_up.find_element(By.CSS_SELECTOR, ".sources li a")
        assert first.text.endswith("Weeknight Dal"), first.text
        assert browser.execute_script("return window.engramTurns().length") == 3

        browser.refresh()
        assert len(browser.find_elements(By.CSS_SELECTOR, "#log .turn")) == 3, "a reload keeps the conversation"
        assert browser.execute_script("return window.pwned === undefined"), "nothing runs on a reload either"
        browser.find_element(By.ID, "new").click()
        assert browser.find_elements(By.CSS_SELECTOR, "#log .turn") == []
        assert browser.execute_script("return window.engramTurns().length") == 0
    finally:
        assert server.stop() == 0
