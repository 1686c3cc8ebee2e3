"""The GRA pipeline end to end against a scripted pool on the simulated endpoint."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner

from asyncsynth import ConfigError, InputError
from asyncsynth.cli import main
from asyncsynth.engine import Journal
from asyncsynth.pipelines.errors import RunFolderError
from asyncsynth.pipelines.events import PipelineEvent
from asyncsynth.pipelines.gra import (
    JOURNAL_NAME,
    RESPONSE_CRITERIA,
    GraSettings,
    explain,
    run_gra,
)
from asyncsynth.pipelines.gra.report import describe
from asyncsynth.pipelines.gra.samples import sample_rng
from asyncsynth.prompts import load_prompt
from asyncsynth.testing import Reply, SimServer
from asyncsynth.testing.gra_pool import Call, GraScript, pool_config

REASONS = {
    "instruction_fail",
    "low_mean",
    "adjudicator_reject",
    "parse_failure",
    "request_error",
    "duplicate",
}
SEEDS = [
    {
        "instruction": "What is 12 * 12?",
        "response": "144",
        "domain": "math",
        "keywords": ["arithmetic", "multiplication", "squares"],
        "summary": "Multiply twelve by twelve.",
    },
    {
        "instruction": "Write a haiku about snow.",
        "response": "White hush on the roofs...",
        "domain": "creative writing",
    },
    {"instruction": "Reverse a string in Python.", "response": "Use s[::-1].", "domain": "Coding"},
]


def scores(value: float) -> dict[str, Any]:
    return {"strengths": "s", "weaknesses": "w", **dict.fromkeys(RESPONSE_CRITERIA, value)}


def read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def write_seeds(path: Path, rows: Sequence[dict[str, Any]] = SEEDS) -> str:
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    return str(path)


def mixed_script(**extra: Any) -> GraScript:
    """Reviews that produce every outcome, decided by the request only (deterministic).

    Model e scores 5 and d scores 10 (others 9): with e on the committee the mean is low
    unless d is there too, which makes a dispute; the adjudicator keeps about half.
    Model a fails the clarity of about one instruction in two.
    """

    def check(call: Call) -> Any:
        if call.model == "a" and int(call.tag, 16) % 2 == 0:
            return {
                "assessment": "vague",
                "rationality": True,
                "completeness": True,
                "clarity": False,
            }
        return None

    def review(call: Call) -> Any:
        return scores({"e": 5, "d": 10}.get(call.model, 9))

    def adjudicate(call: Call) -> Any:
        return {"assessment": "settled", **scores(9 if int(call.tag, 16) % 2 else 7)}

    handlers = {"review_instruction": check, "review_response": review, "adjudicate": adjudicate}
    return GraScript(**{**handlers, **extra})


@pytest.fixture
def serve() -> Iterator[Callable[[GraScript], SimServer]]:
    servers: list[SimServer] = []

    def start(script: GraScript) -> SimServer:
        server = SimServer(reply=script).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def run(
    config: Any,
    out: Path,
    *,
    embedder: Any = None,
    on_event: Any = None,
    **overrides: Any,
) -> Any:
    """run_gra with the config's [gra] settings, ``overrides`` applied."""
    settings = GraSettings.from_config(config).with_overrides(**overrides)
    return anyio.run(
        lambda: run_gra(config, out, settings=settings, on_event=on_event, embedder=embedder)
    )


# -- outputs and provenance ---------------------------------------------------------------------


