"""GRA pipelining: wall time for N accepted samples against the critical-path bound.

    python benchmarks/gra_pipeline.py                       # 500 accepted, ~50 s
    python benchmarks/gra_pipeline.py --scale 1 --concurrency 2 --verbose
    python benchmarks/gra_pipeline.py --scale 1 --concurrency 8 --target 200   # short rounds

A pool of five simulated models (one sim in a child process, so its work does not share
this process's CPU) answers every GRA stage with a scripted reply after a latency set
per role: generator (new task, response), reviewer (instruction check, response
scores), adjudicator, and the summariser. Reviews are mixed so that every committee
branch happens (instruction fails, low means, consensus, disputes kept and rejected).

The bound: no schedule can beat the pool's total model time divided by its concurrency
(5 models x --concurrency slots). Target: wall time <= 1.2x that bound. The per-model
bound (the busiest model's own time over its slots) is printed too; random role
assignment keeps the two close.

Rounds are barriers (a round's candidates are deduplicated together, in descending
committee mean, and their summaries feed the next round's generators), so each round
ends with a tail of about one sample's critical path (the chain generate -> check ->
respond -> score -> adjudicate) during which the pool is not full. The ratio therefore
depends on how long a round is compared with that chain: rounds of a few hundred
candidates per twenty slots (the default here; the paper's 10K-sample rounds on vLLM
servers are longer still, relative to their chain) stay near 1.15; many short rounds on a
wide pool cost more.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

import anyio

from asyncsynth.pipelines.gra import RESPONSE_CRITERIA, GraSettings, run_gra
from asyncsynth.testing import SimServer
from asyncsynth.testing.gra_pool import Call, GraScript, pool_config

MODELS = ("a", "b", "c", "d", "e")
LATENCY = {
    "generate": 0.060,  # generator: a new task
    "respond": 0.120,  # generator: the response
    "review_instruction": 0.030,  # reviewer, phase 1
    "review_response": 0.040,  # reviewer, phase 2
    "adjudicate": 0.050,  # adjudicator
    "summarize": 0.030,  # the summariser of kept samples
    "annotate": 0.030,
}
"""Seconds per reply at ``--scale 1`` (the default scale is 2: real replies take seconds, and
at a few tens of milliseconds this machine's own per-request overhead starts to show)."""
TARGET = 1.2


def _scores(value: float) -> dict[str, Any]:
    return {"strengths": "s", "weaknesses": "w", **dict.fromkeys(RESPONSE_CRITERIA, value)}


def _check(call: Call) -> Any:
    if call.model == "a" and int(call.tag, 16) % 4 == 0:
        return {"assessment": "vague", "rationality": True, "completeness": True, "clarity": False}
    return None


def _review(call: Call) -> Any:
    return _scores({"e": 5, "d": 10}.get(call.model, 9))


def _adjudicate(call: Call) -> Any:
    return {"assessment": "settled", **_scores(9 if int(call.tag, 16) % 2 else 7)}


def _serve(latency: dict[str, float], conn: Connection) -> None:
    """The child: one sim playing the whole pool until told to stop; then its tallies."""
    script = GraScript(
        latency=latency, review_instruction=_check, review_response=_review, adjudicate=_adjudicate
    )
    with SimServer(reply=script) as sim:
        conn.send(sim.url)
        conn.recv()
        conn.send(dict(script.calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=int, default=500, help="accepted samples")
    parser.add_argument("--concurrency", type=int, default=4, help="slots per model")
    parser.add_argument("--rounds", type=int, default=5, help="planned rounds")
    parser.add_argument("--scale", type=float, default=2.0, help="multiply every latency")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-flight", type=int, default=None, help="gra.max_in_flight")
    parser.add_argument("--verbose", action="store_true", help="print every round")
    parser.add_argument("--out", default=None, help="output folder (default: a temp dir)")
    args = parser.parse_args()
    latency = {stage: value * args.scale for stage, value in LATENCY.items()}

    parent, child = mp.Pipe()
    process = mp.get_context("fork").Process(target=_serve, args=(latency, child), daemon=True)
    process.start()
    url = parent.recv()
    config = pool_config(
        url,
        MODELS,
        concurrency=args.concurrency,
        gra={"rounds": args.rounds} | ({"max_in_flight": args.in_flight} if args.in_flight else {}),
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        start, cpu_start = time.perf_counter(), time.process_time()
        settings = GraSettings.from_config(config).with_overrides(
            target=args.target, seed=args.seed
        )
        result = anyio.run(lambda: run_gra(config, out, settings=settings))
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    parent.send("stop")
    calls: dict[tuple[str, str], int] = parent.recv()
    process.join()

    slots = len(MODELS) * args.concurrency
    model_time = sum(n * latency[stage] for (stage, _), n in calls.items())
    busiest = max(
        sum(n * latency[stage] for (stage, m), n in calls.items() if m == model) for model in MODELS
    )
    bound = model_time / slots
    per_model_bound = busiest / args.concurrency
    report = result.report
    requests = sum(calls.values())
    print(
        f"GRA pipeline: {result.accepted:,} accepted of {result.candidates:,} candidates in "
        f"{result.rounds} rounds; {requests:,} requests; rejected "
        + ", ".join(f"{k} {v}" for k, v in report["rejected"].items() if v)
        + f"; adjudicated {report['adjudication']['disputed']}"
    )
    print(
        f"pool: {len(MODELS)} models x {args.concurrency} slots; latency per role (ms): "
        + ", ".join(f"{k} {v * 1000:.0f}" for k, v in latency.items())
    )
    if args.verbose:
        for r in report["rounds"]:
            print(f"  round {r['round']}: {r['candidates']} candidates, {r['wall_s']:.2f} s")
    print(f"client CPU          {cpu:8.2f} s ({1000 * cpu / requests:.2f} ms per request)")
    print(f"model time          {model_time:8.2f} s")
    print(f"bound (total/slots) {bound:8.2f} s")
    print(f"bound (busiest)     {per_model_bound:8.2f} s")
    ratio = wall / bound
    verdict = "OK" if ratio <= TARGET else "ABOVE TARGET"
    print(f"wall                {wall:8.2f} s   ratio {ratio:.3f} (target <= {TARGET}) {verdict}")


if __name__ == "__main__":
    main()
