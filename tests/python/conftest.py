"""Fixtures of the real-client tests: one engram home per session, built by the real pipeline."""

import pytest

from helpers import build_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(env, home): the sample export extracted, filtered, indexed, and the base model promoted."""
    home = tmp_path_factory.mktemp("engram-home")
    return build_corpus(home), home
