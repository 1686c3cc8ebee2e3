"""Structured output: extraction from messy replies, schema conformance, format fallback, re-ask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncsynth import Engine
from asyncsynth.config import config_from_dict
from asyncsynth.pipelines.gra.committee import INSTRUCTION_CHECK
from asyncsynth.pipelines.gra.samples import NEW_TASK, annotation_schema
from asyncsynth.prompts import load_prompt
from asyncsynth.structured import (
    SchemaMismatch,
    StructuredClient,
    TemplateEcho,
    json_candidates,
    known_formats,
    object_schema,
    parse_reply,
    placeholders,
)
from asyncsynth.testing import Reply, ReplyContext, SimServer

SCORE = object_schema(
    "score",
    {
        "reason": {"type": "string"},
        "score": {"type": "number", "minimum": 0, "maximum": 10},
        "ok": {"type": "boolean"},
        "tags": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 2,
            "maxItems": 3,
        },
    },
)
GOOD = {"reason": "fine", "score": 7, "ok": True, "tags": ["a", "b"]}
GOOD_TEXT = orjson.dumps(GOOD).decode()
FAST = {"backoff_base": 0.001, "backoff_max": 0.01, "max_attempts": 1}


# -- extraction and conformance ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        GOOD_TEXT,
        f"```json\n{GOOD_TEXT}\n```",
        f"Sure! Here is my review:\n\n{GOOD_TEXT}\n\nLet me know if you need more.",
        f"```\n{GOOD_TEXT}\n```",
        '{"reason": "fine", "score": 7, "ok": true, "tags": ["a", "b"],}',
        "{“reason”: “fine”, “score”: 7, “ok”: true, “tags”: [“a”, “b”]}",
        f"[{GOOD_TEXT}]",
        f'{{"review": {GOOD_TEXT}}}',
        'noise {not json} then {"reason": "fine", "score": 7, "ok": true, "tags": ["a","b"]}',
    ],
    ids=[
        "plain",
        "fenced-json",
        "leading-prose",
        "bare-fence",
        "trailing-comma",
        "smart-quotes",
        "list-wrapped",
        "key-wrapped",
        "broken-then-good",
    ],
)
def test_parse_reply_finds_the_object(text: str) -> None:
    assert parse_reply(text, SCORE) == GOOD


def test_braces_inside_strings_do_not_confuse_extraction() -> None:
    text = 'Answer: {"reason": "use {x} and }", "score": 7, "ok": true, "tags": ["a", "b"]} done'
    assert parse_reply(text, SCORE)["reason"] == "use {x} and }"


def test_conformance_coerces_mildly() -> None:
    value = parse_reply(
        '{"Reason": " fine ", "SCORE": "8/10", "ok": "pass", "tags": "x, y, z, w"}', SCORE
    )
    assert value == {"reason": "fine", "score": 8.0, "ok": True, "tags": ["x", "y", "z"]}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("I cannot do that.", "no JSON object"),
        ('{"reason": "x", "score": 11, "ok": true, "tags": ["a", "b"]}', "between 0 and 10"),
        ('{"reason": "x", "score": 5, "ok": true, "tags": ["a"]}', "at least 2"),
        ('{"reason": "x", "score": 5, "tags": ["a", "b"]}', "ok: missing"),
        ('{"reason": "x", "score": "high", "ok": true, "tags": ["a", "b"]}', "expected a number"),
        ('{"reason": "x", "score": 5, "ok": "maybe", "tags": ["a", "b"]}', "true or false"),
    ],
)
def test_parse_reply_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(SchemaMismatch, match=problem):
        parse_reply(text, SCORE)


def test_enum_matches_case_insensitively_and_keeps_its_spelling() -> None:
    schema = object_schema("d", {"domain": {"type": "string", "enum": ["QA", "math"]}})
    assert parse_reply('{"domain": "qa"}', schema) == {"domain": "QA"}
    with pytest.raises(SchemaMismatch, match="one of QA, math"):
        parse_reply('{"domain": "poetry"}', schema)


def test_json_candidates_order() -> None:
    found = json_candidates('x ```json\n{"a": 1}\n``` y {"b": 2}')
    assert found[0] == {"a": 1}
    assert {"b": 2} in found


def test_response_formats() -> None:
    assert SCORE.response_format("json_schema") == {
        "type": "json_schema",
        "json_schema": {"name": "score", "schema": SCORE.schema, "strict": True},
    }
    assert SCORE.response_format("json_object") == {"type": "json_object", "schema": SCORE.schema}
    assert SCORE.response_format("off") is None
    assert SCORE.schema["required"] == ["reason", "score", "ok", "tags"]
    assert SCORE.schema["additionalProperties"] is False


# -- replies that echo the template -------------------------------------------------------------

ECHOED = [
    orjson.loads(line) for line in (Path(__file__).parent / "data/echoed_replies.jsonl").open("rb")
]
"""Real replies of SmolLM2-135M and Gemma 3 270M (llama.cpp, json_object grammar mode) to
GRA's prompts when these ended with a reply template (``template``) of ``<...>``
placeholders: most repeat the placeholders. (The prompts now describe the keys in words,
which small models copy far less; the check stays for prompts that show a template.)"""
TEMPLATES = {row["prompt"]: row["template"] for row in ECHOED}
SCHEMAS = {
    "gra/annotate_seed": annotation_schema(["coding", "math", "QA", "language"]),
    "gra/generate_instruction": NEW_TASK,
    "gra/review_instruction": INSTRUCTION_CHECK,
}


def _rendered(name: str) -> list[dict[str, str]]:
    """The prompt as it was when the replies were recorded: ending with its template."""
    prompt = load_prompt(name)
    messages = prompt.render(**dict.fromkeys(prompt.fields, "some text"))
    messages[-1]["content"] += "\n\n" + TEMPLATES[name]
    return messages


def test_the_placeholders_of_a_prompt() -> None:
    found = placeholders(_rendered("gra/review_instruction"))
    assert "<one or two sentences: the instruction's main strength or flaw>" in found
    assert "<true or false>" in found
    assert placeholders(load_prompt("gra/review_instruction").render(instruction="x")) == set()


@pytest.mark.parametrize("row", ECHOED, ids=[f"{r['model']}-{i}" for i, r in enumerate(ECHOED)])
def test_real_echoed_replies_are_template_echoes(row: dict[str, Any]) -> None:
    schema, template = SCHEMAS[row["prompt"]], placeholders(_rendered(row["prompt"]))
    if not row["echo"]:
        assert parse_reply(row["reply"], schema, template=template)["domain"] == "coding"
        return
    with pytest.raises(TemplateEcho, match=r"^template echo: .* repeats the prompt's placeholder"):
        parse_reply(row["reply"], schema, template=template)
    # Without the prompt's placeholders, some of these would pass as answers.
    if row["prompt"] == "gra/review_instruction":
        assert parse_reply(row["reply"], schema)["assessment"].startswith("<one or two")


def test_an_echo_names_the_field_and_counts_the_others() -> None:
    template = placeholders(_rendered("gra/generate_instruction"))
    reply = (
        '{"keywords": ["<keyword>", "<keyword>", "<keyword>"], '
        '"instruction": "<the complete text of the new task>"}'
    )
    with pytest.raises(TemplateEcho) as caught:
        parse_reply(reply, NEW_TASK, template=template)
    assert "keywords[0] repeats the prompt's placeholder '<keyword>' (and 3 more)" in str(
        caught.value
    )
    assert caught.value.cause == "template_echo"


def test_numbered_and_unparseable_echoes_are_caught_and_real_answers_pass() -> None:
    template = placeholders(_rendered("gra/review_instruction"))
    with pytest.raises(TemplateEcho):  # not even JSON, but the template's own words
        parse_reply(
            '{"assessment": "fine", "rationality": <true or false>}',
            INSTRUCTION_CHECK,
            template=template,
        )
    answer = (
        '{"assessment": "Clear <b>bold</b> task.", '
        '"rationality": true, "completeness": true, "clarity": true}'
    )
    assert parse_reply(answer, INSTRUCTION_CHECK, template=template)["clarity"] is True
    keywords = placeholders(_rendered("gra/generate_instruction"))
    with pytest.raises(TemplateEcho):
        parse_reply(
            '{"keywords": ["<keyword1>", "a", "b"], "instruction": "Do X."}',
            NEW_TASK,
            template=keywords,
        )


# -- the client against the simulated endpoint -------------------------------------------------


def _config(url: str, **engine: Any) -> Any:
    return config_from_dict(
        {
            "endpoints": {"a": {"base_url": url, "model": "a"}},
            "engine": {**FAST, **engine},
        }
    )


def _format(body: dict[str, Any]) -> str:
    rf = body.get("response_format")
    return rf["type"] if isinstance(rf, dict) else "off"


class Script:
    """Replies per response_format type; records what was asked."""

    def __init__(self, **by_format: Any) -> None:
        self.by_format = by_format
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any], ctx: ReplyContext) -> str | Reply:
        self.bodies.append(body)
        answer = self.by_format.get(_format(body), GOOD_TEXT)
        return answer(body) if callable(answer) else answer


@pytest.mark.anyio
async def test_json_schema_accepted_is_remembered() -> None:
    script = Script()
    with SimServer(reply=script) as sim:
        async with Engine(_config(sim.url)) as engine:
            client = StructuredClient(engine)
            answer = await client.ask([{"role": "user", "content": "rate"}], SCORE, role="a")
            assert answer.ok and answer.value == GOOD and answer.format == "json_schema"
            assert known_formats(engine) == {"a": "json_schema"}
    assert script.bodies[0]["response_format"]["json_schema"]["name"] == "score"


@pytest.mark.anyio
async def test_unsupported_json_schema_falls_back_once_per_target() -> None:
    refused = Reply(status=400, content="response_format json_schema is not supported")
    script = Script(json_schema=refused)
    with SimServer(reply=script) as sim:
        async with Engine(_config(sim.url)) as engine:
            client = StructuredClient(engine)
            first = await client.ask([{"role": "user", "content": "one"}], SCORE, role="a")
            assert first.ok and first.format == "json_object"
            assert len(first.results) == 2
            assert known_formats(engine) == {"a": "json_object"}
            # A second client of the same engine starts from what was learnt.
            again = StructuredClient(engine)
            second = await again.ask([{"role": "user", "content": "two"}], SCORE, role="a")
            assert second.ok and len(second.results) == 1
    assert [_format(b) for b in script.bodies] == ["json_schema", "json_object", "json_object"]
    assert script.bodies[1]["response_format"]["schema"] == SCORE.schema


@pytest.mark.anyio
async def test_falls_back_to_plain_prompting() -> None:
    refused = Reply(status=422, content="unknown field response_format")
    script = Script(json_schema=refused, json_object=refused)
    with SimServer(reply=script) as sim:
        async with Engine(_config(sim.url)) as engine:
            answer = await StructuredClient(engine).ask(
                [{"role": "user", "content": "x"}], SCORE, role="a"
            )
            assert answer.ok and answer.format == "off"
            assert known_formats(engine) == {"a": "off"}
    assert "response_format" not in script.bodies[-1]


@pytest.mark.anyio
async def test_a_request_failing_at_every_format_teaches_nothing() -> None:
    script = Script(
        json_schema=Reply(status=400, content="prompt too long"),
        json_object=Reply(status=400, content="prompt too long"),
        off=Reply(status=400, content="prompt too long"),
    )
    with SimServer(reply=script) as sim:
        async with Engine(_config(sim.url)) as engine:
            answer = await StructuredClient(engine).ask(
                [{"role": "user", "content": "x"}], SCORE, role="a"
            )
            assert answer.failure == "request_error"
            assert "prompt too long" in (answer.error or "")
            assert known_formats(engine) == {}


@pytest.mark.anyio
async def test_fixed_mode_sends_no_fallback() -> None:
    script = Script(json_schema=Reply(status=400, content="nope"))
    with SimServer(reply=script) as sim:
        async with Engine(_config(sim.url)) as engine:
            answer = await StructuredClient(engine, mode="json_schema").ask(
                [{"role": "user", "content": "x"}], SCORE, role="a"
            )
    assert answer.failure == "request_error" and len(script.bodies) == 1


@pytest.mark.anyio
async def test_a_users_own_response_format_is_sent_as_given() -> None:
    script = Script()
    with SimServer(reply=script) as sim:
        async with Engine(_config(sim.url)) as engine:
            own = {"type": "json_object"}
            answer = await StructuredClient(engine).ask(
                [{"role": "user", "content": "x"}],
                SCORE,
                role="a",
                params={"response_format": own, "temperature": 0.5},
            )
    assert answer.ok
    assert script.bodies[0]["response_format"] == own
    assert script.bodies[0]["temperature"] == 0.5


@pytest.mark.anyio
async def test_reask_names_the_problem_and_recovers() -> None:
    def reply(body: dict[str, Any]) -> str:
        last = body["messages"][-1]["content"]
        return GOOD_TEXT if "could not use your last reply" in last else "Score: seven out of ten"

    script = Script(json_schema=reply)
    with SimServer(reply=script) as sim:
        async with Engine(_config(sim.url)) as engine:
            answer = await StructuredClient(engine, reasks=2).ask(
                [{"role": "user", "content": "rate"}], SCORE, role="a"
            )
    assert answer.ok and answer.value == GOOD and answer.reasks == 1
    reask = script.bodies[1]["messages"]
    assert reask[-2] == {"role": "assistant", "content": "Score: seven out of ten"}
    assert "no JSON object found" in reask[-1]["content"]
    assert '"score"' in reask[-1]["content"]  # the schema is shown


@pytest.mark.anyio
async def test_unparseable_after_bounded_reasks_is_a_recorded_failure() -> None:
    script = Script(json_schema="I refuse.")
    with SimServer(reply=script) as sim:
        async with Engine(_config(sim.url)) as engine:
            answer = await StructuredClient(engine, reasks=2).ask(
                [{"role": "user", "content": "rate"}], SCORE, role="a"
            )
    assert not answer.ok
    assert answer.failure == "parse_failure" and answer.value is None
    assert answer.error == "no JSON object found in the reply"
    assert answer.raw == "I refuse."
    assert len(script.bodies) == 3  # the ask and two re-asks, no more


@pytest.mark.anyio
async def test_instruct_appends_the_schema_to_the_prompt() -> None:
    script = Script()
    with SimServer(reply=script) as sim:
        async with Engine(_config(sim.url)) as engine:
            await StructuredClient(engine, instruct=True).ask(
                [{"role": "user", "content": "rate this"}], SCORE, role="a"
            )
    content = script.bodies[0]["messages"][-1]["content"]
    assert content.startswith("rate this\n\n") and SCORE.text() in content


@pytest.mark.anyio
async def test_replies_come_from_the_journal_on_a_second_run(tmp_path: Any) -> None:
    script = Script()
    journal = tmp_path / "j.sqlite"
    with SimServer(reply=script) as sim:
        for _ in range(2):
            async with Engine(_config(sim.url), journal=journal) as engine:
                answer = await StructuredClient(engine).ask(
                    [{"role": "user", "content": "rate"}], SCORE, role="a", sample=3
                )
                assert answer.ok
    assert len(script.bodies) == 1
    assert answer.cached


@pytest.mark.anyio
async def test_an_echo_is_a_named_parse_failure_and_the_reask_says_why() -> None:
    echo = '{"reason": "<one sentence>", "score": 7, "ok": true, "tags": ["a", "b"]}'
    script = Script(json_schema=echo)
    prompt = 'Rate it. Reply as {"reason": "<one sentence>", "score": <0-10>, ...}'
    with SimServer(reply=script) as sim:
        async with Engine(_config(sim.url)) as engine:
            answer = await StructuredClient(engine, reasks=1).ask(
                [{"role": "user", "content": prompt}], SCORE, role="a"
            )
    assert answer.failure == "parse_failure" and answer.cause == "template_echo"
    assert answer.error is not None and answer.error.startswith("template echo: reason repeats")
    assert "replace every <...>" in script.bodies[1]["messages"][-1]["content"]


@pytest.mark.anyio
async def test_a_reply_cut_at_the_token_limit_says_so() -> None:
    script = Script(json_schema=Reply(content='{"reason": "fine", "sco', finish_reason="length"))
    with SimServer(reply=script) as sim:
        async with Engine(_config(sim.url)) as engine:
            answer = await StructuredClient(engine, reasks=0).ask(
                [{"role": "user", "content": "rate"}], SCORE, role="a"
            )
    assert answer.failure == "parse_failure" and answer.cause == "truncated"
    assert answer.error is not None and "cut at the token limit" in answer.error
