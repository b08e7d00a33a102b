"""The README documents every option, every CLI command and every flag (sqlite-utils' test_docs)."""

from __future__ import annotations

import argparse
import re

import pytest

from omaha_proxy.cli import build_parser
from omaha_proxy.mitm import omaha as entry
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


class _RecordingLoader:
    """Collects what each addon's ``load`` declares, without starting a mitmproxy master
    (a master made at collection time leaves log handlers on a closed loop)."""

    def __init__(self) -> None:
        self.options: list[str] = []

    def add_option(self, name: str, *args: object, **kwargs: object) -> None:
        self.options.append(name)

    def add_command(self, *args: object, **kwargs: object) -> None:
        pass


def _options() -> list[str]:
    loader = _RecordingLoader()
    for addon in entry.addons:
        addon.load(loader)
    return sorted(name for name in loader.options if name.startswith("omaha_"))


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = build_parser()
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((name, sub))
                for inner in sub._actions:
                    if isinstance(inner, argparse._SubParsersAction):
                        out.extend((f"{name} {n}", s) for n, s in inner.choices.items())
    return out


OPTIONS = _options()
COMMANDS = _commands()


def test_there_are_options_and_commands_to_document() -> None:
    assert "omaha_db" in OPTIONS
    assert any(name == "decode" for name, _ in COMMANDS)


@pytest.mark.parametrize("option", OPTIONS)
def test_every_addon_option_is_in_the_readme(option: str) -> None:
    assert re.search(rf"`{option}`", README), f"option {option} is not documented in README.md"


@pytest.mark.parametrize(("command", "parser"), COMMANDS, ids=[c for c, _ in COMMANDS])
def test_every_cli_command_and_flag_is_in_the_readme(command: str, parser: argparse.ArgumentParser) -> None:
    assert f"omaha-proxy {command}" in README, f"`omaha-proxy {command}` is not documented in README.md"
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert flag in README, (
                    f"flag {flag} of `omaha-proxy {command}` is not documented in README.md"
                )


def test_readme_quickstart_is_the_two_dev_commands() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("##", 1)[0]
    assert "./dev demo" in quickstart and "./dev test" in quickstart
    ci = (REPO / ".ci" / "run").read_text()
    assert "./dev test" in ci


def _mitmproxy_commands() -> list[str]:
    names = []
    for addon in entry.addons:
        for attr in dir(type(addon)):
            name = getattr(getattr(addon, attr, None), "command_name", None)
            if isinstance(name, str):
                names.append(name)
    return sorted(names)


@pytest.mark.parametrize("command", _mitmproxy_commands())
def test_every_mitmproxy_command_is_in_the_readme(command: str) -> None:
    assert f"`{command}" in README, f"mitmproxy command {command} is not documented in README.md"
