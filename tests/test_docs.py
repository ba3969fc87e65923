"""The docs match the code: every CLI command has help and is documented; runnable blocks run.

1. Walking the argparse tree of ``nbo.cli.build_parser()``: every command and every flag
   has help text, and every command has a section in docs/cli.md that names all its flags.
2. Every fenced block in README.md and docs/*.md whose info string is ``python runnable``
   (run with this interpreter) or ``sh runnable`` (``nbo …`` command lines, run with this
   interpreter's ``nbo``; no shell) runs without error — in document order, in one fresh
   temporary directory per document. A block whose info string has ``file=NAME`` (e.g.
   ``yaml file=catalog.yaml``) is written to ``NAME`` there first, so docs can show a file
   and then use it. A document containing ``<!-- runnable-setup: quickstart -->`` starts
   with the quick-start files in that directory: ``keys/signing.key``, ``keys/signing.pub``,
   ``data/`` (sample data), ``model/propensity.onnx`` and ``retail-v1.zip`` — what the walk
   through in docs/cli.md creates.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gateway_helpers import NBO_CLI
from nbo.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
CLI_DOC = REPO / "docs" / "cli.md"
QUICKSTART_MARK = "<!-- runnable-setup: quickstart -->"


# -- the argparse tree ----------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str | None
    """The one-line help shown in the parent's command list."""

    @property
    def name(self) -> str:
        return " ".join(("nbo", *self.path))


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help_text: str | None = "") -> Iterator[Command]:
    yield Command(path, parser, help_text)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                yield from walk(child, (*path, name), helps.get(name))


COMMANDS = list(walk(build_parser()))
LEAVES = [c for c in COMMANDS if not any(isinstance(a, argparse._SubParsersAction) for a in c.parser._actions)]


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]


def test_the_tree_has_every_command() -> None:
    names = {c.name for c in LEAVES}
    assert {"nbo demo", "nbo demo-data", "nbo keys generate", "nbo train", "nbo report", "nbo bundle build",
            "nbo bundle verify", "nbo bundle inspect", "nbo decide", "nbo serve", "nbo sync", "nbo publish",
            "nbo events"} <= names


@pytest.mark.parametrize("command", COMMANDS[1:], ids=lambda c: c.name)
def test_every_command_has_help_text(command: Command) -> None:
    assert command.help and command.help.strip(), f"{command.name} has no help line in `nbo --help`"
    assert command.parser.description and command.parser.description.strip(), f"{command.name} has no description"
    for action in options(command.parser):
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, (
            f"{command.name} {label} has no help text"
        )


def cli_sections() -> dict[str, str]:
    """docs/cli.md split at its "## `nbo …`" headings: command name → section text."""
    text = CLI_DOC.read_text(encoding="utf-8")
    parts = re.split(r"^## `(nbo[^`]*)`\s*$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


@pytest.mark.parametrize("command", LEAVES, ids=lambda c: c.name)
def test_every_command_and_flag_is_in_docs_cli_md(command: Command) -> None:
    sections = cli_sections()
    assert command.name in sections, f"docs/cli.md has no section \"## `{command.name}`\""
    section = sections[command.name]
    for action in options(command.parser):
        if action.option_strings:
            long = max(action.option_strings, key=len)
            if long == "--debug":
                continue
            assert f"`{long}" in section, f"docs/cli.md, section {command.name}: flag {long} is not described"
        else:
            metavar = action.metavar or action.dest
            assert f"`{metavar}`" in section, f"docs/cli.md, section {command.name}: argument {metavar} is missing"


def test_docs_cli_md_documents_no_command_that_does_not_exist() -> None:
    names = {c.name for c in LEAVES}
    assert set(cli_sections()) <= names


# -- runnable blocks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    info: str
    body: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


FENCE = re.compile(r"^```(.*)$")


def fenced_blocks(doc: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = doc.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        start, info, body = i + 1, opening.group(1).strip(), []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        blocks.append(Block(doc, start, info, "\n".join(body) + "\n"))
        i += 1
    return blocks


def is_runnable(block: Block) -> bool:
    return block.info.split() in (["python", "runnable"], ["sh", "runnable"])


def written_file(block: Block) -> str | None:
    match = re.search(r"\bfile=(\S+)", block.info)
    return match.group(1) if match else None


RUNNABLE_DOCS = [d for d in DOCS if any(is_runnable(b) for b in fenced_blocks(d))]


def test_the_docs_that_must_have_runnable_blocks_do() -> None:
    names = {d.relative_to(REPO).as_posix() for d in RUNNABLE_DOCS}
    assert {"README.md", "docs/catalog.md", "docs/python-api.md", "docs/cli.md"} <= names


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from _prepare import prepare
    finally:
        sys.path.remove(str(REPO / "examples"))
    return prepare(tmp_path_factory.mktemp("quickstart"), customers=150).directory


def shell_commands(body: str) -> list[list[str]]:
    """The command lines of an ``sh runnable`` block (backslash continuations joined)."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def run_block(block: Block, workdir: Path, scripts: Path) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if block.info.startswith("python"):
        script = scripts / f"block_{block.line}.py"
        script.write_text(block.body, encoding="utf-8")
        result = subprocess.run([sys.executable, str(script)], cwd=workdir, capture_output=True, text=True,
                                timeout=180, env=env)
        assert result.returncode == 0, f"{block.where}: python block failed:\n{result.stdout}\n{result.stderr}"
        return
    for words in shell_commands(block.body):
        assert words[0] == "nbo", f"{block.where}: runnable sh blocks may only run `nbo` (got {words[0]!r})"
        result = subprocess.run([*NBO_CLI, *words[1:]], cwd=workdir, capture_output=True, text=True, timeout=180,
                                env=env)
        assert result.returncode == 0, (
            f"{block.where}: `{shlex.join(words)}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )


@pytest.mark.parametrize("doc", RUNNABLE_DOCS, ids=lambda d: d.relative_to(REPO).as_posix())
def test_runnable_blocks_run(doc: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    workdir, scripts = tmp_path / "work", tmp_path / "scripts"
    scripts.mkdir()
    if QUICKSTART_MARK in doc.read_text(encoding="utf-8"):
        shutil.copytree(request.getfixturevalue("quickstart"), workdir)
    else:
        workdir.mkdir()
    for block in fenced_blocks(doc):
        name = written_file(block)
        if name is not None:
            target = workdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.body, encoding="utf-8")
        elif is_runnable(block):
            run_block(block, workdir, scripts)


def test_shell_commands_are_split_like_a_shell() -> None:
    body = "nbo decide --state s \\\n    --profile '{\"age\": 3}'  # a comment\n\n# only a comment\nnbo events --state s\n"
    assert shell_commands(body) == [["nbo", "decide", "--state", "s", "--profile", '{"age": 3}'],
                                    ["nbo", "events", "--state", "s"]]


# -- links -------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = doc.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # headings inside code blocks are not headings
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


LINKED_DOCS = [*DOCS, REPO / "examples" / "README.md"]


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda d: d.relative_to(REPO).as_posix())
def test_relative_links_point_at_files_and_headings_that_exist(doc: Path) -> None:
    text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.M | re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path_part, _, anchor = target.partition("#")
        linked = (doc.parent / path_part).resolve() if path_part else doc
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{doc.relative_to(REPO)}: broken links: {broken}"


def test_github_anchor() -> None:
    assert github_anchor("`nbo bundle build`") == "nbo-bundle-build"
    assert github_anchor("5. Demo data (`nbo demo-data`)") == "5-demo-data-nbo-demo-data"
    assert github_anchor("The outbox as the device sees it") == "the-outbox-as-the-device-sees-it"
