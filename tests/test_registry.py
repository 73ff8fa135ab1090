"""Registry: records, names, permissions, atomicity and concurrent writers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from hpcserve.errors import HpcserveError, UsageError
from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.registry import Registry, RegistryWarning, default_root


def rec(job_id: str, site: str = "local", name: str | None = None, at: float = 0.0) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        site=site,
        model="m",
        nodes=2,
        tp=1,
        pp=2,
        job_dir=f"/jobs/{job_id}",
        submitted_at=at or time.time(),
        remote=False,
        name=name,
    )


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_default_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "a"))
    assert default_root() == tmp_path / "a"
    monkeypatch.delenv("HPCSERVE_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x" / "hpcserve"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_root() == tmp_path / "h" / ".local" / "state" / "hpcserve"


def test_add_get_by_id_name_and_site(tmp_path):
    reg = Registry(tmp_path)
    reg.add(rec("101", name="qwen"))
    reg.add(rec("102"))
    assert reg.get("101").name == "qwen"
    assert reg.get("qwen").job_id == "101"
    assert reg.get("local:102").job_id == "102"
    assert [r.job_id for r in reg.list()] == ["101", "102"]
    with pytest.raises(UsageError, match="no job 'nope'"):
        reg.get("nope")


def test_permissions_are_private(tmp_path):
    reg = Registry(tmp_path / "state")
    reg.add(rec("7"))
    path = tmp_path / "state" / "jobs" / "local" / "7.json"
    assert mode(path) == 0o600
    assert mode(tmp_path / "state") == 0o700
    assert mode(path.parent) == 0o700
    secret = reg.secret_path("7", "api_key")
    assert mode(secret) == 0o600
    assert mode(secret.parent) == 0o700
    assert secret.parent.parent.name == "local"


def test_names_are_unique_and_valid(tmp_path):
    reg = Registry(tmp_path)
    reg.add(rec("1", name="big"))
    with pytest.raises(UsageError, match="already used by job local:1"):
        reg.add(rec("2", name="big"))
    with pytest.raises(UsageError, match="not valid"):
        reg.add(rec("3", name="12"))  # would be confused with a job id
    with pytest.raises(UsageError, match="already in the registry"):
        reg.add(rec("1"))


def test_same_job_id_on_two_sites_is_ambiguous(tmp_path):
    reg = Registry(tmp_path)
    reg.add(rec("5", site="local"))
    reg.add(rec("5", site="meluxina"))
    with pytest.raises(UsageError, match="several sites"):
        reg.get("5")
    assert reg.get("meluxina:5").site == "meluxina"


def test_update_and_modify(tmp_path):
    reg = Registry(tmp_path)
    r = rec("9")
    reg.add(r)
    r.head_addr = "10.0.0.1"
    reg.update(r)
    assert reg.get("9").head_addr == "10.0.0.1"
    reg.modify("9", lambda x: setattr(x, "api_port", 8001))
    got = reg.get("9")
    assert (got.head_addr, got.api_port) == ("10.0.0.1", 8001)
    with pytest.raises(UsageError):
        reg.update(rec("10"))


def test_remove_forgets_record_and_secrets(tmp_path):
    reg = Registry(tmp_path)
    reg.add(rec("4", name="x"))
    secret = reg.secret_path("4", "api_key")
    secret.write_text("k")
    removed = reg.remove("x")
    assert removed.job_id == "4"
    assert reg.list() == []
    assert not secret.exists()


def test_prune_spares_recent_and_kept(tmp_path):
    reg = Registry(tmp_path)
    now = time.time()
    reg.add(rec("1", at=now - 10 * 86400))
    reg.add(rec("2", at=now - 10 * 86400))
    reg.add(rec("3", at=now - 60))
    gone = reg.prune(7 * 86400, keep=lambda r: r.job_id == "2")
    assert [r.job_id for r in gone] == ["1"]
    assert [r.job_id for r in reg.list()] == ["2", "3"]


def test_unreadable_record_is_skipped(tmp_path):
    reg = Registry(tmp_path)
    reg.add(rec("1"))
    (tmp_path / "jobs" / "local" / "2.json").write_text("{half")
    with pytest.warns(RegistryWarning):
        assert [r.job_id for r in reg.list()] == ["1"]


@pytest.mark.parametrize("damage", ["", "{half", '{"job_id": "2"}', "[1, 2]", "\udcff"])
def test_a_damaged_record_is_kept_aside_with_one_warning_and_the_others_stay(tmp_path, damage):
    reg = Registry(tmp_path)
    reg.add(rec("1", name="first"))
    reg.add(rec("3"))
    path = tmp_path / "jobs" / "local" / "2.json"
    path.write_bytes(damage.encode("utf-8", "surrogateescape"))
    with pytest.warns(RegistryWarning) as seen:
        assert [r.job_id for r in reg.list()] == ["1", "3"]
    (w,) = seen
    msg = str(w.message)
    assert "\n" not in msg and "local:2" in msg and str(path) in msg and "kept as" in msg
    (kept,) = reg.damaged("2")
    assert kept.read_bytes() == damage.encode("utf-8", "surrogateescape")  # nothing thrown away
    assert not path.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the next look is quiet
        assert [r.job_id for r in reg.list()] == ["1", "3"]
        assert reg.get("first").job_id == "1"
        with pytest.raises(HpcserveError, match=f"job 2 was unreadable and is kept as {kept}"):
            reg.get("2")
        reg.add(rec("4", name="next"))  # writers go on (the lock is taken once per process)
        reg.add_submitted(rec("2"))  # and the id can be recorded again
    assert [r.job_id for r in reg.list()] == ["1", "3", "4", "2"]


def test_a_record_damaged_while_a_writer_holds_the_lock_is_set_aside_without_deadlock(tmp_path):
    reg = Registry(tmp_path)
    reg.add(rec("1"))
    (tmp_path / "jobs" / "local" / "2.json").write_text("")
    with pytest.warns(RegistryWarning):
        reg.add(rec("5", name="named"))  # add -> check_free_name -> list, inside the lock
    assert [r.job_id for r in reg.list()] == ["1", "5"]


def test_no_temporary_files_left(tmp_path):
    reg = Registry(tmp_path)
    for i in range(5):
        reg.add(rec(str(i)))
    names = os.listdir(tmp_path / "jobs" / "local")
    assert sorted(names) == [f"{i}.json" for i in range(5)]
    assert json.loads((tmp_path / "jobs" / "local" / "3.json").read_text())["job_id"] == "3"


def test_bad_site_or_id_is_refused(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(UsageError):
        reg.add(rec("../x"))
    with pytest.raises(UsageError):
        reg.add(rec("1", site="a/b"))


_CHILD = """
import sys, time
from pathlib import Path
from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.registry import Registry
i = int(sys.argv[2])
reg = Registry(Path(sys.argv[1]))
reg.add(JobRecord(job_id=str(1000 + i), site="local", model="m", nodes=1, tp=1, pp=1,
                  job_dir="/j", submitted_at=time.time(), remote=False, name=f"job{i}"))
