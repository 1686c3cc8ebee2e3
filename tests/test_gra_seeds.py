"""GRA seed data in the formats users have: fields, Alpaca, ShareGPT, OpenAI messages, hf:."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncsynth import ConfigError, InputError
from asyncsynth.pipelines.gra import GraSettings, load_seeds
from asyncsynth.pipelines.gra.seeds import parse_hf
from asyncsynth.testing.gra_pool import pool_config

DOMAINS = ["math", "coding", "QA"]


def write(path: Path, rows: Sequence[Any]) -> str:
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    return str(path)


def pairs(seeds: Sequence[Any]) -> list[tuple[str, str]]:
    return [(s.instruction, s.response) for s in seeds]


ALPACA = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Translate to English.", "input": "Bonjour", "output": "Hello", "domain": "QA"},
]
SHAREGPT = [
    {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "What is 7 * 6?"},
            {"from": "gpt", "value": "42"},
            {"from": "human", "value": "And 7 * 7?"},
            {"from": "gpt", "value": "49"},
        ]
    }
]
MESSAGES = [
    {
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": [{"type": "text", "text": "Name a prime."}]},
            {"role": "assistant", "content": "7"},
        ],
        "domain": "Math",
    }
]


def test_alpaca_rows_join_the_input_into_the_instruction(tmp_path: Path) -> None:
    seeds = load_seeds(write(tmp_path / "a.jsonl", ALPACA), domains=DOMAINS)
    assert seeds.format == "alpaca"
    assert pairs(seeds) == [("Add 2 and 3.", "5"), ("Translate to English.\n\nBonjour", "Hello")]
    assert seeds[1].domain == "QA" and seeds[0].domain is None


def test_the_alpaca_template_is_configurable_and_checked(tmp_path: Path) -> None:
    template = "{{instruction}}\nInput: {{input}}"
    seeds = load_seeds(
        write(tmp_path / "a.jsonl", ALPACA), domains=DOMAINS, input_template=template
    )
    assert seeds[1].instruction == "Translate to English.\nInput: Bonjour"
    config = pool_config("http://x/v1", gra={"seed_input_template": "{{instruction}} only"})
    with pytest.raises(ConfigError, match=r"gra.seed_input_template: must hold"):
        GraSettings.from_config(config)


def test_sharegpt_rows_give_the_first_user_turn_and_its_answer(tmp_path: Path) -> None:
    seeds = load_seeds(write(tmp_path / "s.jsonl", SHAREGPT), domains=DOMAINS)
    assert seeds.format == "sharegpt" and pairs(seeds) == [("What is 7 * 6?", "42")]


def test_openai_messages_rows_and_content_parts(tmp_path: Path) -> None:
    seeds = load_seeds(write(tmp_path / "m.jsonl", MESSAGES), domains=DOMAINS)
    assert seeds.format == "messages" and pairs(seeds) == [("Name a prime.", "7")]
    assert seeds[0].domain == "math"  # the configured spelling wins


def test_a_chat_row_without_an_answer_is_named(tmp_path: Path) -> None:
    rows = [*MESSAGES, {"messages": [{"role": "user", "content": "Hello?"}]}]
    with pytest.raises(InputError, match=r"m\.jsonl:2: field 'messages' has no assistant turn"):
        load_seeds(write(tmp_path / "m.jsonl", rows), domains=DOMAINS)
    rows = [*SHAREGPT, {"conversations": "not a list"}]
    with pytest.raises(InputError, match=r"s\.jsonl:2: field 'conversations' must be a list"):
        load_seeds(write(tmp_path / "s.jsonl", rows), domains=DOMAINS)


def test_a_fixed_format_refuses_rows_of_another(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"a\.jsonl:1: missing or empty field 'output'"):
        load_seeds(
            write(tmp_path / "a.jsonl", [{"instruction": "x", "response": "y"}]),
            domains=DOMAINS,
            seed_format="alpaca",
        )


def test_an_unknown_domain_is_refused_with_its_line_or_mapped(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Q1", "response": "A1", "domain": "math"},
        {"instruction": "Q2", "response": "A2", "domain": "Physics"},
    ]
    path = write(tmp_path / "d.jsonl", rows)
    with pytest.raises(InputError, match=r"d\.jsonl:2: domain 'Physics' is not one of gra.domains"):
        load_seeds(path, domains=DOMAINS)
    seeds = load_seeds(path, domains=DOMAINS, domain_map={"physics": "QA"})
    assert [s.domain for s in seeds] == ["math", "QA"]


def test_domain_map_targets_are_checked_at_config_load() -> None:
    config = pool_config("http://x/v1", gra={"domain_map": {"physics": "science"}})
    with pytest.raises(ConfigError, match=r"gra.domain_map.physics: 'science' is not one of"):
        GraSettings.from_config(config)
    ok = pool_config("http://x/v1", gra={"domain_map": {"physics": "qa"}})
    assert GraSettings.from_config(ok).domain_map == {"physics": "QA"}


def test_seed_limit_draws_a_seeded_random_subset_in_file_order(tmp_path: Path) -> None:
    rows = [{"instruction": f"Q{i}", "response": f"A{i}"} for i in range(40)]
    path = write(tmp_path / "many.jsonl", rows)
    first = load_seeds(path, domains=DOMAINS, limit=5, seed=1)
    again = load_seeds(path, domains=DOMAINS, limit=5, seed=1)
    other = load_seeds(path, domains=DOMAINS, limit=5, seed=2)
    picked = [int(s.instruction[1:]) for s in first]
    assert len(first) == 5 and first.rows == 40
    assert picked == sorted(picked) and picked != [0, 1, 2, 3, 4]
    assert pairs(first) == pairs(again) and pairs(first) != pairs(other)
    assert [s.index for s in first] == [0, 1, 2, 3, 4]
    assert first[0].source == f"{path}:{picked[0] + 1}"  # its line in the file
    bad = [*rows, {"instruction": "no answer"}]
    with pytest.raises(InputError, match=r":41: missing or empty field 'response'"):
        load_seeds(write(tmp_path / "bad.jsonl", bad), domains=DOMAINS, limit=5)


def test_hf_specs() -> None:
    assert parse_hf("hf:tatsu-lab/alpaca") == ("tatsu-lab/alpaca", None, "train")
    assert parse_hf("hf:tatsu-lab/alpaca:test") == ("tatsu-lab/alpaca", None, "test")
    assert parse_hf("hf:org/set:chat:validation") == ("org/set", "chat", "validation")
    assert parse_hf("hf:org/set:chat:") == ("org/set", "chat", "train")
    for bad in ("hf:", "hf::train", "hf:a:b:c:d"):
        with pytest.raises(ConfigError, match="expected hf:NAME"):
            parse_hf(bad)


def test_an_hf_dataset_subset_and_split(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    folder = tmp_path / "set"
    sets = {"alpaca": ALPACA, "chat": MESSAGES, "sharegpt": SHAREGPT}
    readme = ["---", "configs:"]
    for name, rows in sets.items():
        (folder / name).mkdir(parents=True)
        write(folder / name / "validation.jsonl", rows)
        readme += [f"- config_name: {name}", "  data_files:", "  - split: validation"]
        readme += [f"    path: {name}/validation.jsonl"]
    (folder / "README.md").write_text("\n".join([*readme, "---", ""]))
    alpaca = load_seeds(f"hf:{folder}:alpaca:validation", domains=DOMAINS)
    assert alpaca.format == "alpaca" and pairs(alpaca)[1] == (
        "Translate to English.\n\nBonjour",
        "Hello",
    )
    chat = load_seeds(f"hf:{folder}:chat:validation", domains=DOMAINS)
    assert chat.format == "messages" and pairs(chat) == [("Name a prime.", "7")]
    assert chat[0].source == f"hf:{folder}:chat:validation#0"
    sharegpt = load_seeds(f"hf:{folder}:sharegpt:validation", domains=DOMAINS, limit=1)
    assert sharegpt.format == "sharegpt" and pairs(sharegpt) == [("What is 7 * 6?", "42")]
    with pytest.raises(ConfigError, match="could not load"):
        load_seeds(f"hf:{folder}:nosuch:validation", domains=DOMAINS)
