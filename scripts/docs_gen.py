"""mkdocs-gen-files script: the pages generated from the code (config reference, CLI)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))

from config_reference import render

from asyncsynth.cli import main

with mkdocs_gen_files.open("reference/config.md", "w") as f:
    f.write(render())


def commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name in sorted(group.commands):
        command = group.commands[name]
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found += commands(command, path)
        else:
            found.append((path, command))
    return found


index = ["# Command reference", "", "Generated from the CLI itself (`asyncsynth/cli.py`).", ""]
for path, command in commands(main, "asyncsynth"):
    slug = path.removeprefix("asyncsynth ").replace(" ", "-")
    with click.Context(command, info_name=path) as ctx:
        help_text = command.get_help(ctx)
    index.append(f"- [`{path}`](cli/{slug}.md): {command.get_short_help_str(80)}")
    with mkdocs_gen_files.open(f"reference/cli/{slug}.md", "w") as f:
        f.write(f"# `{path}`\n\n```text\n{help_text}\n```\n")
with mkdocs_gen_files.open("reference/cli.md", "w") as f:
    f.write("\n".join(index) + "\n")