reg.modify(f"job{i}", lambda r: setattr(r, "api_port", 9000 + i))
"""


def test_twenty_parallel_submits_lose_nothing(tmp_path):
    root = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(root), str(i)], env=env)
        for i in range(20)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 20
    records = Registry(root).list()
    assert sorted(r.name or "" for r in records) == sorted(f"job{i}" for i in range(20))
    assert all(r.api_port == 9000 + int(r.job_id) - 1000 for r in records)


def test_parallel_same_name_only_one_wins(tmp_path):
    root = tmp_path / "state"
    child = _CHILD.replace('name=f"job{i}"', 'name="same"').replace(
        'reg.modify(f"job{i}"', "pass  # "
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", child, str(root), str(i)], env=env, stderr=subprocess.DEVNULL
        )
        for i in range(6)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes.count(0) == 1
    assert len(Registry(root).list()) == 1


# -- a job id the scheduler hands out again ---------------------------------------------------


def test_a_reissued_job_id_replaces_the_stale_record_and_its_secrets(tmp_path):
    reg = Registry(tmp_path)
    old = rec("1", name="old", at=time.time() - 3600)
    old.job_dir = "/jobs/old"
    reg.add(old)
    reg.secret_path("1", "api_key").write_text("old-key\n")
    reg.add(rec("2", name="other"))
    new = rec("1", name="new")
    new.job_dir = "/jobs/new"
    replaced = reg.add_submitted(new)
    assert replaced is not None and replaced.job_dir == "/jobs/old"
    assert reg.get("local:1").job_dir == "/jobs/new"
    assert reg.get("new").job_id == "1" and reg.find("old") is None
    assert reg.get("other").job_id == "2"
    assert reg.secret_path("1", "api_key").read_text() == ""  # the old job's key is gone
    assert reg.add_submitted(rec("3")) is None


def test_a_reissued_job_id_may_keep_the_stale_records_name(tmp_path):
    reg = Registry(tmp_path)
    reg.add(rec("1", name="demo", at=time.time() - 3600))
    reg.add_submitted(rec("1", name="demo"))
    assert [r.name for r in reg.list()] == ["demo"]


def test_a_new_job_never_takes_a_name_another_job_holds(tmp_path):
    reg = Registry(tmp_path)
    reg.add(rec("1", name="demo"))
    with pytest.raises(UsageError, match="already used by job local:1"):
        reg.add_submitted(rec("2", name="demo"))
    assert reg.find("local:2") is None


def test_submit_after_the_scheduler_reissued_an_id_records_the_new_job(
    cli, fake_path, registry, monkeypatch, tmp_path
):
    """A lab brought down and up without its state numbers jobs from 1 again: the job sbatch
    accepted is recorded, replacing the record of the gone job with the same id."""
    from conftest import site_to_yaml, venv_site

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FAKE_JOB_ID", "1")
    site = str(site_to_yaml(venv_site(), tmp_path / "cpu-venv.yaml"))
    argv = ("submit", "--site", site, "--nodes", "2", "--model", "org/m")
    code, _, err = cli(*argv, "--job-dir", str(home / "first"))
    assert code == 0, err
    code, out, err = cli(*argv, "--job-dir", str(home / "second"))
    assert code == 0, err
    assert out.strip() == "1"
    assert "replaced" in err and str(home / "first") in err
    got = registry().get("cpu-venv:1")
    assert got.job_dir == str(home / "second")
    key = (home / "second" / "secrets.env").read_text()
    assert Path(got.api_key_file).read_text().strip() in key
    assert len(registry().list()) == 1


def test_cli_list_and_status_of_a_damaged_record_are_one_line_each(registry, cli):
    reg = registry()
    reg.add(rec("1", name="kept"))
    (reg.jobs_dir / "local" / "2.json").write_text('{"job_id": "2", "si')
    code, out, err = cli("list")
    assert code == 0 and "kept" in out
    assert err.startswith("warning: the registry record of job local:2") and err.count("\n") == 1
    code, out, err = cli("status", "2")
    assert code == 1 and out == ""
    assert err.startswith("error: the registry record of job 2 was unreadable and is kept as ")
    assert err.count("\n") == 1
