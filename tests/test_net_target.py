"""Target resolution (a registered job or a bare --url), API key choice, --remote parsing."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from conftest import venv_site
from net_fixtures import StandInHTTP, stand_in_http  # noqa: F401

from hpcserve.errors import HpcserveError, UsageError
from hpcserve.jobs.record import JobRecord
from hpcserve.net import target
from hpcserve.net.target import Target, api_key_for, open_client, parse_remote, resolve


def record(**kw: object) -> JobRecord:
    base: dict[str, object] = dict(
        job_id="51", site="s", model="m", nodes=1, tp=1, pp=1, job_dir="/tmp", submitted_at=0,
        remote=False,
    )  # fmt: skip
    base.update(kw)
    return JobRecord(**base)  # type: ignore[arg-type]


def test_url_wins_and_loses_its_v1() -> None:
    t = resolve("ignored-job", "http://127.0.0.1:8000/v1/")
    assert (t.key, t.url, t.record, t.site) == ("url", "http://127.0.0.1:8000", None, None)
    assert t.phase is None


@pytest.mark.parametrize(
    ("job", "url", "message"),
    [
        (None, "127.0.0.1:8000", "--url must look like http://HOST:PORT"),
        (None, None, "name a job"),
        ("", None, "name a job"),
    ],
)
def test_bad_target_is_a_usage_error(job: str | None, url: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve(job, url)


def test_job_goes_through_the_registry_and_its_site(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = record(extra={"phase": "loading"})
    site = venv_site(name="s")
    asked: list[str] = []

    class Registry:
        def get(self, ref: str) -> JobRecord:
            asked.append(ref)
            return rec

    reg = types.ModuleType("hpcserve.jobs.registry")
    reg.Registry = Registry  # type: ignore[attr-defined]
    loader = types.ModuleType("hpcserve.sites.loader")
    loader.load_site = lambda name: site if name == "s" else None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hpcserve.jobs.registry", reg)
    monkeypatch.setitem(sys.modules, "hpcserve.sites.loader", loader)
    t = resolve("myjob", None)
    assert asked == ["myjob"]
    assert (t.key, t.record, t.site, t.url) == ("51", rec, site, None)
    assert t.phase == "loading"


def test_unknown_job_is_the_registrys_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="no job 'nope' in the registry"):
        resolve("nope", None)


def test_key_file_then_job_key_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "given"
    given.write_text("from-file\n")
    jobkey = tmp_path / "job"
    jobkey.write_text("from-job\n")
    monkeypatch.setenv("HPCSERVE_API_KEY", "from-env")
    job = Target(key="51", record=record(api_key_file=str(jobkey)))
    bare = Target(key="url", url="http://h:1")
    assert api_key_for(job, str(given)) == "from-file"
    assert api_key_for(job, None) == "from-job"
    assert api_key_for(bare, None) == "from-env"
    assert api_key_for(Target(key="51", record=record()), None) is None  # the job has no key
    monkeypatch.delenv("HPCSERVE_API_KEY")
    assert api_key_for(bare, None) is None
    (tmp_path / "empty").write_text("\n")
    assert api_key_for(bare, str(tmp_path / "empty")) is None


def test_unreadable_key_file_is_one_usage_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read --api-key-file .*missing: No such file"):
        api_key_for(Target(key="url"), str(tmp_path / "missing"))


def test_missing_job_key_file_is_an_error(tmp_path: Path) -> None:
    t = Target(key="51", record=record(api_key_file=str(tmp_path / "gone")))
    with pytest.raises(HpcserveError, match="cannot read the job's API key file"):
        api_key_for(t, None)


def test_open_client_on_url_and_on_job(
    stand_in_http: StandInHTTP,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("HPCSERVE_API_KEY", "k1")
    with open_client(resolve(None, stand_in_http.url + "/v1"), None) as c:
        assert (c.base_url, c.api_key, c.phase) == (stand_in_http.url, "k1", None)
        assert c.models() == ["stand-in"]
    rec = record(
        job_id="no-tunnel-51", head_addr="127.0.0.1", api_port=stand_in_http.port,
        extra={"phase": "ready"},
    )  # fmt: skip
    with open_client(Target(key=rec.job_id, record=rec), None) as c:
        assert (c.base_url, c.api_key, c.phase) == (stand_in_http.url, None, "ready")


def test_lookup_job_is_the_one_registry_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    rec, site = record(job_id="9"), venv_site(name="s")
    monkeypatch.setattr(target, "lookup_job", lambda ref: (rec, site))
    t = target.job_target("anything")
    assert (t.key, t.record, t.site) == ("9", rec, site)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.5:8000", ("10.0.0.5", 8000)), ("[fe80::1]:9000", ("fe80::1", 9000))],
)
def test_parse_remote(text: str, expected: tuple[str, int]) -> None:
    assert parse_remote(text) == expected


@pytest.mark.parametrize("text", ["8000", ":8000", "host:", "host:http"])
def test_parse_remote_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--remote must be HOST:PORT"):
        parse_remote(text)
