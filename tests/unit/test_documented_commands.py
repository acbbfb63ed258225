"""Every `edgefleet ...` command the README, docs/ and examples/ show, as a user would type it.

Each one must parse with the real command line (the README once showed `edgefleet up -c fleet.yaml`,
which failed: `--config` worked only before the subcommand). The ones that need no fleet are run
here, as written; the fleet and registry commands (up, generate, status, federate, train, models)
are run by the e2e and integration tests against a real fleet and MLflow store.
"""

from __future__ import annotations

import argparse
import functools
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

from edgefleet.cli.main import build_parser, main, parse
from edgefleet.config import load_config

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").iterdir())]
# A synopsis, not a command: optional parts, ellipses, placeholders (`<version>`, `VERSION`, `S`).
SYNOPSIS = re.compile(r"\[|\.\.\.|…|<|\b[A-Z][A-Z_]*\b(?!\.)")


def _commands_in(text: str) -> set[str]:
    found = set(re.findall(r"`((?:\.venv/bin/)?edgefleet [^`]+)`", text))  # inline code
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):  # shell blocks
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if re.match(r"(\.venv/bin/)?edgefleet ", line):
                found.add(line)
    # A trailing `&` is the shell's (a background job), not an argument.
    commands = (c.split("|")[-1].strip().removesuffix("&").strip().removeprefix(".venv/bin/") for c in found)
    return {c for c in commands if not SYNOPSIS.search(c)}


_parser = functools.cache(build_parser)  # parsing leaves the parser as it was
DOCUMENTED = sorted({c for page in PAGES for c in _commands_in(page.read_text())})


def test_the_docs_show_the_main_commands():
    shown = {shlex.split(c)[1] for c in DOCUMENTED if not shlex.split(c)[1].startswith("-")}
    assert {"up", "demo", "generate", "status", "federate", "train", "models", "audit", "auth"} <= shown, shown


def _is_command_path(words: list[str]) -> bool:
    """``["train", "local"]``: names a (sub)command, as prose does (`edgefleet generate`)."""
    parser = _parser()
    for word in words:
        choices = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        if word not in choices:
            return False
        parser = choices[word]
    return True


@pytest.mark.parametrize("command", DOCUMENTED)
def test_every_documented_command_parses(command):
    argv = shlex.split(command)[1:]
    if all(re.fullmatch(r"[a-z]+", w) for w in argv) and _is_command_path(argv):
        return  # a command's name in prose; the ones with arguments are parsed below
    try:
        args = parse(argv)  # everything main checks before it runs a command
    except SystemExit as done:  # --version and --help exit 0 by design; a usage error exits 2
        assert done.code == 0, f"`{command}` is not a valid command line"
        return
    assert callable(args.func)


def test_the_example_config_is_what_its_header_says():
    header = (ROOT / "examples" / "fleet.yaml").read_text().split("\n\n", 1)[0]
    (command,) = _commands_in(header)
    args = _parser().parse_args(shlex.split(command)[1:])
    cfg = load_config(ROOT / args.config)
    assert args.command == "up" and [n.id for n in cfg.fleet.edge_nodes] == ["edge-1", "edge-2", "edge-3"]


def _run(command: str, tmp_path: Path, monkeypatch, capsys, stdin: str = "") -> tuple[int, str, str]:
    """The command through the real entry point, in a fresh folder and cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(shlex.split(command)[1:])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("command", "expect"),
    [
        ("edgefleet --version", "edgefleet "),
        ("edgefleet auth new", "hash (put under auth.tokens)"),
        ("edgefleet auth cert --host localhost --out tls", "tls/cert.pem"),
    ],
)
def test_the_commands_that_need_no_fleet_run_as_written(command, expect, tmp_path, monkeypatch, capsys):
    assert command in DOCUMENTED
    try:
        code, out, err = _run(command, tmp_path, monkeypatch, capsys)
    except SystemExit as done:  # --version
        code, out, err = done.code, capsys.readouterr().out, ""
    assert code == 0 and expect in out, err


def test_auth_hash_reads_the_token_from_stdin_as_documented(tmp_path, monkeypatch, capsys):
    assert "edgefleet auth hash" in DOCUMENTED
    code, out, err = _run("edgefleet auth hash", tmp_path, monkeypatch, capsys, stdin="a-caller-token-0123456789\n")
    assert code == 0 and out.startswith("sha256:"), err
