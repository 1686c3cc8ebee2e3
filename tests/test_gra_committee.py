"""The GRA committee: every branch of the decision, role draws, settings, failures."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from click.testing import CliRunner

from asyncsynth import ConfigError, Engine
from asyncsynth.pipelines.gra import (
    INSTRUCTION_CRITERIA,
    RESPONSE_CRITERIA,
    Committee,
    CommitteeSettings,
    GraSettings,
    Roles,
    decide,
    draw_roles,
    review_sample,
)
from asyncsynth.testing import Reply, SimServer
from asyncsynth.testing.gra_pool import Call, GraScript, pool_config

ROLES = Roles("a", ("b", "c", "d"), "e", seed=1)


def scores(value: float, **overrides: float) -> dict[str, Any]:
    return {
        "strengths": "s",
        "weaknesses": "w",
        **dict.fromkeys(RESPONSE_CRITERIA, value),
        **overrides,
    }


def by_model(table: dict[str, Any]) -> Callable[[Call], Any]:
    """A handler answering ``table[model]`` (None: the default answer)."""
    return lambda call: table.get(call.model)


@pytest.fixture
def pool() -> Iterator[Callable[..., tuple[GraScript, SimServer]]]:
    servers: list[SimServer] = []

    def start(**handlers: Any) -> tuple[GraScript, SimServer]:
        script = GraScript(**handlers)
        server = SimServer(reply=script).start()
        servers.append(server)
        return script, server

    yield start
    for server in servers:
        server.stop()


async def _review(server: SimServer, roles: Roles = ROLES, **gra: Any) -> Any:
    config = pool_config(server.url, gra=gra, engine={"max_attempts": 1})
    async with Engine(config) as engine:
        committee = Committee(engine, CommitteeSettings.from_config(config))
        return await committee.review("Explain tides.", "The moon pulls the sea.", roles)


# -- the decision rule --------------------------------------------------------------------------


def _settings(**gra: Any) -> CommitteeSettings:
    return CommitteeSettings.from_config(pool_config("http://x/v1", gra=gra))


@pytest.mark.parametrize(
    ("values", "outcome"),
    [
        ([9, 8, 8], "consensus"),
        ([7, 7, 9], "low_mean"),
        ([10, 10, 6], "dispute"),
        ([8, 8, 8], "consensus"),  # mu == tau accepts
        ([6.5, 9.5], "consensus"),  # sigma == delta (population) accepts
    ],
)
def test_decide(values: list[float], outcome: str) -> None:
    result, mu, sigma = decide(values, _settings())
    assert result == outcome
    assert mu == pytest.approx(statistics.fmean(values))
    assert sigma == pytest.approx(statistics.pstdev(values))


def test_sample_std_is_configurable() -> None:
    values = [10, 10, 7]  # population std 1.41, sample std 1.73
    assert decide(values, _settings())[0] == "consensus"
    assert decide(values, _settings(std="sample"))[0] == "dispute"
    assert decide(values, _settings(tau=9.5))[0] == "low_mean"
    assert decide(values, _settings(delta=2.0, std="sample"))[0] == "consensus"


def test_decide_is_exact_at_the_thresholds() -> None:
    # Reviewers' means 47/6, 47/6 and 50/6: exactly 8 together (rounding each first made 7.99997).
    assert (
        decide([Fraction(47, 6), Fraction(47, 6), Fraction(50, 6)], _settings())[0] == "consensus"
    )
    assert decide([8.1, 7.9, 8.0], _settings())[0] == "consensus"  # the decimals written: 8.0
    assert decide([8.1, 7.9, 7.99], _settings())[0] == "low_mean"
    # sigma == delta exactly (sample std of 6.5, 8, 9.5 is 1.5): consensus, not a dispute.
    assert decide([6.5, 8, 9.5], _settings(std="sample", tau=7))[0] == "consensus"
    assert decide([6.5, 8, 9.51], _settings(std="sample", tau=7))[0] == "dispute"
    assert decide([8.0, 8.3, 7.7], _settings(delta=0.1))[0] == "dispute"


def _sums(std: str) -> list[tuple[int, int, int]]:
    """Every triple of reviewer totals (six 0-10 criteria each: 0-60) whose exact mean is
    tau = 8, or whose exact standard deviation is delta = 1.5 (none for the population one)."""
    found = []
    for a in range(61):
        for b in range(a, 61):
            for c in range(b, 61):
                spread = 3 * (a * a + b * b + c * c) - (a + b + c) ** 2  # 36 * 3 * n * var
                on_delta = spread == (486 if std == "sample" else 729)
                if a + b + c == 144 or on_delta:
                    found.append((a, b, c))
    return found


def _six(total: int) -> list[int]:
    q, r = divmod(total, 6)
    return [q + 1] * r + [q] * (6 - r)


@pytest.mark.anyio
@pytest.mark.parametrize("std", ["population", "sample"])
async def test_every_tie_at_tau_and_delta_is_decided_exactly(pool: Any, std: str) -> None:
    combos = _sums(std)
    assert len(combos) == (127 if std == "population" else 127 + 43 - 1)  # one is both
    slot = {"b": 0, "c": 1, "d": 2}

    def review(call: Call) -> Any:
        total = combos[int(call.field("Instruction").split()[-1])][slot[call.model]]
        return {
            "strengths": "s",
            "weaknesses": "w",
            **dict(zip(RESPONSE_CRITERIA, _six(total), strict=True)),
        }

    _, server = pool(review_response=review)
    fixed = {"generator": "a", "reviewers": ["b", "c", "d"], "adjudicator": "e"}
    config = pool_config(server.url, gra={"assignment": "fixed", "fixed": fixed, "std": std})
    settings = CommitteeSettings.from_config(config)
    verdicts: dict[int, Any] = {}
    async with Engine(config) as engine:

        async def one(i: int) -> None:
            verdicts[i] = await review_sample(
                engine,
                f"Combination {i}",
                "An answer.",
                generator="a",
                rng=random.Random(i),
                settings=settings,
            )

        async with anyio.create_task_group() as tg:
            for i in range(len(combos)):
                tg.start_soon(one, i)
    flipped_before = 0
    for i, sums in enumerate(combos):
        mu = Fraction(sum(sums), 18)
        n = 2 if std == "sample" else 3
        variance = sum((Fraction(x, 6) - mu) ** 2 for x in sums) / n
        expected = (
            "low_mean" if mu < 8 else "consensus" if variance <= Fraction(9, 4) else "adjudicated"
        )
        verdict = verdicts[i]
        assert verdict.path == expected, (sums, verdict.mu, verdict.sigma)
        assert verdict.disputed == (expected == "adjudicated")
        if expected != "low_mean":
            assert verdict.mu >= 8
        rounded = statistics.fmean(round(statistics.fmean(_six(x)), 4) for x in sums)
        flipped_before += sum(sums) == 144 and rounded < 8
    assert flipped_before == 16  # what rounding each reviewer's mean first used to reject


# -- every branch against scripted reviewers ----------------------------------------------------


@pytest.mark.anyio
async def test_instruction_fail_rejects_before_scoring(pool: Any) -> None:
    fail = {"assessment": "vague", **dict.fromkeys(INSTRUCTION_CRITERIA, True), "clarity": False}
    script, server = pool(review_instruction=by_model({"c": fail}))
    verdict = await _review(server)
    assert verdict.status == "rejected" and verdict.reason == "instruction_fail"
    assert [(c.model, c.passed) for c in verdict.checks] == [
        ("b", True),
        ("c", False),
        ("d", True),
    ]
    assert verdict.checks[1].criteria["clarity"] is False
    assert script.count("review_response") == 0 and script.count("adjudicate") == 0
    assert verdict.mu is None


@pytest.mark.anyio
async def test_low_mean_rejects_without_adjudication(pool: Any) -> None:
    script, server = pool(review_response=by_model({"b": scores(7), "c": scores(7)}))
    verdict = await _review(server)
    assert verdict.reason == "low_mean" and verdict.path == "low_mean"
    assert verdict.mu == pytest.approx(23 / 3)
    assert [r.model for r in verdict.reviews] == ["b", "c", "d"]
    assert script.count("adjudicate") == 0


@pytest.mark.anyio
async def test_consensus_accepts(pool: Any) -> None:
    script, server = pool(review_response=by_model({"b": scores(9), "c": scores(8, clarity=5)}))
    verdict = await _review(server)
    assert verdict.accepted and verdict.path == "consensus"
    assert verdict.reviews[1].score == pytest.approx(7.5)
    assert verdict.mu == pytest.approx((9 + 7.5 + 9) / 3)
    assert script.count("adjudicate") == 0
    assert verdict.to_dict()["adjudicator"] is None


@pytest.mark.anyio
async def test_dispute_then_adjudicator_keeps(pool: Any) -> None:
    script, server = pool(
        review_response=by_model({"b": scores(10), "c": scores(10), "d": scores(6)}),
        adjudicate=by_model({"e": {"assessment": "b and c are right", **scores(9)}}),
    )
    verdict = await _review(server)
    assert verdict.accepted and verdict.path == "adjudicated"
    assert verdict.sigma == pytest.approx(statistics.pstdev([10, 10, 6]))
    assert verdict.adjudication is not None
    assert verdict.adjudication.model == "e" and verdict.adjudication.keep
    assert verdict.adjudication.score == 9
    assert script.count("adjudicate", "e") == 1
    # The adjudicator saw every review, anonymised, with the committee's figures.
    prompt = next(c for c in script.log if c.stage == "adjudicate").user
    assert "Reviewer 3: overall 6" in prompt and "mean 8.67" in prompt
    assert "Explain tides." in prompt and '"b"' not in prompt
    record = verdict.to_dict()
    assert record["adjudicator"] == "e" and record["adjudication"]["keep"] is True


@pytest.mark.anyio
async def test_dispute_then_adjudicator_rejects(pool: Any) -> None:
    _, server = pool(
        review_response=by_model({"b": scores(10), "c": scores(10), "d": scores(6)}),
        adjudicate=lambda call: {"assessment": "d is right", **scores(7.9)},
    )
    verdict = await _review(server)
    assert verdict.reason == "adjudicator_reject" and verdict.path == "adjudicated"
    assert verdict.adjudication is not None and not verdict.adjudication.keep
    assert verdict.disputed


@pytest.mark.anyio
async def test_a_failed_adjudication_stays_disputed_with_its_adjudicator(pool: Any) -> None:
    script, server = pool(
        review_response=by_model({"b": scores(10), "c": scores(10), "d": scores(6)}),
        adjudicate=lambda call: "I cannot decide.",
    )
    verdict = await _review(server, reasks=1)
    assert verdict.reason == "parse_failure" and verdict.disputed
    assert verdict.adjudication is None and verdict.mu == pytest.approx(26 / 3)
    (failure,) = verdict.failures
    assert (failure.stage, failure.model, failure.raw) == ("adjudicate", "e", "I cannot decide.")
    record = verdict.to_dict()
    assert record["disputed"] is True and record["adjudicator"] == "e"
    assert script.count("adjudicate", "e") == 2  # asked, then re-asked


@pytest.mark.anyio
async def test_an_echoed_review_is_a_named_parse_failure(pool: Any) -> None:
    echo = {
        "strengths": "<one sentence>",
        "weaknesses": "<one sentence>",
        **dict.fromkeys(RESPONSE_CRITERIA, 9),
    }
    prompts = Path(__file__).parent / "data/template_prompts"  # prompts that show a template
    _, server = pool(prompts_dir=str(prompts), review_response=by_model({"c": echo}))
    verdict = await _review(server, reasks=0, prompts_dir=str(prompts))
    assert verdict.reason == "parse_failure"
    (failure,) = verdict.failures
    assert failure.cause == "template_echo" and failure.message.startswith("template echo:")
    assert verdict.to_dict()["failures"][0]["cause"] == "template_echo"


@pytest.mark.anyio
async def test_unparseable_review_is_a_parse_failure_never_a_default(pool: Any) -> None:
    script, server = pool(review_response=by_model({"c": "I think it is good. 9/10!"}))
    verdict = await _review(server, reasks=1)
    assert verdict.reason == "parse_failure" and not verdict.accepted
    assert verdict.mu is None and verdict.reviews == []
    (failure,) = verdict.failures
    assert failure.stage == "review_response" and failure.model == "c"
    assert failure.kind == "parse_failure" and failure.raw == "I think it is good. 9/10!"
    assert script.count("review_response", "c") == 2  # the ask and one re-ask
    assert sum(c.reask for c in script.log) == 1


@pytest.mark.anyio
async def test_reask_recovers_a_review(pool: Any) -> None:
    def review(call: Call) -> Any:
        if call.model == "c" and not call.reask:
            return "```json\n{'strengths': oops}\n```"
        return None

    _, server = pool(review_response=review)
    verdict = await _review(server, reasks=1)
    assert verdict.accepted and len(verdict.reviews) == 3 and verdict.failures == []


@pytest.mark.anyio
async def test_min_reviews_decides_without_a_failed_reviewer(pool: Any) -> None:
    _, server = pool(review_response=by_model({"c": "no idea", "b": scores(8)}))
    verdict = await _review(server, reasks=0, min_reviews=2)
    assert verdict.accepted and [r.model for r in verdict.reviews] == ["b", "d"]
    assert [f.model for f in verdict.failures] == ["c"]


@pytest.mark.anyio
async def test_request_error_is_recorded(pool: Any) -> None:
    _, server = pool(review_instruction=by_model({"d": Reply(status=403, content="forbidden")}))
    verdict = await _review(server)
    assert verdict.reason == "request_error"
    (failure,) = verdict.failures
    assert failure.model == "d" and "forbidden" in failure.message


@pytest.mark.anyio
async def test_review_sample_draws_roles_and_is_reproducible(pool: Any) -> None:
    _, server = pool()
    config = pool_config(server.url)
    settings = CommitteeSettings.from_config(config)
    async with Engine(config) as engine:
        first = await review_sample(
            engine, "Q", "A", generator="a", rng=random.Random(5), settings=settings
        )
        second = await review_sample(
            engine, "Q", "A", generator="a", rng=random.Random(5), settings=settings
        )
    assert first.accepted and first.roles == second.roles
    assert "a" not in first.roles.reviewers and first.roles.adjudicator not in first.roles.reviewers
    orjson.dumps(first.to_dict())  # JSON-ready
    assert first.to_dict()["reviewers"] == list(first.roles.reviewers)


# -- role draws ---------------------------------------------------------------------------------


def test_random_roles_are_distinct_and_cover_the_pool() -> None:
    settings = _settings()
    seen: Counter[tuple[str, str]] = Counter()
    for i in range(300):
        roles = draw_roles(random.Random(i), settings, draw_generator=True)
        names = [roles.generator, *roles.reviewers, roles.adjudicator]
        assert len(set(names)) == 5 and not roles.shared
        seen.update([("generator", roles.generator or ""), ("adjudicator", roles.adjudicator)])
        seen.update(("reviewer", r) for r in roles.reviewers)
    for role in ("generator", "reviewer", "adjudicator"):
        assert {m for (r, m) in seen if r == role} == set("abcde")
    again = [draw_roles(random.Random(i), settings, draw_generator=True) for i in range(5)]
    assert again == [draw_roles(random.Random(i), settings, draw_generator=True) for i in range(5)]


def test_generator_outside_the_pool_excludes_nobody() -> None:
    settings = CommitteeSettings.from_config(
        pool_config("http://x/v1", ("a", "b", "c", "d"), gra={"reviewers": 3})
    )
    roles = draw_roles(random.Random(1), settings, generator="gpt")
    assert roles.generator == "gpt" and len({*roles.reviewers, roles.adjudicator}) == 4


def test_fixed_assignment() -> None:
    fixed = {"generator": "a", "reviewers": ["b", "c"], "adjudicator": "d"}
    settings = _settings(assignment="fixed", fixed=fixed)
    assert settings.reviewers == 2
    roles = draw_roles(random.Random(3), settings, draw_generator=True)
    assert (roles.generator, roles.reviewers, roles.adjudicator) == ("a", ("b", "c"), "d")


def test_small_pool_is_refused_with_the_way_out() -> None:
    config = pool_config("http://x/v1", ("a", "b"))
    with pytest.raises(ConfigError) as exc:
        GraSettings.from_config(config)
    message = str(exc.value)
    assert "<simulated pool>" in message and "gra.pool has 2 models" in message
    assert "needs 5 distinct ones (1 generator + 3 reviewers + 1 adjudicator)" in message
    assert "allow_shared_roles" in message


def test_shared_roles_when_allowed() -> None:
    settings = GraSettings.from_config(
        pool_config("http://x/v1", ("a", "b"), gra={"allow_shared_roles": True})
    ).committee
    assert settings.shares_roles
    for i in range(50):
        roles = draw_roles(random.Random(i), settings, draw_generator=True)
        assert roles.shared and len(roles.reviewers) == 3
        other = "b" if roles.generator == "a" else "a"
        assert roles.reviewers[0] == other  # the other model reviews before any repeat
        assert roles.adjudicator == other


def test_committee_only_needs_reviewers_plus_adjudicator() -> None:
    config = pool_config("http://x/v1", ("a", "b", "c", "d"))
    CommitteeSettings.from_config(config)  # 3 reviewers + 1 adjudicator: enough
    with pytest.raises(ConfigError, match="distinct"):
        GraSettings.from_config(config)  # a generator too: not enough


@pytest.mark.parametrize(
    ("gra", "problem"),
    [
        ({"colour": "red"}, "gra.colour: unknown key"),
        ({"pool": ["a", "zz"]}, "'zz' is neither a role nor an endpoint"),
        ({"pool": ["a", "a"]}, "distinct"),
        ({"tau": 11}, "gra.tau: scores run from 0 to 10"),
        ({"std": "both"}, "gra.std: must be one of population, sample"),
        ({"assignment": "fixed"}, "needs a [gra.fixed] table"),
        ({"min_reviews": 4}, "more than the 3 reviewers"),
        ({"params": {"review": {"temperature": "hot"}}}, "gra.params.review.temperature"),
        ({"dedup_threshold": 1.5}, "gra.dedup_threshold: must be in (0, 1]"),
        ({"structured": "xml"}, "gra.structured"),
    ],
)
def test_settings_errors_name_the_key(gra: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        GraSettings.from_config(pool_config("http://x/v1", gra=gra))
    assert problem in str(exc.value)
    assert str(exc.value).startswith("<simulated pool>")


def test_stage_params_merge_with_defaults() -> None:
    settings = GraSettings.from_config(
        pool_config("http://x/v1", gra={"params": {"review": {"max_tokens": 300}}})
    )
    assert settings.params["review"] == {"temperature": 0.0, "max_tokens": 300}
    assert settings.committee.review_params == {"temperature": 0.0, "max_tokens": 300}
    assert settings.params["generate"]["temperature"] == 0.9


# -- S3's --review gra: the pool is checked when the config is read ------------------------------


def _s3_config(tmp_path: Path, pool: list[str], **gra: Any) -> Path:
    lines = ["[engine]", "max_attempts = 1", ""]
    for m in "abcde":
        lines += [f"[endpoints.{m}]", 'base_url = "http://127.0.0.1:9/v1"', f'model = "{m}"', ""]
    gold = tmp_path / "gold.jsonl"
    gold.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    lines += ["[s3]", 'llm = "a"', f'gold = "{gold}"', "[s3.labels]", 'pos = "good"', 'neg = "bad"']
    lines += ["", "[gra]", f"pool = {orjson.dumps(pool).decode()}", 'embedding_model = "none"']
    lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in gra.items()]
    path = tmp_path / "s3.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_review_pool_must_seat_a_committee_without_the_writer(tmp_path: Path) -> None:
    from asyncsynth.config import load_config

    config = load_config(_s3_config(tmp_path, ["a", "b", "c", "d"]))
    with pytest.raises(ConfigError) as exc:
        CommitteeSettings.for_review(config, writer="a")
    message = str(exc.value)
    assert message.startswith(str(tmp_path / "s3.toml"))
    assert (
        "'a' wrote the samples and may not review them, which leaves 3 for 3 reviewers" in message
    )
    assert "allow_shared_roles" in message
    CommitteeSettings.for_review(config, writer="e")  # not in the pool: 4 models are enough
    ok = load_config(_s3_config(tmp_path, ["a", "b", "c", "d"], reviewers=2))
    CommitteeSettings.for_review(ok, writer="a")


def test_s3_review_gra_refuses_that_pool_at_config_load(tmp_path: Path) -> None:
    from asyncsynth.cli import main

    path = _s3_config(tmp_path, ["a", "b", "c", "d"])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["s3", str(path), "--out", str(out), "--review", "gra"])
    assert result.exit_code == 2, result.output
    assert "'a' wrote the samples and may not review them" in result.output
    assert not out.exists()  # refused before anything was written
    text = path.read_text().replace("[s3]\n", '[s3]\nreview = "gra"\n')
    path.write_text(text)
    result = CliRunner().invoke(main, ["s3", str(path), "--out", str(out)])
    assert result.exit_code == 2 and "may not review them" in result.output