def test_outputs_carry_provenance_and_the_report_adds_up(serve: Any, tmp_path: Path) -> None:
    script = mixed_script()
    sim = serve(script)
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    config = pool_config(sim.url, gra={"seed_data": seeds})
    result = run(config, tmp_path / "out", target=12, seed=3)
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {
        "accepted.jsonl",
        "rejected.jsonl",
        "pool.jsonl",
        "report.json",
        JOURNAL_NAME,
    }
    accepted, rejected = read(out / "accepted.jsonl"), read(out / "rejected.jsonl")
    report = orjson.loads((out / "report.json").read_bytes())
    assert result.accepted == len(accepted) >= 12 and result.target_reached
    assert report["accepted"] == len(accepted) and report["stopped"] == "target_reached"
    assert report["candidates"] == len(accepted) + len(rejected) == result.candidates
    assert sum(report["rejected"].values()) == len(rejected)
    for row in accepted:
        names = [row["generator"], *row["reviewers"]]
        assert len(set(names)) == 4 and row["mu"] >= 8
        assert row["decision"] in ("consensus", "adjudicated")
        assert len(row["review"]["reviews"]) == 3 and len(row["review"]["checks"]) == 3
        assert row["keywords"] and row["summary"] and row["summarized_by"] in "abcde"
        assert row["domain"] in report["domains"] and row["round"] >= 1
        assert row["tokens"]["in"] > 0 and row["requests"] >= 8
        if row["decision"] == "adjudicated":
            assert row["adjudicator"] not in names and row["review"]["adjudication"]["keep"]
        else:
            assert row["adjudicator"] is None and row["sigma"] <= 1.5
    assert {r["reason"] for r in rejected} <= REASONS
    assert {"instruction_fail", "low_mean", "adjudicator_reject"} <= {r["reason"] for r in rejected}
    for row in rejected:
        if row["reason"] == "adjudicator_reject":
            assert row["adjudicator"] and not row["review"]["adjudication"]["keep"]
        if row["reason"] == "instruction_fail":
            assert row["stage"] == "review_instruction" and row["response"] is None
    adj = report["adjudication"]
    assert adj["kept"] == sum(r["decision"] == "adjudicated" for r in accepted)
    assert adj["rejected"] == report["rejected"]["adjudicator_reject"]
    models = report["models"]
    assert models["e"]["reviewer"]["score"]["mean"] == 5
    assert models["e"]["reviewer"]["score_histogram"]["5"] == models["e"]["reviewer"]["reviews"]
    assert sum(m["generator"]["accepted"] for m in models.values()) == len(accepted)
    assert report["tokens"]["per_accepted"] > 0
    assert report["pool"]["annotation"] == {
        "needed": 2,
        "annotated": 2,
        "retried": 0,
        "unfinished": 0,
        "failures": [],
    }
    assert script.count("annotate") == 2  # the seeds lacking keywords and summary
    pool = read(out / "pool.jsonl")
    # The seed's own domain wins over the annotator's ("coding", first of the list).
    assert [p["domain"] for p in pool[:3]] == ["math", "creative writing", "coding"]
    assert pool[0]["model"] is None and pool[0]["keywords"] == SEEDS[0]["keywords"]
    assert pool[1]["model"] in "abcde" and pool[2]["model"] in "abcde"
    assert len(pool) == 3 + len(accepted)


def test_same_seed_same_outputs_other_seed_other_outputs(serve: Any, tmp_path: Path) -> None:
    sim = serve(mixed_script())
    config = pool_config(sim.url)
    for name, seed in (("one", 7), ("two", 7), ("three", 8)):
        run(config, tmp_path / name, target=8, seed=seed)
    files = ("accepted.jsonl", "rejected.jsonl", "pool.jsonl")
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()
    assert (tmp_path / "one" / "accepted.jsonl").read_bytes() != (
        tmp_path / "three" / "accepted.jsonl"
    ).read_bytes()


# -- dedup --------------------------------------------------------------------------------------


def test_dedup_keeps_the_highest_mean(serve: Any, tmp_path: Path) -> None:
    quality = {"a": 10, "b": 9.5, "c": 9, "d": 8.5, "e": 8.2}
    script = GraScript(
        generate=lambda call: {"keywords": ["x", "y", "z"], "instruction": "The same task."},
        respond=lambda call: f"answer by {call.model}",
        review_response=lambda call: scores(quality[call.field("Response")[-1]]),
    )
    sim = serve(script)
    config = pool_config(sim.url, gra={"max_rounds": 1})
    result = run(config, tmp_path / "out", target=1, round_size=8)
    accepted, rejected = (
        read(tmp_path / "out" / "accepted.jsonl"),
        read(tmp_path / "out" / "rejected.jsonl"),
    )
    assert result.accepted == 1 and len(rejected) == 7
    best = max(accepted + rejected, key=lambda r: (r["mu"], -int(r["id"][4:])))
    assert accepted[0]["id"] == best["id"]
    assert accepted[0]["mu"] == quality[best["generator"]]
    for row in rejected:
        assert row["reason"] == "duplicate" and row["stage"] == "dedup"
        assert row["duplicate_of"] == best["id"] and row["similarity"] == 1.0
        assert row["mu"] <= best["mu"]


