"""The config reference page, generated from the config model itself.

Every key the loader accepts (``asyncsynth/config.py``'s specs) is listed with the
docstring of its field and the field's default; ``[gra]`` and ``[s3]`` keys are those
their pipelines accept, documented in their pages' key tables. ``undocumented()`` names
any key without documentation (a test fails on it); ``python scripts/config_reference.py``
prints the page (the docs build writes it with mkdocs-gen-files).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import re
import textwrap
from pathlib import Path
from typing import Any

from asyncsynth import config as model
from asyncsynth.engine.batch import BatchSettings
from asyncsynth.engine.cost import Price
from asyncsynth.pipelines.gra import settings as gra_settings
from asyncsynth.pipelines.s3 import settings as s3_settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
PIPELINE_PAGES = {
    "gra": ("pipelines/gra.md", gra_settings._SPEC),
    "s3": ("pipelines/s3.md", s3_settings._SPEC),
}
TOP_DOCS = {
    "gra": "the GRA pipeline's settings (see its page)",
    "s3": "the S3 pipeline's settings (see its page)",
}


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal under each field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def _rst_to_md(text: str) -> str:
    text = re.sub(r":(?:class|func|data|mod):`~?([\w.]+)`", r"`\1`", text)
    return text.replace("``", "`")


def sections() -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """(table, what it is, [(key, doc, default)]) for every table of config.py's model."""
    config_docs = field_docs(model.Config)
    top = [
        (key, config_docs.get(key, "") or TOP_DOCS.get(key, ""), "")
        for key in model._TOP_SPEC
        if key not in ("gra", "s3")
    ] + [(key, TOP_DOCS[key], "") for key in ("gra", "s3")]
    endpoint_docs, endpoint_defaults = (
        field_docs(model.EndpointConfig),
        _defaults(model.EndpointConfig),
    )
    endpoints = [
        (key, endpoint_docs.get(key, ""), _show(endpoint_defaults.get(key, None)))
        for key in model._ENDPOINT_SPEC
    ]
    params = [(key, model.PARAM_DOCS.get(key, ""), "") for key in sorted(model.PARAM_KEYS)]
    engine_docs, engine_defaults = field_docs(model.EngineSettings), _defaults(model.EngineSettings)
    engine = [
        (key, engine_docs.get(key, ""), _show(engine_defaults.get(key)))
        for key in model._ENGINE_SPEC
    ]
    input_docs, input_defaults = field_docs(model.InputSettings), _defaults(model.InputSettings)
    inputs = [
        (key, input_docs.get(key, ""), _show(input_defaults.get(key))) for key in model._INPUT_SPEC
    ]
    return [
        ("top level", "The tables of a config file.", top),
        ("[endpoints.NAME]", model.EndpointConfig.__doc__ or "", endpoints),
        ("[endpoints.NAME.price]", Price.__doc__ or "", _field_rows(Price)),
        ("[endpoints.NAME.batch]", BatchSettings.__doc__ or "", _field_rows(BatchSettings)),
        (
            "[defaults], [endpoints.NAME.params]",
            "request parameters; anything else a server takes goes in `extra_body`",
            params,
        ),
        ("[engine]", model.EngineSettings.__doc__ or "", engine),
        ("[input]", model.InputSettings.__doc__ or "", inputs),
    ]


def _field_rows(cls: type) -> list[tuple[str, str, str]]:
    """A sub-table read straight into a dataclass (its fields are its keys)."""
    docs, defaults = field_docs(cls), _defaults(cls)
    return [
        (
            f.name,
            docs.get(f.name, ""),
            _show(defaults.get(f.name, None)) if f.name in defaults else "required",
        )
        for f in dataclasses.fields(cls)
    ]


def _pipeline_keys_missing(section: str) -> list[str]:
    page, spec = PIPELINE_PAGES[section]
    text = (DOCS / page).read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [
        f"{section}.{key} (not in the key table of docs/{page})"
        for key in spec
        if not any(
            f"`{key}`" in row.split("|")[1] or f"`[{section}.{key}" in row.split("|")[1]
            for row in rows
        )
    ]


def undocumented() -> list[str]:
    """Every config key without documentation."""
    missing = [
        f"{table}: {key}" for table, _, rows in sections() for key, doc, _ in rows if not doc
    ]
    for section in PIPELINE_PAGES:
        missing += _pipeline_keys_missing(section)
    return missing


def render() -> str:
    lines = [
        "# Config reference",
        "",
        "<!-- Generated from asyncsynth/config.py by scripts/config_reference.py: edit the",
        "     field docstrings there, not this page. -->",
        "",
        "`asyncsynth.toml` in the working directory is read by default; `--config FILE` names",
        "another. Unknown keys, missing keys and bad values are refused when the file is",
        "loaded, with the file, the dotted key and the reason, e.g.",
        "`asyncsynth.toml: endpoints.qwen.rpm: must be > 0, got -5`. Retry and timeout",
        "defaults live in one module, `asyncsynth/engine/retry.py`.",
        "",
        "This page is generated from the config model (`asyncsynth/config.py`): every key the",
        "loader accepts is here, with its field's documentation and default.",
        "",
    ]
    for table, what, rows in sections():
        lines += [f"## `{table}`" if table != "top level" else "## Top level", ""]
        lines += [_rst_to_md(" ".join(inspect.cleandoc(what).split())), ""]
        header = "| key | meaning | default |" if any(d for *_, d in rows) else "| key | meaning |"
        lines += [header, "|---|---|---|" if "default" in header else "|---|---|"]
        for key, doc, default in rows:
            cells = [f"`{key}`", _rst_to_md(doc)] + ([default] if "default" in header else [])
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## `[gra]` and `[s3]`",
        "",
        "The pipelines validate their own sections the same way (unknown keys refused); their",
        "keys are in the tables of [GRA](../pipelines/gra.md#config) and",
        "[S3](../pipelines/s3.md#the-s3-section).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
