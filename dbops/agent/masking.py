"""Every spelling of a secret dbops or a library it hands one to may write (stdlib only: the
agent masks its answers with it, the host its outputs through config.Settings.secrets)."""

from __future__ import annotations

import urllib.parse


def secret_forms(*secrets: str) -> list[str]:
    """Every spelling of each secret that can end up in an output, longest first: raw,
    percent-encoded as urllib, a form post and SQLAlchemy's URL write it, and each with %
    doubled as configparser needs."""
    forms: set[str] = set()
    for secret in filter(None, secrets):
        encoded = {
            secret,
            urllib.parse.quote(secret, safe=""),
            urllib.parse.quote(secret),
            urllib.parse.quote_plus(secret),
            urllib.parse.quote(secret, safe=" +"),  # SQLAlchemy's URL.render_as_string
        }
        forms |= encoded | {f.replace("%", "%%") for f in encoded}
    return sorted(forms, key=lambda f: (-len(f), f))


def masked(text: str, *secrets: str) -> str:
    """``text`` with every form of each secret replaced by ****."""
    for form in secret_forms(*secrets):
        text = text.replace(form, "****")
    return text