def test_semantic_dedup_in_the_pipeline(serve: Any, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")

    class OneDirection:
        def embed(self, texts: Sequence[str]) -> Any:
            return np.ones((len(texts), 4), np.float32) / 2

    sim = serve(GraScript())
    config = pool_config(sim.url, gra={"max_rounds": 2})
    result = run(config, tmp_path / "out", target=3, round_size=3, embedder=OneDirection())
    assert result.accepted == 1 and result.stopped == "max_rounds"
    rejected = read(tmp_path / "out" / "rejected.jsonl")
    assert len(rejected) == 5 and {r["reason"] for r in rejected} == {"duplicate"}


# -- rounds and the pool ------------------------------------------------------------------------


def test_pool_grows_across_rounds(serve: Any, tmp_path: Path) -> None:
    script = GraScript()
    sim = serve(script)
    config = pool_config(sim.url, gra={"examples_per_prompt": 2})
    result = run(config, tmp_path / "out", target=6, round_size=3)
    assert result.rounds == 2
    pool = read(tmp_path / "out" / "pool.jsonl")
    assert [p["round"] for p in pool] == [1, 1, 1, 2, 2, 2]
    assert all(p["origin"] == "generated" and p["model"] in "abcde" for p in pool)
    round1 = {p["id"]: p["summary"] for p in pool if p["round"] == 1}
    generations = [c for c in script.log if c.stage == "generate"]
    empty = load_prompt("gra/no_examples").parts[0][1]
    assert all(empty in c.user for c in generations[:3])  # round 1: nothing in the pool yet
    for call in generations[3:]:  # round 2 reads round 1's summaries
        shown = [s for s in round1.values() if s in call.user]
        assert 1 <= len(shown) <= 2  # two of the domain's, or all the domain has
    accepted = read(tmp_path / "out" / "accepted.jsonl")
    for row in accepted:
        if row["round"] == 2:
            assert set(row["generation"]["examples"]) <= set(round1)
    report = orjson.loads((tmp_path / "out" / "report.json").read_bytes())
    assert [r["pool_size"] for r in report["rounds"]] == [3, 6]


def test_rounds_are_sized_from_the_acceptance_rate(serve: Any, tmp_path: Path) -> None:
    sim = serve(mixed_script())
    result = run(pool_config(sim.url, gra={"rounds": 2}), tmp_path / "out", target=10, seed=1)
    rounds = result.report["rounds"]
    assert rounds[0]["candidates"] == 10  # half the target at the assumed 50% acceptance
    accepted = rounds[0]["accepted"]
    assert 0 < accepted < 10
    rate = accepted / 10
    remaining = 10 - accepted
    # The last planned round: all that remains, plus one standard deviation of margin.
    need = remaining + math.sqrt(remaining * (1 - rate))
    assert rounds[1]["candidates"] == math.ceil(need / rate)


# -- failures -----------------------------------------------------------------------------------


def test_unparseable_generation_is_rejected_with_its_reply(serve: Any, tmp_path: Path) -> None:
    script = GraScript(
        generate=lambda call: "Here is a task: tell me a joke" if call.model == "a" else None
    )
    sim = serve(script)
    config = pool_config(sim.url, gra={"reasks": 2})
    result = run(config, tmp_path / "out", target=6, seed=0, round_size=12)
    rejected = read(tmp_path / "out" / "rejected.jsonl")
    mine = [r for r in rejected if r["generator"] == "a"]
    assert mine and all(r["reason"] == "parse_failure" and r["stage"] == "generate" for r in mine)
    assert mine[0]["failures"][0]["raw"] == "Here is a task: tell me a joke"
    assert script.count("generate", "a") == 3 * len(mine)  # ask + 2 re-asks each
    assert result.report["models"]["a"]["failures"]["parse_failure"] == len(mine)
    assert result.accepted >= 6


def test_every_request_failing_stops_after_one_round(serve: Any, tmp_path: Path) -> None:
    script = GraScript(generate=lambda call: Reply(status=403, content="no key"))
    sim = serve(script)
    result = run(pool_config(sim.url, engine={"max_attempts": 1}), tmp_path / "out", target=5)
    assert result.stopped == "all_requests_failed" and result.rounds == 1
    rejected = read(tmp_path / "out" / "rejected.jsonl")
    assert {r["reason"] for r in rejected} == {"request_error"}
    assert "no key" in rejected[0]["failures"][0]["message"]


# -- resume -------------------------------------------------------------------------------------


def test_resume_after_an_interrupt_sends_only_what_was_missing(serve: Any, tmp_path: Path) -> None:
    reference_sim = serve(mixed_script(latency={"*": 0.002}))
    config = pool_config(reference_sim.url, concurrency=4)
    run(config, tmp_path / "reference", target=20, seed=5)
    total = reference_sim.stats.requests

    sim = serve(mixed_script(latency={"*": 0.002}))
    config = pool_config(sim.url, concurrency=4)
    out = tmp_path / "resumed"

    async def interrupted() -> None:
        async with anyio.create_task_group() as tg:

            async def stop_midway() -> None:
                await sim.wait_for_requests_async(total // 2)
                tg.cancel_scope.cancel()

            tg.start_soon(stop_midway)
            settings = GraSettings.from_config(config).with_overrides(target=20, seed=5)
            await run_gra(config, out, settings=settings)
            pytest.fail("the run should have been interrupted")

    anyio.run(interrupted)
    with Journal(out / JOURNAL_NAME) as journal:
        saved = len(journal)
    assert 0 < saved < total
    before = sim.stats.requests
    result = run(config, out, target=20, seed=5)
    assert sim.stats.requests - before == total - saved
    assert result.report["engine"]["cached"] == saved
    for f in ("accepted.jsonl", "rejected.jsonl", "pool.jsonl"):
        assert (out / f).read_bytes() == (tmp_path / "reference" / f).read_bytes()


def test_a_finished_run_repeated_sends_nothing(serve: Any, tmp_path: Path) -> None:
    script = mixed_script()
    sim = serve(script)
    config = pool_config(sim.url, gra={"seed_data": write_seeds(tmp_path / "s.jsonl")})
    run(config, tmp_path / "out", target=6)
    first = (tmp_path / "out" / "accepted.jsonl").read_bytes()
    sent = sim.stats.requests
    run(config, tmp_path / "out", target=6)
    assert sim.stats.requests == sent  # seeds annotated once, everything from the journal
    assert (tmp_path / "out" / "accepted.jsonl").read_bytes() == first


# -- refine mode --------------------------------------------------------------------------------


def test_refine_rewrites_seed_responses_and_retries_rejected_ones(
    serve: Any, tmp_path: Path
) -> None:
    script = mixed_script()
    sim = serve(script)
    seeds = [{"instruction": f"Question {i}?", "response": f"draft {i}"} for i in range(6)]
    config = pool_config(
        sim.url,
        gra={"seed_data": write_seeds(tmp_path / "s.jsonl", seeds), "refine_attempts": 3},
    )
    result = run(config, tmp_path / "out", mode="refine", seed=4)
    accepted = read(tmp_path / "out" / "accepted.jsonl")
    rejected = read(tmp_path / "out" / "rejected.jsonl")
    assert result.target == 6 and result.accepted == len(accepted)
    for row in accepted:
        i = int(row["id"].split("-")[1])
        assert row["mode"] == "refine" and row["instruction"] == f"Question {i}?"
        assert row["generation"]["original_response"] == f"draft {i}"
        assert row["response"].startswith("A better answer to: Question")
    assert len({r["id"].rsplit("-", 1)[0] for r in accepted}) == len(accepted)  # one per seed
    # A rejected seed gets another draw (new roles), up to refine_attempts in all.
    assert any(r["generation"]["attempt"] > 0 for r in accepted)
    assert max(r["generation"]["attempt"] for r in accepted + rejected) <= 2
    assert script.count("generate") == 0 and script.count("summarize") == 0
    assert script.count("refine") == len(accepted) + sum(
        r["stage"] not in ("generate", "review_instruction") for r in rejected
    )


def test_refine_needs_seeds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs seed data"):
        run(pool_config("http://127.0.0.1:9/v1"), tmp_path, mode="refine")


def test_bad_seed_line_is_named(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "s.jsonl", [SEEDS[0], {"instruction": "no answer"}])
    config = pool_config("http://127.0.0.1:9/v1", gra={"seed_data": seeds})
    with pytest.raises(InputError, match=r"s\.jsonl:2: missing or empty field 'response'"):
        run(config, tmp_path / "out", target=1)


def test_target_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="give a target"):
        run(pool_config("http://127.0.0.1:9/v1"), tmp_path)


# -- small pools --------------------------------------------------------------------------------


def test_shared_roles_are_reported(serve: Any, tmp_path: Path) -> None:
    sim = serve(GraScript())
    config = pool_config(sim.url, ("a", "b"), gra={"allow_shared_roles": True, "reviewers": 2})
    result = run(config, tmp_path / "out", target=3)
    committee = result.report["committee"]
    assert committee["samples_with_shared_roles"] == result.candidates
    assert "two roles" in committee["note"]
    for row in read(tmp_path / "out" / "accepted.jsonl"):
        assert row["shared_roles"] is True and row["generator"] not in row["reviewers"][:1]


# -- the command --------------------------------------------------------------------------------


def _config_file(tmp_path: Path, url: str, **gra: Any) -> Path:
    lines = ["[engine]", "backoff_base = 0.001", "max_attempts = 1", ""]
    for m in "abcde":
        lines += [f"[endpoints.{m}]", f'base_url = "{url}"', f'model = "{m}"', ""]
    lines += ["[gra]", 'embedding_model = "none"']
    lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in gra.items()]
    path = tmp_path / "gra.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_runs_and_summarises(serve: Any, tmp_path: Path) -> None:
    sim = serve(GraScript())
    write_seeds(tmp_path / "seeds.jsonl")
    config = _config_file(tmp_path, sim.url, seed_data="seeds.jsonl")  # relative to the file
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["gra", str(config), "--target", "4", "--out", str(out), "--seed", "1", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "GRA: 4 accepted of 4 candidates" in result.output
    assert len(read(out / "accepted.jsonl")) == 4
    assert orjson.loads((out / "report.json").read_bytes())["pool"]["seeds"] == 3


def test_cli_exit_codes(serve: Any, tmp_path: Path) -> None:
    sim = serve(GraScript(review_response=lambda call: scores(3)))
    config = _config_file(tmp_path, sim.url, max_rounds=1)
    out = str(tmp_path / "out")
    missed = CliRunner().invoke(main, ["gra", str(config), "--target", "2", "--out", out, "-q"])
    assert missed.exit_code == 1 and "Target not reached (max_rounds)" in missed.output
    bad = _config_file(tmp_path, sim.url, tau=12)
    refused = CliRunner().invoke(main, ["gra", str(bad), "--target", "2", "--out", out])
    assert refused.exit_code == 2 and "gra.tau" in refused.output


def test_events_tell_rounds_decisions_and_acceptance(serve: Any, tmp_path: Path) -> None:
    heard: list[Any] = []
    sim = serve(GraScript())
    result = run(pool_config(sim.url), tmp_path, target=3, round_size=3, on_event=heard.append)
    events = [e for e in heard if isinstance(e, PipelineEvent)]  # the engine's are heard too
    assert {e.kind for e in heard if not isinstance(e, PipelineEvent)} >= {"role_started"}
    assert result.accepted == 3 and {e.pipeline for e in events} == {"gra"}
    kinds = [(e.kind, e.step) for e in events if e.kind != "request"]
    assert kinds == [
        ("start", "annotate"),
        ("done", "annotate"),
        ("start", "round_1"),
        ("done", "round_1"),
        ("note", "gra"),
    ]
    decided = [e.data for e in events if e.kind == "request"]
    assert [d["done"] for d in decided] == [1, 2, 3] and decided[-1]["total"] == 3
    assert decided[-1]["passed"] == 3
    done = next(e.data for e in events if e.kind == "done" and e.step == "round_1")
    assert done["accepted"] == 3 and done["accepted_total"] == 3
    assert events[-1].data == {"stopped": "target_reached", "accepted": 3, "target": 3}
    assert describe(next(e for e in events if e.kind == "done" and e.step == "round_1"))


def test_seeds_from_a_datasets_folder(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    from asyncsynth.pipelines.gra import load_seeds

    folder = tmp_path / "data"
    folder.mkdir()
    rows = [{"prompt": "Q1", "answer": "A1", "kw": "x, y, z"}, {"prompt": "Q2", "answer": "A2"}]
    write_seeds(folder / "train.jsonl", rows)
    fields = {"instruction": "prompt", "response": "answer", "keywords": "kw"}
    fields |= {"domain": "domain", "summary": "summary"}
    seeds = load_seeds(f"hf:{folder}:train", fields, domains=["QA"])
    assert [(s.instruction, s.response, s.keywords) for s in seeds] == [
        ("Q1", "A1", ("x", "y", "z")),
        ("Q2", "A2", None),
    ]
    assert seeds[1].source.endswith(":train#1") and not seeds[0].annotated


def test_cli_ctrl_c_then_the_same_command_resumes(serve: Any, tmp_path: Path) -> None:
    sim = serve(GraScript(latency={"*": 0.005}))
    config = _config_file(tmp_path, sim.url)
    out = tmp_path / "out"
    code = "from asyncsynth.cli import main; main()"
    command = [sys.executable, "-c", code, "gra", str(config), "--target", "40"]
    command += ["--out", str(out), "--seed", "2", "-q"]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        sim.wait_for_requests(60, timeout=60)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, stderr.decode()
    assert b"run the same command again to resume" in stderr
    with Journal(out / JOURNAL_NAME) as journal:
        saved = len(journal)
    assert saved > 0
    sent = sim.stats.requests
    done = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert b"GRA: 40 accepted" in done.stderr
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["engine"]["cached"] == saved
    assert sim.stats.requests - sent == report["engine"]["requests"] - saved


def test_endpoints_refusing_json_schema_fall_back_and_resume_remembers(tmp_path: Path) -> None:
    script = GraScript()
    refused: list[int] = []

    def hook(body: dict[str, Any], ctx: Any) -> Any:
        if (body.get("response_format") or {}).get("type") == "json_schema":
            refused.append(ctx.n)
            return Reply(status=400, content="response_format json_schema unsupported")
        return script(body, ctx)

    with SimServer(reply=hook) as sim:
        config = pool_config(sim.url)
        first = run(config, tmp_path, target=4)
        assert first.accepted >= 4 and refused
        assert first.report["structured_formats"] == dict.fromkeys("abcde", "json_object")
        before = len(refused)
        again = run(config, tmp_path, target=4)
    assert len(refused) == before  # the resumed run asked in the format that worked
    assert again.report["engine"]["cached"] == again.report["engine"]["requests"]


# -- round 2: truncation, losses, dedup text, fixed roles, stops ----------------------------------


def test_a_truncated_response_is_rejected_unreviewed_or_reviewed_if_asked(
    serve: Any, tmp_path: Path
) -> None:
    def respond(call: Call) -> Any:
        return (
            Reply(content="The answer starts but", finish_reason="length")
            if call.model == "b"
            else None
        )

    script = GraScript(respond=respond)
    sim = serve(script)
    config = pool_config(sim.url)
    result = run(config, tmp_path / "cut", target=6, round_size=12, max_rounds=1)
    rejected = read(tmp_path / "cut" / "rejected.jsonl")
    cut = [r for r in rejected if r["generator"] == "b"]
    assert cut and all(r["reason"] == "truncated" and r["stage"] == "respond" for r in cut)
    assert all(
        r["response"] == "The answer starts but" and r["generation"]["truncated"] for r in cut
    )
    assert all("reviews" not in r["review"] for r in cut)  # never scored as if complete
    assert result.report["rejected"]["truncated"] == len(cut)
    reviewed_b = [c for c in script.log if c.stage == "review_response" and "starts but" in c.user]
    assert reviewed_b == []
    kept = run(
        config, tmp_path / "kept", target=12, round_size=12, max_rounds=1, truncated="review"
    )
    accepted = read(tmp_path / "kept" / "accepted.jsonl")
    assert kept.accepted == 12
    assert {r["generator"] == "b" for r in accepted if r["generation"].get("truncated")} == {True}


def test_a_failed_summary_is_retried_with_another_model_then_counted(
    serve: Any, tmp_path: Path
) -> None:
    script = GraScript(summarize=lambda call: "no summary" if call.model in "ab" else None)
    sim = serve(script)
    config = pool_config(sim.url, gra={"reasks": 0})
    result = run(config, tmp_path / "out", target=20, round_size=20, max_rounds=1)
    losses = result.report["losses"]
    accepted = read(tmp_path / "out" / "accepted.jsonl")
    failed = set(losses["summary_failed"])
    assert losses["summary_retried"] > 0 and failed
    assert script.count("summarize", "a") + script.count("summarize", "b") == (
        losses["summary_retried"] + len(failed)
    )
    pool_ids = {p["id"] for p in read(tmp_path / "out" / "pool.jsonl")}
    for row in accepted:
        stages = [f["stage"] for f in row.get("failures", [])]
        if row["id"] in failed:
            assert row["summary"] is None and row["id"] not in pool_ids
            assert stages == ["summarize", "summarize"]  # both models' failures on the record
        else:
            assert row["summarized_by"] in "cde" and row["id"] in pool_ids
            assert stages in ([], ["summarize"])
    assert any("have no summary" in line for line in explain(result.report))


def test_a_failed_annotation_is_retried_then_the_seed_is_left_out_and_named(
    serve: Any, tmp_path: Path
) -> None:
    def annotate(call: Call) -> Any:
        if "Unannotatable" in call.user or call.model == "a":
            return "no idea"
        return None

    script = GraScript(annotate=annotate)
    sim = serve(script)
    rows = [{"instruction": f"Question {i}?", "response": f"Answer {i}."} for i in range(6)]
    rows.append({"instruction": "Unannotatable?", "response": "Indeed."})
    seeds = write_seeds(tmp_path / "seeds.jsonl", rows)
    config = pool_config(sim.url, gra={"seed_data": seeds, "reasks": 0})
    result = run(config, tmp_path / "out", target=4, round_size=4)
    annotation = result.report["pool"]["annotation"]
    losses = result.report["losses"]
    assert annotation["needed"] == 7 and annotation["annotated"] == 6
    assert losses["annotation_failed"] == [f"{seeds}:7"]
    assert annotation["failures"][0]["models"][0] != annotation["failures"][0]["models"][1]
    failed_models = annotation["failures"][0]["models"]
    # Every seed whose first annotator was a is asked again; the unannotatable one twice.
    retried = script.count("annotate", "a") - ("a" in failed_models) + 1
    assert losses["annotation_retried"] == retried and script.count("annotate") == 7 + retried
    pool = read(tmp_path / "out" / "pool.jsonl")
    seeds_in_pool = [p for p in pool if p["origin"] == "seed"]
    assert len(seeds_in_pool) == 6 and all(p["model"] != "a" for p in seeds_in_pool)
    assert any(f"{seeds}:7" in line for line in explain(result.report))


def test_a_domain_without_pairs_falls_back_and_is_counted(serve: Any, tmp_path: Path) -> None:
    sim = serve(GraScript())
    seeds = write_seeds(tmp_path / "seeds.jsonl", [SEEDS[0]])  # math only
    config = pool_config(sim.url, gra={"seed_data": seeds, "domains": ["math", "coding"]})
    result = run(config, tmp_path / "out", target=8, round_size=8, max_rounds=1, seed=2)
    rows = read(tmp_path / "out" / "accepted.jsonl") + read(tmp_path / "out" / "rejected.jsonl")
    fell_back = [r for r in rows if r["generation"].get("examples_from_other_domains")]
    assert fell_back and {r["domain"] for r in fell_back} == {"coding"}
    assert all(r["generation"]["examples"] == ["seed-000000"] for r in fell_back)
    assert result.report["losses"]["domain_fallbacks"] == {"coding": len(fell_back)}
    assert sum(r["domain"] == "coding" for r in rows) == len(fell_back)


@pytest.mark.parametrize(
    ("same", "text", "kept"),
    [
        ("instruction", "instruction", 1),
        ("instruction", "response", 6),
        ("instruction", "both", 6),
        ("response", "response", 1),
        ("response", "both", 6),
        ("response", "instruction", 6),
    ],
)
def test_dedup_text_chooses_what_is_compared(
    serve: Any, tmp_path: Path, same: str, text: str, kept: int
) -> None:
    def generate(call: Call) -> Any:
        return {"keywords": ["x", "y", "z"], "instruction": "One task."}

    def respond(call: Call) -> Any:
        return "One answer." if same == "response" else f"Answer {call.body['seed']}."

    script = GraScript(respond=respond, **({"generate": generate} if same == "instruction" else {}))
    sim = serve(script)
    config = pool_config(sim.url, gra={"dedup_text": text})
    result = run(config, tmp_path / "out", target=6, round_size=6, max_rounds=1)
    assert result.accepted == kept
    assert result.report["rejected"]["duplicate"] == 6 - kept
    assert result.report["dedup"]["text"] == text


def test_fixed_assignment_end_to_end(serve: Any, tmp_path: Path) -> None:
    def review(call: Call) -> Any:
        return scores(6 if call.model == "d" and int(call.tag, 16) % 2 else 10)

    script = GraScript(review_response=review)
    sim = serve(script)
    fixed = {"generator": "a", "reviewers": ["b", "c", "d"], "adjudicator": "e"}
    config = pool_config(sim.url, gra={"assignment": "fixed", "fixed": fixed})
    result = run(config, tmp_path / "out", target=6, round_size=12, max_rounds=1)
    rows = read(tmp_path / "out" / "accepted.jsonl") + read(tmp_path / "out" / "rejected.jsonl")
    assert len(rows) == 12 and result.accepted == 12
    assert {(r["generator"], tuple(r["reviewers"])) for r in rows} == {("a", ("b", "c", "d"))}
    disputed = [r for r in rows if r["disputed"]]
    assert disputed and all(r["adjudicator"] == "e" for r in disputed)
    assert {m for (stage, m) in script.calls if stage in ("generate", "respond")} == {"a"}
    assert {m for (stage, m) in script.calls if stage.startswith("review")} == {"b", "c", "d"}
    assert {m for (stage, m) in script.calls if stage == "adjudicate"} == {"e"}
    assert result.report["committee"]["assignment"] == "fixed"
    assert result.report["models"]["e"]["adjudicator"]["adjudications"] == len(disputed)


def test_refine_stops_when_every_seed_had_its_attempts(serve: Any, tmp_path: Path) -> None:
    refine = GraScript(
        refine=lambda call: f"Better: {call.field('Draft answer')}",
        review_response=lambda call: scores(9 if "draft 0" in call.user else 3),
    )
    sim = serve(refine)
    rows = [{"instruction": f"Question {i}?", "response": f"draft {i}"} for i in range(4)]
    config = pool_config(
        sim.url, gra={"seed_data": write_seeds(tmp_path / "s.jsonl", rows), "refine_attempts": 2}
    )
    result = run(config, tmp_path / "out", mode="refine", round_size=4)
    assert result.stopped == "seeds_exhausted" and not result.target_reached
    assert [r["candidates"] for r in result.report["rounds"]] == [4, 3]
    assert result.accepted == 1 and result.target == 4
    attempts = sorted(r["generation"]["attempt"] for r in read(tmp_path / "out" / "rejected.jsonl"))
    assert attempts == [0, 0, 0, 1, 1, 1]
    assert "every seed had its refine attempts" in explain(result.report)[0]


def test_seed_annotation_streams_into_round_one(serve: Any, tmp_path: Path) -> None:
    domains = ["math", "coding"]
    seed = next(  # a run seed whose round 1 (3 candidates) is all math
        s
        for s in range(100)
        if all(sample_rng(s, "generate", i).choice(domains) == "math" for i in range(3))
    )
    # The coding seeds lack keywords, and their annotation never answers: round 1 must not
    # wait for it (its math candidates need only the math seed).
    script = GraScript(annotate=lambda call: Reply(hang=True) if "Code " in call.user else None)
    sim = serve(script)
    rows = [
        SEEDS[0],
        *({"instruction": f"Code {i}", "response": "x", "domain": "coding"} for i in range(3)),
    ]
    config = pool_config(
        sim.url,
        gra={"seed_data": write_seeds(tmp_path / "s.jsonl", rows), "domains": domains},
        engine={"deadline": 30},
    )
    events: list[PipelineEvent] = []
    result = run(
        config, tmp_path / "out", target=3, round_size=3, seed=seed, on_event=events.append
    )
    assert result.accepted == 3 and result.stopped == "target_reached"
    annotation = result.report["pool"]["annotation"]
    assert annotation["needed"] == 3 and annotation["unfinished"] == 3  # cancelled at the end
    assert script.count("annotate") >= 1  # they were asked, in the background
    steps = [(e.kind, e.step) for e in events if isinstance(e, PipelineEvent)]  # not the engine's
    assert ("start", "annotate") in steps and ("done", "annotate") not in steps
    rows_out = read(tmp_path / "out" / "accepted.jsonl")
    assert all(r["generation"]["examples"] == ["seed-000000"] for r in rows_out)


def test_time_budget_stops_starting_candidates_and_reports(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time as real_time

    from asyncsynth.pipelines.gra import rounds

    class Clock:
        offset = 0.0

        def monotonic(self) -> float:
            return real_time.monotonic() + self.offset

    clock = Clock()
    monkeypatch.setattr(rounds, "time", clock)

    def generate(call: Call) -> Any:
        if script.count("generate") == 3:  # the third candidate has started: time is up
            clock.offset = 10_000.0
        return None

    script = GraScript(generate=generate)
    sim = serve(script)
    config = pool_config(sim.url, gra={"max_in_flight": 1, "time_budget": 60})
    result = run(config, tmp_path / "out", target=10, round_size=10)
    assert result.stopped == "time_budget" and result.rounds == 1 and result.candidates == 3
    assert result.report["bounds"]["time_budget"] == 60
    assert len(read(tmp_path / "out" / "accepted.jsonl")) == 3
    assert "the time budget of 60 s was spent" in explain(result.report)[0]


def test_a_folder_of_another_setup_is_refused_and_a_new_target_resumes(
    serve: Any, tmp_path: Path
) -> None:
    sim = serve(GraScript())
    config = pool_config(sim.url)
    out = tmp_path / "out"
    run(config, out, target=3, round_size=3)
    with pytest.raises(RunFolderError, match=r"changed: settings\.committee\.tau") as exc:
        run(pool_config(sim.url, gra={"tau": 7.0}), out, target=3, round_size=3)
    assert "state.json" in str(exc.value)
    sent = sim.stats.requests
    more = run(config, out, target=6, round_size=3, max_rounds=4)
    assert more.accepted == 6 and more.report["engine"]["cached"] > 0
    assert (
        sim.stats.requests - sent
        == more.report["engine"]["requests"] - more.report["engine"]["cached"]
    )


def test_cli_says_why_samples_were_rejected_and_hints_at_echoes(serve: Any, tmp_path: Path) -> None:
    echo = {
        "assessment": "<one or two sentences: the instruction's main strength or flaw>",
        **dict.fromkeys(("rationality", "completeness", "clarity"), True),
    }
    prompts = Path(__file__).parent / "data/template_prompts"  # prompts that show a template
    script = GraScript(
        prompts_dir=str(prompts),
        review_instruction=lambda call: echo if call.model == "b" else None,
        review_response=lambda call: scores(5),
    )
    sim = serve(script)
    config = _config_file(tmp_path, sim.url, reasks=0, prompts_dir=str(prompts))
    out = tmp_path / "out"
    args = ["gra", str(config), "--target", "5", "--out", str(out), "--max-rounds", "1"]
    result = CliRunner().invoke(main, [*args, "--round-size", "10"])
    assert result.exit_code == 1
    text = result.output
    assert "Stopped because gra.max_rounds = 1 rounds were done: 0 of 10 candidates" in text
    assert "Why samples were rejected:" in text
    assert "low_mean: the reviewers' mean score was below tau = 8" in text
    assert "parse_failure: a model's reply could not be read as the JSON asked for" in text
    assert "only repeated the prompt's <...> placeholders" in text
    report = orjson.loads((out / "report.json").read_bytes())
    assert (
        report["failures"]["samples_with_template_echo"] == report["rejected"]["parse_failure"] > 0
    )
