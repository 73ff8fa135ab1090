"""The OpenAI-compatible client and the query/tunnel CLI against a stand-in HTTP server.

The same sentences against a real vLLM: tests/test_e2e.py::test_api_errors_read_as_sentences."""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import venv_site
from net_fixtures import StandInHTTP, stand_in_http  # noqa: F401

from hpcserve.jobs.registry import Registry
from hpcserve.net.api import ApiError, Client, StreamResult, context_limit, explain, image_url
from hpcserve.sites.schema import Site


@pytest.fixture
def keyed() -> StandInHTTP:
    s = StandInHTTP(api_key="sekret-key", max_context=8)
    yield s  # type: ignore[misc]
    s.close()


def test_stream_and_usage(stand_in_http: StandInHTTP) -> None:  # noqa: F811
    c = Client(stand_in_http.url)
    res = StreamResult()
    pieces = list(c.chat_stream([{"role": "user", "content": "hi there"}], res, max_tokens=5))
    assert pieces == ["Hello", " from", " the", " stand-in"]
    assert res.text == "Hello from the stand-in"
    assert res.usage == {"prompt_tokens": 2, "completion_tokens": 4}
    assert c.models() == ["stand-in"]


def test_wrong_api_key_is_a_sentence(keyed: StandInHTTP) -> None:
    with pytest.raises(ApiError) as ei:
        Client(keyed.url, api_key="wrong").models()
    assert ei.value.status == 401 and "refused the API key" in str(ei.value)
    assert Client(keyed.url, api_key="sekret-key").models() == ["stand-in"]


def test_context_too_long_names_the_limit(keyed: StandInHTTP) -> None:
    c = Client(keyed.url, api_key="sekret-key")
    with pytest.raises(ApiError) as ei:
        list(c.chat_stream([{"role": "user", "content": "a " * 20}], model="stand-in"))
    assert "context is 8 tokens" in str(ei.value) and "needs 20" in str(ei.value)


def test_connection_refused_is_a_sentence() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ApiError, match="tunnel is down"):
        Client(f"http://127.0.0.1:{port}").health()


def test_explain_messages() -> None:
    vllm_400 = (
        '{"error": {"message": "This model\'s maximum context length is 2048 tokens. However, '
        'your prompt contains at least 3000 input tokens, which exceeds this limit."}}'
    )
    assert context_limit(vllm_400) == 2048
    assert "2048 tokens" in explain(400, vllm_400, base_url="u")
    assert "not ready yet (job phase: loading)" in explain(503, "", base_url="u", phase="loading")
    assert "answered 500" in explain(500, '{"error": "boom"}', base_url="u")


def test_image_data_url(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n")
    url = image_url(str(png))
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == b"\x89PNG\r\n"
    assert image_url("https://example.org/a.jpg") == "https://example.org/a.jpg"
    from hpcserve.errors import UsageError

    with pytest.raises(UsageError):
        image_url(str(tmp_path / "missing.png"))


def test_query_cli_streams(stand_in_http: StandInHTTP, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    from hpcserve.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["query", "--url", stand_in_http.url, "hello"])
        raise SystemExit(0)
    assert ei.value.code in (0, None)
    assert "Hello from the stand-in" in capsys.readouterr().out


def test_query_cli_wrong_key_one_line(
    keyed: StandInHTTP, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hpcserve.cli import main

    kf = tmp_path / "key"
    kf.write_text("nope\n")
    with pytest.raises(SystemExit) as ei:
        main(["query", "--url", keyed.url, "--api-key-file", str(kf), "hello"])
    assert ei.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "401" in err[0]


def test_api_base_direct_when_reachable(stand_in_http: StandInHTTP) -> None:  # noqa: F811
    from hpcserve.jobs.record import JobRecord
    from hpcserve.net.endpoint import api_base

    rec = JobRecord(
        job_id="no-such-tunnel-1", site="x", model="m", nodes=1, tp=1, pp=1, job_dir="/tmp",
        submitted_at=0, remote=False, head_addr="127.0.0.1", api_port=stand_in_http.port,
    )  # fmt: skip
    with api_base(rec, site=None) as base:
        assert base == stand_in_http.url


def test_api_base_without_endpoint_is_a_sentence() -> None:
    from hpcserve.errors import HpcserveError
    from hpcserve.jobs.record import JobRecord
    from hpcserve.net.endpoint import api_base

    rec = JobRecord(
        job_id="j2", site="x", model="m", nodes=1, tp=1, pp=1, job_dir="/tmp", submitted_at=0,
        remote=False, extra={"phase": "PENDING"},
    )  # fmt: skip
    with (
        pytest.raises(HpcserveError, match="no API endpoint yet .phase: PENDING"),
        api_base(rec, site=None),
    ):
        pass


def test_query_job_uses_registry_endpoint_and_key(
    keyed: StandInHTTP,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    registry: Callable[[], Registry],
    known_site: Callable[[Site], Site],
) -> None:
    """JOB resolves through the job registry and its site, the head answers directly, and the
    job's 0600 key file is used."""
    from hpcserve.cli import main
    from hpcserve.jobs.record import JobRecord

    site = known_site(venv_site(name="query-site"))
    keyfile = tmp_path / "api_key"
    keyfile.write_text("sekret-key\n")
    keyfile.chmod(0o600)
    rec = JobRecord(
        job_id="4242", site=site.name, model="m", nodes=1, tp=1, pp=1, job_dir="/tmp",
        submitted_at=0, remote=False, name="myjob", head_addr="127.0.0.1", api_port=keyed.port,
        api_key_file=str(keyfile),
    )  # fmt: skip
    registry().add(rec)
    main(["query", "myjob", "hello"])
    assert "Hello from the stand-in" in capsys.readouterr().out
