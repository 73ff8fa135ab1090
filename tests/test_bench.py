"""Benchmark metrics on synthetic timings (vLLM's definitions), and the driver on a stand-in."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from net_fixtures import StandInHTTP, stand_in_http  # noqa: F401

from hpcserve.net.bench import (
    RequestOutput,
    compute_metrics,
    file_prompts,
    format_report,
    percentile,
    random_prompts,
    run_load,
)


def out(
    start: float, ttft: float, itl: list[float], tokens: int | None, prompt: int = 10
) -> RequestOutput:
    return RequestOutput(
        success=True, prompt_len=prompt, output_tokens=tokens, ttft=ttft, itl=itl,
        latency=ttft + sum(itl), start_time=start,
    )  # fmt: skip


def test_metrics_follow_vllm_definitions() -> None:
    a = out(0.0, 0.1, [0.02, 0.02, 0.02, 0.02], 5)  # latency 0.18
    b = out(0.5, 0.3, [0.05, 0.05], 3, prompt=20)  # latency 0.4
    c = out(0.0, 0.2, [], 1)  # one token: no TPOT
    failed = RequestOutput(success=False, error="boom")
    m = compute_metrics([a, b, c, failed], duration=2.0)
    assert (m.completed, m.failed) == (3, 1)
    assert (m.total_input_tokens, m.total_output_tokens) == (40, 9)
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx(4.5)
    assert m.total_token_throughput == pytest.approx(24.5)
    s = m.stats_ms
    assert s["mean_ttft_ms"] == pytest.approx(200.0)
    assert s["median_ttft_ms"] == pytest.approx(200.0)
    # TPOT excludes the first token: (latency - ttft) / (tokens - 1), only when tokens > 1
    assert s["mean_tpot_ms"] == pytest.approx((20.0 + 50.0) / 2)
    # ITL pools every gap of every request
    assert s["mean_itl_ms"] == pytest.approx((4 * 20 + 2 * 50) / 6)
    assert s["median_itl_ms"] == pytest.approx(20.0)
    assert s["p99_itl_ms"] == pytest.approx(percentile([0.02] * 4 + [0.05] * 2, 99) * 1000)
    assert s["mean_e2el_ms"] == pytest.approx((180 + 400 + 200) / 3)


def test_tokens_from_usage_not_chunks() -> None:
    # 3 chunks but the server's usage says 7 tokens (several tokens per chunk)
    m = compute_metrics([out(0.0, 0.1, [0.1, 0.1], 7)], duration=1.0)
    assert m.total_output_tokens == 7
    assert m.stats_ms["mean_tpot_ms"] == pytest.approx(200.0 / 6)
    # without usage: one token per chunk
    assert compute_metrics([out(0.0, 0.1, [0.1, 0.1], None)], 1.0).total_output_tokens == 3


def test_percentile_matches_numpy_linear() -> None:
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 99) == pytest.approx(4.96)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 5.0
    assert percentile([], 99) == 0.0
    np = pytest.importorskip("numpy")
    ys = [0.013, 0.2, 0.7, 0.05, 1.3, 0.9, 0.11]
    for p in (1, 25, 50, 90, 99):
        assert percentile(ys, p) == pytest.approx(float(np.percentile(ys, p)))


def test_peaks() -> None:
    a = out(0.0, 0.5, [0.1, 0.1, 0.6], 4)  # tokens at 0.5, 0.6, 0.7, 1.3
    b = out(0.2, 0.2, [0.1], 2)  # tokens at 0.4, 0.5
    m = compute_metrics([a, b], 2.0)
    assert m.max_output_tokens_per_s == 5.0
    assert m.max_concurrent_requests == 2


def test_all_failed() -> None:
    m = compute_metrics([RequestOutput(error="x")], 1.0)
    assert m.completed == 0 and m.failed == 1 and m.stats_ms["mean_ttft_ms"] == 0.0


def test_report_uses_vllm_names() -> None:
    m = compute_metrics([out(0.0, 0.1, [0.02], 2)], 1.0, max_concurrency=4)
    text = format_report(m)
    for label in (
        "Successful requests:", "Failed requests:", "Maximum request concurrency:",
        "Request throughput (req/s):", "Output token throughput (tok/s):",
        "Total token throughput (tok/s):", "Mean TTFT (ms):", "Median TTFT (ms):",
        "P99 TTFT (ms):", "Mean TPOT (ms):", "Median TPOT (ms):", "P99 TPOT (ms):",
        "Mean ITL (ms):", "Median ITL (ms):", "P99 ITL (ms):",
    ):  # fmt: skip
        assert label in text, label
    d = m.to_dict()
    for key in (
        "completed",
        "failed",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "mean_ttft_ms",
        "p99_tpot_ms",
        "median_itl_ms",
    ):
        assert key in d
    assert d["request_rate"] is None


def test_prompts(tmp_path: Path) -> None:
    ps = random_prompts(3, 12, 7, seed=1)
    assert len(ps) == 3 and all(len(p.text.split()) == 12 and p.output_len == 7 for p in ps)
    assert random_prompts(3, 12, 7, seed=1) == ps
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "one two"}\nplain line here\n\n')
    fp = file_prompts(str(f), 3, 5)
    assert [p.text for p in fp] == ["one two", "plain line here", "one two"]


def test_driver_against_stand_in(stand_in_http: StandInHTTP) -> None:  # noqa: F811
    prompts = random_prompts(6, 5, 4)
    outs, dur = run_load(
        stand_in_http.url, prompts, model="stand-in", concurrency=3, progress=False
    )
    assert dur > 0 and all(o.success for o in outs), [o.error for o in outs]
    assert all(o.output_tokens == 4 and o.prompt_len == 5 and len(o.itl) == 3 for o in outs)
    m = compute_metrics(outs, dur, max_concurrency=3)
    assert m.completed == 6 and m.total_output_tokens == 24


def test_driver_poisson_rate(stand_in_http: StandInHTTP) -> None:  # noqa: F811
    outs, _ = run_load(
        stand_in_http.url,
        random_prompts(4, 3, 4),
        model="stand-in",
        request_rate=50.0,
        progress=False,
    )
    assert sum(o.success for o in outs) == 4
    starts = [o.start_time for o in outs]
    assert starts == sorted(starts)
    assert not math.isinf(compute_metrics(outs, 1.0, request_rate=50.0).request_rate)


def test_sse_payload() -> None:
    from hpcserve.net.bench import _sse_payload

    assert _sse_payload(b"") is None
    assert _sse_payload(b": keep-alive") is None
    assert _sse_payload(b"data: [DONE]") is None
    assert _sse_payload(b'data: {"a": 1}') == b'{"a": 1}'
    assert _sse_payload(b'data:{"a": 1}') == b'{"a": 1}'


class FakeResponse:
    def __init__(self, status: int, lines: list[bytes], text: str = "") -> None:
        self.status_code, self.lines, self.text = status, lines, text

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def iter_lines(self, chunk_size: int | None = None) -> list[bytes]:
        return self.lines


class FakeSession:
    def __init__(self, resp: FakeResponse | Exception) -> None:
        self.resp = resp
        self.bodies: list[dict[str, object]] = []

    def post(self, url: str, json: dict[str, object], **kw: object) -> FakeResponse:
        self.bodies.append(json)
        if isinstance(self.resp, Exception):
            raise self.resp
        return self.resp


def send(session: FakeSession, ignore_eos: bool = True) -> RequestOutput:
    from hpcserve.net.bench import Prompt, _send

    return _send(
        session, "http://h/v1/chat/completions", {}, "m", Prompt("a b", 2, 3), ignore_eos, 5
    )


def test_send_times_chunks_and_takes_usage() -> None:
    lines = [
        b": ping",
        b'data: {"choices": [{"delta": {"content": "x"}}]}',
        b"",
        b'data: {"choices": [{"delta": {}}]}',
        b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}',
        b"data: [DONE]",
    ]
    s = FakeSession(FakeResponse(200, lines))
    o = send(s)
    assert o.success and o.error == ""
    assert (o.prompt_len, o.output_tokens, o.generated_text, len(o.itl)) == (9, 2, "x", 1)
    assert o.latency >= o.ttft >= 0
    body = s.bodies[0]
    assert body["max_completion_tokens"] == 3 and body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True}
    send(s, ignore_eos=False)
    assert "ignore_eos" not in s.bodies[1]


def test_send_failures_are_failed_requests() -> None:
    o = send(FakeSession(FakeResponse(400, [], "too long")))
    assert not o.success and o.error == "HTTP 400: too long"
    o = send(FakeSession(FakeResponse(200, [b"data: [DONE]"])))
    assert not o.success and o.error == "no chunk with a token arrived"
    o = send(FakeSession(ConnectionError("refused")))
    assert not o.success and o.error == "ConnectionError: refused"
    o = send(FakeSession(FakeResponse(200, [b"data: {not json"])))
    assert not o.success and o.error.startswith("JSONDecodeError")


def test_spec_needs_a_positive_rate() -> None:
    from hpcserve.errors import UsageError
    from hpcserve.net.bench import BenchSpec

    with pytest.raises(UsageError, match="--request-rate must be positive"):
        BenchSpec(request_rate=0)


def test_prepare_runs_and_json(stand_in_http: StandInHTTP, tmp_path: Path) -> None:  # noqa: F811
    import json

    from hpcserve.net.api import Client
    from hpcserve.net.bench import BenchSpec, prepare, results_json, runs

    c = Client(stand_in_http.url)
    spec = BenchSpec(concurrencies=(1, 2), num_prompts=3, input_len=5, output_len=4)
    plan = prepare(c, spec)
    assert plan.model == "stand-in" and plan.tokenized is False  # the stand-in has no /tokenize
    assert [len(p.text.split()) for p in plan.prompts] == [5, 5, 5]
    done = list(runs(c, plan, spec))
    assert [r.metrics.max_concurrency for r in done] == [1, 2]
    assert all(r.errors == [] and r.metrics.completed == 3 for r in done)
    data = json.loads(results_json([r.metrics for r in done]))
    assert [d["max_concurrency"] for d in data] == [1, 2]
    assert json.loads(results_json([done[0].metrics]))["completed"] == 3
    f = tmp_path / "p.txt"
    f.write_text(" ".join(["w"] * 100) + "\n")  # too long for the stand-in
    spec = BenchSpec(num_prompts=2, prompts_file=str(f), concurrencies=())
    plan = prepare(c, spec)
    assert plan.tokenized is None and len(plan.prompts) == 2
    (run,) = runs(c, plan, spec)
    assert run.metrics.max_concurrency == 1 and run.metrics.failed == 2
    assert run.errors[0].startswith("HTTP 400")


def test_prepare_sizes_prompts_with_the_servers_tokenizer() -> None:
    from hpcserve.net.api import Client
    from hpcserve.net.bench import BenchSpec, prepare, tokens_per_word

    http = StandInHTTP(tokenize=True)
    try:
        assert tokens_per_word(http.url + "/v1", "stand-in") == 2.0
        plan = prepare(Client(http.url), BenchSpec(num_prompts=2, input_len=10, output_len=4))
    finally:
        http.close()
    assert plan.tokenized is True
    assert [(len(p.text.split()), p.input_len) for p in plan.prompts] == [(5, 10), (5, 10)]


class RecordingSend:
    """A stand-in for ``_send``: records which thread sent each prompt, and how many of the
    driver's senders were already parked when the first request went out."""

    def __init__(self, hold: int = 0) -> None:
        import threading

        self.lock = threading.Lock()
        self.threads: dict[int, threading.Thread] = {}  # held, so no id is reused
        self.first_wave = threading.Barrier(hold) if hold else None

    def __call__(self, session: object, url: str, headers: object, model: str, p: object,
                 ignore_eos: bool, timeout: float) -> RequestOutput:  # fmt: skip
        import threading

        with self.lock:
            i = len(self.threads)
            self.threads[i] = threading.current_thread()
        if self.first_wave is not None and i < self.first_wave.parties:
            self.first_wave.wait(timeout=10)  # the whole first wave is in flight at once
        return out(0.0, 0.01, [0.01], 2)


