"""The README's serve section documents every flag of serve-package, simulate, proxy and demo."""

from __future__ import annotations

import argparse

import pytest

from omaha_proxy.cli import build_parser
from tests.conftest import REPO


def serve_section() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("<!-- section:serve -->") : text.index("<!-- /section:serve -->")]


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("command", ["serve-package", "simulate", "proxy", "demo"])
def test_every_flag_is_in_the_readme(command) -> None:
    section = serve_section()
    assert f"`omaha-proxy {command}" in section
    flags = [
        o
        for a in subparser(command)._actions
        for o in a.option_strings
        if o.startswith("--") and o != "--help"
    ]
    missing = [f for f in flags if f"`{f}" not in section]
    assert not missing, f"README serve section lacks {missing} of {command}"
