"""The README's promises about itself: its flags table and its two commands stay true."""

from __future__ import annotations

import re
import shlex

from processes import REPO

from kamisama_server.config import flags_markdown
from kamisama_server.loader import load_app

README = (REPO / "README.md").read_text()


def test_flags_table_is_generated_from_the_options():
    table = README.split("<!-- flags:start -->\n", 1)[1].split("<!-- flags:end -->", 1)[0]
    assert table == flags_markdown(), "regenerate: python -m kamisama_server.config --markdown"


def _command_after(comment: str) -> str:
    match = re.search(rf"^# {re.escape(comment)}.*\n(.+)$", README, re.M)
    assert match, f"README has no command after '# {comment}'"
    return match[1]


def test_first_screen_has_exactly_two_setup_commands_and_the_serve_one_names_a_real_app():
    first_screen = README.split("## The server", 1)[0]
    assert first_screen.count("```bash") == 2
    serve = shlex.split(_command_after("1. serve the example").split("&&")[-1])
    assert serve[0].endswith("kamisama-serve")
    assert callable(load_app(serve[1], app_dir=str(REPO)))


def test_ci_runs_the_readme_test_command():
    assert "pytest" in _command_after("2. run the tests")
    assert "# 2. run the tests" in (REPO / ".ci" / "run").read_text()
