"""One confirmation rule for every task that changes the database."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dbops import confirm as confirm_mod
from dbops.confirm import confirm
from dbops.errors import OpsError


def ask(settings, **kw):
    confirm(settings, "Do it?", state="unchanged", next_command="invoke x --yes", **kw)


def test_yes_answers_without_asking(settings, monkeypatch):
    monkeypatch.setattr(confirm_mod, "interactive", lambda: False)
    ask(settings, yes=True)


@pytest.mark.parametrize(
    "environment, needle",
    [
        ("development", "no terminal to confirm on: add --yes"),
        ("production", "ENVIRONMENT=production and no terminal to confirm on: add --yes"),
    ],
)
def test_no_terminal_and_no_yes_is_refused(settings, monkeypatch, environment, needle):
    monkeypatch.setattr(confirm_mod, "interactive", lambda: False)
    with pytest.raises(OpsError, match=needle) as err:
        ask(replace(settings, environment=environment), yes=False)
    assert err.value.next_command == "invoke x --yes" and err.value.state == "unchanged"


def test_the_acceptance_flag_is_named(settings, monkeypatch):
    monkeypatch.setattr(confirm_mod, "interactive", lambda: False)
    with pytest.raises(OpsError, match="add --accept-data-loss"):
        ask(settings, yes=False, flag="--accept-data-loss")


def test_at_a_terminal_the_expected_word_must_be_typed(settings, monkeypatch):
    monkeypatch.setattr(confirm_mod, "interactive", lambda: True)
    monkeypatch.setattr("builtins.input", lambda: "y")
    with pytest.raises(OpsError, match="not confirmed"):
        ask(settings, yes=False, expect="app")
    monkeypatch.setattr("builtins.input", lambda: "app")
    ask(settings, yes=False, expect="app")
