"""The documentation stays true: the site builds strictly, every config key is documented,
and the code blocks of docs/ and README.md run.

Blocks run in a sandbox folder per page (``examples/`` linked in, ``asyncsynth.toml``
naming the simulated endpoint), blocks of one page in order, against a simulated endpoint
served where the pages say it is (``http://127.0.0.1:8000/v1`` is rewritten to its real
address). ``bash`` blocks run with ``bash -euo pipefail``; ``python`` blocks run in the
test's process (top-level ``await`` allowed); ``toml`` blocks must parse, and those
defining endpoints must load as a config. A block preceded by ``<!-- not run: REASON -->``
is skipped with that reason (a real GPU, a hub, a server of its own); the ``asyncsynth``
commands of every shell block, run or not, must name real commands and options.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import click
import pytest

from asyncsynth.cli import main
from asyncsynth.config import config_from_dict
from asyncsynth.testing import SimServer

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
DOCUMENTED_URL = "http://127.0.0.1:8000/v1"
SHELLS = ("bash", "sh", "shell")
SKIP = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)(.*)$")
HAS_MKDOCS = importlib.util.find_spec("mkdocs") is not None
SANDBOX_CONFIG = f"""\
[endpoints.sim]
base_url = "{DOCUMENTED_URL}"
model = "sim-model"

[roles]
writer = ["sim"]
"""


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown page, with the skip reason above each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i].removeprefix(indent))
            i += 1
        i += 1
        above = next((ln for ln in reversed(lines[: start - 1]) if ln.strip()), "")
        skip = SKIP.search(above)
        yield Block(page, start, lang, "\n".join(body) + "\n", skip.group(1) if skip else None)


ALL = [b for page in PAGES for b in blocks(page) if b.lang]
RUNNABLE = [b for b in ALL if b.lang in (*SHELLS, "python", "py", "toml")]
SHELL = [b for b in ALL if b.lang in SHELLS]


# -- the site ---------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_MKDOCS, reason="needs the [docs] extra (mkdocs-material)")
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """Broken links, anchors and references fail the build (``strict: true``)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ("reference/config/index.html", "reference/api/index.html", "index.html"):
        assert (tmp_path / "site" / page).stat().st_size > 0
    assert "run_demo" in (tmp_path / "site/reference/api/index.html").read_text()
    assert "startup_grace" in (tmp_path / "site/reference/config/index.html").read_text()


def _reference() -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import config_reference
    finally:
        sys.path.pop(0)
    return config_reference


def test_every_config_key_is_documented() -> None:
    reference = _reference()
    assert reference.undocumented() == []
    page = reference.render()
    for table, _, rows in reference.sections():
        for key, doc, _ in rows:
            assert f"| `{key}` | {reference._rst_to_md(doc)} |" in page, (table, key)


def test_an_undocumented_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _reference()
    from asyncsynth import config

    monkeypatch.setitem(config._ENGINE_SPEC, "new_knob", config.POSITIVE)
    monkeypatch.setitem(reference.PIPELINE_PAGES["gra"][1], "new_gra_knob", config.POSITIVE)
    assert reference.undocumented() == [
        "[engine]: new_knob",
        "gra.new_gra_knob (not in the key table of docs/pipelines/gra.md)",
    ]


# -- the code blocks --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs_sim() -> Iterator[SimServer]:
    with SimServer() as server:
        yield server


@pytest.fixture(scope="module")
def sandboxes(tmp_path_factory: pytest.TempPathFactory, docs_sim: SimServer) -> Any:
    made: dict[Path, Path] = {}

    def sandbox(page: Path) -> Path:
        if page not in made:
            folder = tmp_path_factory.mktemp(page.stem)
            (folder / "examples").symlink_to(ROOT / "examples")
            (folder / "asyncsynth.toml").write_text(_here(SANDBOX_CONFIG, docs_sim))
            made[page] = folder
        return made[page]

    return sandbox


def _here(text: str, sim: SimServer) -> str:
    return text.replace(DOCUMENTED_URL, sim.url).replace("localhost:8000", "127.0.0.1:8000")


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_code_block_runs(
    block: Block, docs_sim: SimServer, sandboxes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block.skip:
        pytest.skip(f"not run: {block.skip}")
    folder = sandboxes(block.page)
    code = _here(block.code, docs_sim)
    if block.lang == "toml":
        data = tomllib.loads(code)
        if "endpoints" in data:
            config_from_dict(data, block.id)
        return
    if block.lang in SHELLS:
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, f"{block.id}\n{code}\n{done.stdout}\n{done.stderr}"
        return
    monkeypatch.chdir(folder)
    compiled = compile(
        code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    if compiled.co_flags & inspect.CO_COROUTINE:
        anyio.run(lambda: eval(compiled, namespace))
    else:
        exec(compiled, namespace)


def _commands(code: str) -> Iterator[list[str]]:
    """Every ``asyncsynth ...`` invocation of a shell block, as words."""
    joined = re.sub(r"\\\n\s*", " ", code)
    for line in joined.splitlines():
        for part in re.split(r"&&|\|\||;|\|(?=\s)", line.split(" #")[0]):
            words = part.strip().replace("[", " ").replace("]", " ").split()
            while words and ("=" in words[0] or words[0] in ("time", "/usr/bin/time", "-v")):
                words = words[1:]
            if words and words[0].endswith("asyncsynth"):
                yield words[1:]


def _resolve(words: list[str]) -> tuple[click.Command, list[str], str]:
    command: click.Command = main
    path = "asyncsynth"
    while isinstance(command, click.Group) and words and words[0] in command.commands:
        path += f" {words[0]}"
        command, words = command.commands[words[0]], words[1:]
    return command, words, path


@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_commands_name_real_commands_and_options(block: Block) -> None:
    for words in _commands(block.code):
        command, rest, path = _resolve(words)
        assert not isinstance(command, click.Group), f"{block.id}: {path} needs a subcommand"
        known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        for word in rest:
            word = word.strip("'\"`")
            if re.fullmatch(r"--?[a-zA-Z][\w-]*(=.*)?", word):
                option = word.split("=")[0]
                assert option in known, f"{block.id}: `{path}` has no option {option}"


def test_the_collector_sees_blocks_and_skip_reasons() -> None:
    found = {b.id: b for b in ALL}
    start = next(b for b in found.values() if b.page.name == "getting-started.md")
    assert start.lang == "bash"
    assert start.skip == "this is the project's own set-up and test suite"
    assert len(RUNNABLE) > 20
    assert list(_commands("asyncsynth run a -o b \\\n  --concurrency 4 && asyncsynth view x")) == [
        ["run", "a", "-o", "b", "--concurrency", "4"],
        ["view", "x"],
    ]
    words = shlex.split("asyncsynth demo gra --nope")
    command, _rest, _ = _resolve(words[1:])
    assert command.name == "demo" and "--nope" not in {o for p in command.params for o in p.opts}


def test_readme_and_the_site_state_the_same_two_commands() -> None:
    (readme,) = [b for b in blocks(ROOT / "README.md") if "scripts/setup.sh &&" in b.code]
    page = ROOT / "docs" / "getting-started.md"
    (started,) = [b for b in blocks(page) if "scripts/setup.sh &&" in b.code]
    assert readme.code == started.code
    assert readme.line < 20  # first thing in the README
