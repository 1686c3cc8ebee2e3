"""Prompt files under ``prompts/`` and safe value substitution.

A prompt file is plain text with ``{{name}}`` placeholders. It may be split into
messages by header lines ``## system`` and ``## user`` (without them the whole file
is one user message). Substitution is a single pass over the *template*: inserted
values are never scanned again, so a value containing ``{{other}}``, ``{``, ``$`` or
``%`` is inserted literally and can never be read as template syntax.

A user overrides any prompt by pointing ``prompts_dir`` at a folder holding files of
the same relative names; files missing there fall back to the built-in ones.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .engine.errors import ConfigError

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_HEADER = re.compile(r"^## (system|user|assistant)\s*$", re.MULTILINE)


def builtin_dir() -> Path:
    """The prompts shipped with asyncsynth."""
    packaged = Path(__file__).parent / "_prompts"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "prompts"


@dataclass(frozen=True)
class Prompt:
    """A parsed prompt file: messages of literal text and placeholders."""

    name: str
    source: str
    parts: tuple[tuple[str, str], ...]
    """(role, template) per message."""
    fields: frozenset[str]

    def render(self, **values: Any) -> list[dict[str, str]]:
        """Chat messages with every placeholder replaced by ``str(value)``, literally."""
        missing = self.fields - values.keys()
        if missing:
            raise ConfigError(f"{self.source}: no value for {{{{{sorted(missing)[0]}}}}}")
        extra = values.keys() - self.fields
        if extra:
            raise ConfigError(f"{self.source}: has no placeholder {{{{{sorted(extra)[0]}}}}}")
        text = {k: str(v) for k, v in values.items()}
        return [
            {"role": role, "content": _PLACEHOLDER.sub(lambda m: text[m.group(1)], template)}
            for role, template in self.parts
        ]


def parse_prompt(text: str, name: str, source: str) -> Prompt:
    headers = list(_HEADER.finditer(text))
    if not headers:
        parts = [("user", text.strip())]
    else:
        if text[: headers[0].start()].strip():
            raise ConfigError(f"{source}: text before the first '## role' header")
        parts = []
        for i, header in enumerate(headers):
            end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
            parts.append((header.group(1), text[header.end() : end].strip()))
    for role, body in parts:
        if not body:
            raise ConfigError(f"{source}: the {role} message is empty")
    fields = frozenset(m.group(1) for _, body in parts for m in _PLACEHOLDER.finditer(body))
    return Prompt(name=name, source=source, parts=tuple(parts), fields=fields)


@cache
def _load(path: Path, name: str) -> Prompt:
    return parse_prompt(path.read_text(encoding="utf-8"), name, str(path))


def load_prompt(name: str, prompts_dir: str | os.PathLike[str] | None = None) -> Prompt:
    """Prompt ``name`` (e.g. ``"gra/review_response"``): the user's folder first, then built-in."""
    filename = f"{name}.md"
    folders = [Path(prompts_dir)] if prompts_dir else []
    folders.append(builtin_dir())
    for folder in folders:
        path = folder / filename
        if path.is_file():
            return _load(path.resolve(), name)
    raise ConfigError(f"prompt {filename!r} not found in {', '.join(map(str, folders))}")