def test_driver_reuses_its_senders_instead_of_a_thread_per_request() -> None:
    # vLLM's client keeps ``concurrency`` requests in flight from one event loop: when one ends
    # the next is sent at once. Starting a new thread per request after a slot frees puts thread
    # start-up between the two, spreading each wave of a burst (and lowering its TTFT).
    rec = RecordingSend()
    outs, _ = run_load("http://h", random_prompts(12, 3, 2), model="m", concurrency=3,
                       progress=False, send=rec)  # fmt: skip
    assert len(outs) == 12 and all(o.success for o in outs)
    assert len({id(t) for t in rec.threads.values()}) <= 3


def test_driver_sends_the_first_wave_as_one_burst() -> None:
    # all senders are started before the clock, so the first ``concurrency`` requests leave
    # together, as ``vllm bench serve --request-rate inf`` sends them
    import threading

    before = {t.ident for t in threading.enumerate()}
    seen: list[int] = []

    class Count(RecordingSend):
        def __call__(self, *a: object, **kw: object) -> RequestOutput:
            if not seen:
                alive = [t for t in threading.enumerate() if t.ident not in before]
                seen.append(len(alive))
            return super().__call__(*a, **kw)  # type: ignore[arg-type]

    rec = Count(hold=4)
    outs, _ = run_load("http://h", random_prompts(8, 3, 2), model="m", concurrency=4,
                       progress=False, send=rec)  # fmt: skip
    assert all(o.success for o in outs)
    assert seen == [4]  # every sender existed when the first request was sent


