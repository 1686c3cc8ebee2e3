"""Prompt files: message split, single-pass substitution, refused values, user overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncsynth.config import ConfigError
from asyncsynth.prompts import load_prompt, parse_prompt


def test_whole_file_is_one_user_message() -> None:
    prompt = parse_prompt("Translate {{text}} into {{ lang }}.\n", "t", "t.md")
    assert prompt.fields == {"text", "lang"}
    assert prompt.render(text="hi", lang="French") == [
        {"role": "user", "content": "Translate hi into French."}
    ]


def test_headers_split_system_and_user() -> None:
    text = "## system\nYou judge {{domain}}.\n\n## user\nRate:\n{{answer}}\n"
    messages = parse_prompt(text, "j", "j.md").render(domain="math", answer="42")
    assert messages == [
        {"role": "system", "content": "You judge math."},
        {"role": "user", "content": "Rate:\n42"},
    ]


def test_values_are_inserted_literally_in_one_pass() -> None:
    prompt = parse_prompt("A={{a}} B={{b}}", "p", "p.md")
    tricky = "{{b}} {b} ${b} %(b)s \\1 \\g<0>"
    [message] = prompt.render(a=tricky, b="bee")
    assert message["content"] == f"A={tricky} B=bee"


def test_non_string_values_are_formatted() -> None:
    [message] = parse_prompt("{{n}} items", "p", "p.md").render(n=3)
    assert message["content"] == "3 items"


def test_missing_and_extra_values_are_refused_naming_the_file() -> None:
    prompt = parse_prompt("{{a}} and {{b}}", "p", "prompts/p.md")
    with pytest.raises(ConfigError, match=r"prompts/p\.md: no value for \{\{b\}\}"):
        prompt.render(a=1)
    with pytest.raises(ConfigError, match=r"prompts/p\.md: has no placeholder \{\{c\}\}"):
        prompt.render(a=1, b=2, c=3)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("preamble\n## user\nhi", "text before the first"),
        ("## system\n\n## user\nhi", "the system message is empty"),
        ("", "the user message is empty"),
    ],
)
def test_malformed_files_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"bad.md: {reason}"):
        parse_prompt(text, "bad", "bad.md")


def test_user_folder_first_then_missing_is_named(tmp_path: Path) -> None:
    (tmp_path / "gra").mkdir()
    (tmp_path / "gra" / "custom_probe.md").write_text("## user\nMine: {{x}}\n", encoding="utf-8")
    prompt = load_prompt("gra/custom_probe", tmp_path)
    assert prompt.render(x="y") == [{"role": "user", "content": "Mine: y"}]
    assert prompt.source.endswith("custom_probe.md")
    with pytest.raises(ConfigError, match=r"'gra/no_such_prompt\.md' not found"):
        load_prompt("gra/no_such_prompt", tmp_path)
