"""docs/cli.md's sample outputs are what the commands print, and the report holds what it says.

Every ```` ```console ```` block of docs/cli.md is a transcript: ``$ nbo …`` lines and, under
each, what that command prints (stdout and stderr). This test runs the offline walk-through
of docs/cli.md (plus a second key pair, ``other/``) in a temporary directory, runs each
transcript's commands there (as real processes) and compares, with only what differs from
run to run masked: decision ids (UUIDs) and key ids (16 hex digits).

To regenerate the samples after changing an output::

    NBO_REGENERATE_DOCS=1 .venv/bin/python -m pytest tests/test_docs_samples.py

which rewrites the transcripts in docs/cli.md with this run's output (review the diff).

A ranking with exploration (the demo catalog's epsilon 0.05) puts another offer first now
and then; a run whose ranking is not in score order is such a one and is run again, on a
fresh copy of the walk-through's state.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from gateway_helpers import NBO_CLI

REPO = Path(__file__).resolve().parent.parent
CLI_DOC = REPO / "docs" / "cli.md"
REGENERATE = os.environ.get("NBO_REGENERATE_DOCS") == "1"
EXPLORATION_RETRIES = 8

WALK_THROUGH = [
    "nbo keys generate --out keys",
    "nbo keys generate --out other",
    "nbo demo-data --out data --customers 200 --seed 1",
    "nbo train --data data --out model --model logreg --quiet",
    "nbo bundle build --catalog data/catalog.yaml --model propensity=model/propensity.onnx --name retail "
    "--version 1 --key keys/signing.key --out retail-v1.zip",
    "nbo bundle install retail-v1.zip --state pos-1 --device-id pos-1 --trusted-key keys/signing.pub",
]

_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b|\b[0-9a-f]{8}-…")
_KEY_ID = re.compile(r"\b[0-9a-f]{16}\b")


@dataclass(frozen=True)
class Step:
    command: str
    expected: str


@dataclass(frozen=True)
class Transcript:
    start: int
    """Index of the block's first line (after the fence) in the document's lines."""
    end: int
    steps: tuple[Step, ...]


def transcripts(lines: list[str]) -> list[Transcript]:
    out: list[Transcript] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```console":
            i += 1
            continue
        start = i + 1
        end = start
        while not lines[end].startswith("```"):
            end += 1
        steps: list[Step] = []
        command: str | None = None
        body: list[str] = []
        for line in lines[start:end]:
            if line.startswith("$ "):
                if command is not None:
                    steps.append(Step(command, "\n".join(body)))
                command, body = line[2:], []
            else:
                body.append(line)
        if command is not None:
            steps.append(Step(command, "\n".join(body)))
        out.append(Transcript(start, end, tuple(steps)))
        i = end + 1
    return out


def masked(text: str) -> str:
    return "\n".join(line.rstrip() for line in _KEY_ID.sub("<key id>", _UUID.sub("<uuid>", text)).strip().splitlines())


def run(command: str, cwd: Path) -> str:
    words = shlex.split(command)
    assert words[0] == "nbo", command
    result = subprocess.run([*NBO_CLI, *words[1:]], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=180, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    return result.stdout.rstrip("\n")


def explored(output: str) -> bool:
    """Whether a decide table's ranking is out of score order (exploration promoted an offer)."""
    scores = []
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0].isdigit() and "mandatory" not in cells:
            try:
                scores.append(float(cells[-2] if cells[-1] == "fallback" else cells[-1]))
            except ValueError:
                return False
    return scores != sorted(scores, reverse=True)


@pytest.fixture(scope="module")
def walk_through(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("walk-through")
    for command in WALK_THROUGH:
        words = shlex.split(command)
        subprocess.run([*NBO_CLI, *words[1:]], cwd=root, check=True, capture_output=True, timeout=300)
    return root


def test_docs_cli_md_has_transcripts() -> None:
    found = transcripts(CLI_DOC.read_text(encoding="utf-8").splitlines())
    commands = [step.command for t in found for step in t.steps]
    assert any(c.startswith("nbo decide ") for c in commands) and any("--trusted-key other/" in c for c in commands)


def test_the_sample_outputs_are_what_the_commands_print(walk_through: Path, tmp_path: Path) -> None:
    lines = CLI_DOC.read_text(encoding="utf-8").splitlines()
    found = transcripts(lines)
    wrong: list[str] = []
    actual: dict[int, list[str]] = {}
    for number, transcript in enumerate(found):
        for attempt in range(EXPLORATION_RETRIES):
            work = tmp_path / f"t{number}-{attempt}"
            shutil.copytree(walk_through, work)
            outputs = [run(step.command, work) for step in transcript.steps]
            if not any(explored(o) for o in outputs):
                break
        actual[transcript.start] = [part for step, o in zip(transcript.steps, outputs, strict=True)
                                    for part in (f"$ {step.command}", o)]
        for step, output in zip(transcript.steps, outputs, strict=True):
            if masked(output) != masked(step.expected):
                wrong.append(f"$ {step.command}\n--- docs/cli.md:\n{step.expected}\n--- printed:\n{output}")
    if REGENERATE and wrong:
        for transcript in reversed(found):
            lines[transcript.start:transcript.end] = "\n".join(actual[transcript.start]).splitlines()
        CLI_DOC.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return
    assert not wrong, ("docs/cli.md's samples differ from the output (regenerate with NBO_REGENERATE_DOCS=1 "
                       "pytest tests/test_docs_samples.py):\n\n" + "\n\n".join(wrong))


def test_the_report_holds_the_sections_docs_cli_md_names(walk_through: Path, tmp_path: Path) -> None:
    text = CLI_DOC.read_text(encoding="utf-8")
    section = text.split("## `nbo report`", 1)[1].split("\n## ", 1)[0]
    named = [" ".join(n.split()) for n in re.findall(r"\*\*([^*]+)\*\*", section)]
    model = tmp_path / "model"
    shutil.copytree(walk_through / "model", model)
    (model / "report.html").unlink()
    assert run(f"nbo report {model}", tmp_path).startswith("report")
    headings = re.findall(r"<h2>([^<]+)</h2>", (model / "report.html").read_text(encoding="utf-8"))
    assert named == headings