def test_driver_without_a_cap_sends_every_prompt_at_once() -> None:
    rec = RecordingSend(hold=5)  # would time out unless all 5 are in flight together
    outs, _ = run_load("http://h", random_prompts(5, 3, 2), model="m", progress=False, send=rec)
    assert all(o.success for o in outs) and len({id(t) for t in rec.threads.values()}) == 5


def test_driver_counts_a_sender_crash_as_a_failed_request() -> None:
    calls: list[int] = []

    def boom(*a: object, **kw: object) -> RequestOutput:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("broken sender")
        return out(0.0, 0.01, [0.01], 2)

    outs, _ = run_load("http://h", random_prompts(4, 3, 2), model="m", concurrency=1,
                       progress=False, send=boom)  # fmt: skip
    assert [o.success for o in outs].count(False) == 1 and len(calls) == 4
    assert "broken sender" in next(o.error for o in outs if not o.success)


def test_driver_with_no_prompts_returns() -> None:
    outs, dur = run_load("http://h", [], model="m", concurrency=4, progress=False,
                         send=RecordingSend())  # fmt: skip
    assert outs == [] and dur >= 0


def test_each_concurrency_level_sends_its_own_prompts(
    stand_in_http: StandInHTTP,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the same prompts at every level would be answered from vLLM's prefix cache at the later
    # ones (the H200 run of BENCHMARKS 9: hit rate 0.3% -> 35% across c=1/16/64)
    from hpcserve.net import bench
    from hpcserve.net.api import Client

    sent: list[list[str]] = []

    def recording_load(base_url: str, prompts: list[bench.Prompt], **kw: object) -> tuple:
        sent.append([p.text for p in prompts])
        return [out(0.0, 0.01, [0.01], 2) for _ in prompts], 1.0

    c = Client(stand_in_http.url)
    spec = bench.BenchSpec(concurrencies=(1, 4, 8), num_prompts=4, input_len=6, output_len=2)
    plan = bench.prepare(c, spec)
    monkeypatch.setattr(bench, "run_load", recording_load)
    list(bench.runs(c, plan, spec))
    again = bench.prepare(c, spec)
    assert len(sent) == 3 and sent[0] == [p.text for p in plan.prompts]
    assert not set(sent[0]) & set(sent[1]) and not set(sent[1]) & set(sent[2])
    assert [p.text for p in again.at_level(spec, 2)] == sent[2]  # same seed, same workload
    other = bench.BenchSpec(concurrencies=(1, 4), num_prompts=4, input_len=6, output_len=2, seed=7)
    assert [p.text for p in bench.prepare(c, other).prompts] != sent[0]


def test_a_prompts_file_is_sent_whole_at_every_level(tmp_path: Path) -> None:
    from hpcserve.net.bench import BenchPlan, BenchSpec, file_prompts

    f = tmp_path / "p.txt"
    f.write_text("one two\nthree four\n")
    spec = BenchSpec(concurrencies=(1, 2), num_prompts=2, prompts_file=str(f))
    plan = BenchPlan("m", file_prompts(str(f), 2, 4))
    assert plan.at_level(spec, 1) == plan.at_level(spec, 0) == plan.prompts
