"""hpcserve doctor: each check's pass, fail (with its fix) and skip, the order and the stop
rule, the whole run against a fake cluster, and the command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import apptainer_site, venv_site
from doctorfakes import FakeCluster
from fakes import result

from hpcserve.doctor import local, login
from hpcserve.doctor.checks import Check, Step, failed, passed, run_steps, skipped
from hpcserve.doctor.run import doctor
from hpcserve.errors import RemoteError
from hpcserve.sites.schema import Container, LoginHost, Scheduler, Site

LAB_LIKE = venv_site(
    name="lab-like",
    scheduler=Scheduler(partition="lab", gpus_directive="none", exclusive=False, submit="local"),
    container=Container(runtime="none", gpu_flag="", venv="/opt/vllm-venv"),
    modules=["Python/3.12"],
)


def run(site: Site = LAB_LIKE, cluster: FakeCluster | None = None, **kw: object):
    c = cluster or FakeCluster()
    report = doctor(
        site,
        connect=lambda _s: c.ex,
        probe_options={"sleep": lambda _s: None, "poll_s": 0},
        **kw,  # type: ignore[arg-type]
    )
    return report, c


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


# -- the order and the stop rule ---------------------------------------------------------------
def test_a_failed_check_skips_what_needs_it_naming_it_and_the_rest_runs() -> None:
    ran: list[str] = []

    def step(name: str, check: Check, *needs: str) -> Step:
        return Step(name, lambda: ran.append(name) or check, needs)

    checks = run_steps(
        [
            step("a", passed("a", "ok")),
            step("b", failed("b", "broken", "mend it"), "a"),
            step("c", passed("c", "ok"), "b"),
            step("d", passed("d", "ok"), "c"),
            step("e", passed("e", "ok"), "a"),
        ]
    )
    assert ran == ["a", "b", "e"]
    assert [(c.name, c.status) for c in checks] == [
        ("a", "pass"), ("b", "fail"), ("c", "skip"), ("d", "skip"), ("e", "pass"),
    ]  # fmt: skip
    assert checks[2].detail == "b failed" and checks[2].blocked
    assert checks[3].detail == "c was skipped" and checks[3].blocked


def test_a_skip_that_is_not_a_failure_does_not_stop_what_follows() -> None:
    checks = run_steps(
        [
            Step("a", lambda: skipped("a", "nothing to do")),
            Step("b", lambda: passed("b", "ok"), ("a",)),
        ]
    )
    assert [c.status for c in checks] == ["skip", "pass"]


def test_each_check_is_shown_as_soon_as_it_is_known() -> None:
    seen: list[str] = []
    run_steps([Step("a", lambda: passed("a", "ok"))], seen.append)  # type: ignore[arg-type]
    assert seen and seen[0].name == "a"  # type: ignore[attr-defined]


# -- step 1: here ------------------------------------------------------------------------------
def test_site_check_unknown_site(known_site) -> None:
    known_site(LAB_LIKE)
    site, check = local.site_check("lab-likee")
    assert site is None and check.failed
    assert "did you mean 'lab-like'" in check.detail and "sites list" in (check.fix or "")


def test_site_check_broken_file_names_the_line(known_site, tmp_path: Path) -> None:
    known_site(LAB_LIKE)
    (tmp_path / "sites" / "lab-like.yaml").write_text("name: lab-like\nnode: {gpus: zero}\n")
    site, check = local.site_check("lab-like")
    assert site is None and check.failed
    assert "node.gpus" in check.detail and "sites validate" in (check.fix or "")


def test_site_check_passes_with_the_file(known_site) -> None:
    known_site(LAB_LIKE)
    site, check = local.site_check("lab-like")
    assert site is not None and check.status == "pass" and "lab-like.yaml" in check.detail


def test_values_check_names_what_is_missing_and_how_to_set_it() -> None:
    site = dataclasses.replace(LAB_LIKE, must_set={"scheduler.account": "your project"})
    check = local.values_check(site)
    assert check.failed and check.detail == "scheduler.account not set"
    assert "--account" in (check.fix or "")
    assert local.values_check(LAB_LIKE).status == "pass"


def _remote(tmp_path: Path, known: str = "") -> Site:
    kh = tmp_path / "known_hosts"
    kh.write_text(known)
    login_host = LoginHost(host="login.example.org", port=8822, user="u", known_hosts=str(kh))
    return dataclasses.replace(
        LAB_LIKE,
        login=[login_host],
        scheduler=dataclasses.replace(LAB_LIKE.scheduler, submit="ssh"),
    )


def test_host_key_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import paramiko

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HPCSERVE_KNOWN_HOSTS", raising=False)
    assert local.host_key_check(LAB_LIKE).status == "skip"  # sbatch runs here

    unknown = local.host_key_check(_remote(tmp_path))
    assert unknown.failed and "[login.example.org]:8822" in unknown.detail
    assert "ssh-keyscan -p 8822 login.example.org" in (unknown.fix or "")

    key = paramiko.RSAKey.generate(1024)
    line = f"[login.example.org]:8822 {key.get_name()} {key.get_base64()}\n"
    known = local.host_key_check(_remote(tmp_path, line))
    assert known.status == "pass" and "[login.example.org]:8822" in known.detail


# -- step 2: the login node --------------------------------------------------------------------
def test_login_check_fails_with_the_connection_error() -> None:
    c = FakeCluster()

    def refuse(argv: list[str]):
        raise RemoteError("cannot reach login.example.org:8822: Connection refused")

    c.ex.responders.insert(0, refuse)
    check = login.login_check(c.ex)
    assert check.failed and "Connection refused" in check.detail and "ssh -p" in (check.fix or "")
    assert login.login_check(FakeCluster().ex).status == "pass"


def test_scheduler_check_names_the_missing_commands() -> None:
    c = FakeCluster()
    c.missing_commands = "sbatch\nscancel\n"
    check = login.scheduler_check(c.ex)
    assert check.failed and check.detail.startswith("sbatch, scancel not found on PATH")
    assert login.scheduler_check(FakeCluster().ex).status == "pass"


@pytest.mark.parametrize(
    ("error", "fix_word"),
    [
        ("Invalid account or account/partition combination specified", "sacctmgr"),
        ("invalid partition specified: nope", "sinfo -s"),
        ("Invalid qos specification", "scheduler.qos"),
        ("Requested time limit is invalid (missing or exceeds some limit)", "scheduler.time"),
        ("Requested node configuration is not available", "node.gpus"),
    ],
)
def test_test_only_refusal_names_the_fix(error: str, fix_word: str) -> None:
    c = FakeCluster()
    c.test_only = result(
        ["sbatch"], stderr=f"sbatch: error: Batch job submission failed: {error}", rc=1
    )
    check = login.test_only_check(c.ex, "#!/bin/bash\n")
    assert check.failed and error in check.detail and fix_word in (check.fix or "")


def test_test_only_sends_the_probe_launcher_on_stdin() -> None:
    report, c = run()
    check = by_name(report.checks)[login.TEST_ONLY]
    assert check.status == "pass" and "to start at" in check.detail
    i = c.ex.calls.index(["sbatch", "--test-only"])
    script = c.inputs[i] or ""
    assert "#SBATCH --nodes=2" in script and "#SBATCH --partition=lab" in script
    assert "node_probe.py" in script and "#SBATCH --time=00:05:00" in script


def test_modules_check() -> None:
    assert (
        login.modules_check(dataclasses.replace(LAB_LIKE, modules=[]), FakeCluster().ex).status
        == "skip"
    )
    c = FakeCluster()
    c.modules = result(
        ["bash"], stderr="Lmod has detected the following error:  The following module(s) are "
        "unknown: \"Nope/1\"", rc=1,
    )  # fmt: skip
    site = dataclasses.replace(LAB_LIKE, modules=["Nope/1", "two words"])
    check = login.modules_check(site, c.ex)
    assert check.failed and "Lmod has detected the following error" in check.detail
    assert "module spider" in (check.fix or "")
    script = c.ex.commands("bash")[-1][2]
    assert "module load Nope/1\nmodule load two words" in script  # the launcher's lines
    assert "/etc/profile.d/lmod.sh" in script and script.startswith("set -euo pipefail")
    assert login.modules_check(site, FakeCluster().ex).status == "pass"


def test_runtime_check_venv_missing_names_the_venv_and_the_fix() -> None:
    c = FakeCluster()
    c.runtime = result(["bash"], rc=3)
    check = login.runtime_check(LAB_LIKE, c.ex)
    assert check.failed and check.detail == "the venv /opt/vllm-venv does not exist"
    assert "--venv" in (check.fix or "")
    script = c.ex.commands("bash")[-1][2]
    assert "/opt/vllm-venv/bin/python3 -c" in script and "module load Python/3.12" in script


def test_runtime_check_reports_the_versions_and_a_mismatch() -> None:
    site = dataclasses.replace(
        LAB_LIKE, engine=dataclasses.replace(LAB_LIKE.engine, vllm_version="0.26.0")
    )
    check = login.runtime_check(site, FakeCluster().ex)
    assert check.status == "pass" and check.detail.startswith("vLLM 0.32.0, torch 2.5.1+cpu")
    assert "the site says 0.26.0" in check.detail
    c = FakeCluster()
    c.runtime = result(["bash"], '{"vllm": null, "torch": null}\n')
    assert login.runtime_check(site, c.ex).failed


def test_runtime_check_apptainer_image_missing() -> None:
    c = FakeCluster()
    c.runtime = result(["bash"], rc=6)
    check = login.runtime_check(apptainer_site(), c.ex)
    assert check.failed and "/project/vllm.sif does not exist" in check.detail
    script = c.ex.commands("bash")[-1][2]
    # the image's python, without the node-only flags (no GPU, binds or env file on a login node)
    assert "apptainer exec /project/vllm.sif python3 -c" in script
    assert "--nvccli" not in script


def test_hf_cache_check() -> None:
    no_cache = dataclasses.replace(
        LAB_LIKE, storage=dataclasses.replace(LAB_LIKE.storage, hf_cache=None)
    )
    assert login.hf_cache_check(no_cache, FakeCluster().ex, None).status == "skip"
    c = FakeCluster()
    c.hf = result(["bash"], rc=3)
    missing = login.hf_cache_check(LAB_LIKE, c.ex, None)
    assert missing.failed and "mkdir -p ~/hf-cache" in (missing.fix or "")
    offline = apptainer_site()
    model = login.hf_cache_check(offline, FakeCluster().ex, "Qwen/Qwen3-8B")
    assert model.failed and "hpcserve download Qwen/Qwen3-8B --site gpu-apptainer" in (
        model.fix or ""
    )
    c = FakeCluster()
    c.ex.files["/project/hf/hub/models--Qwen--Qwen3-8B"] = ""
    assert login.hf_cache_check(offline, c.ex, "Qwen/Qwen3-8B").status == "pass"


# -- whole runs --------------------------------------------------------------------------------
def test_a_working_site_passes_every_check_in_order() -> None:
    report, c = run()
    assert [(ch.name, ch.status) for ch in report.checks] == [
        ("site file", "pass"), ("must-have values", "pass"), ("login host key", "skip"),
        ("login node", "pass"), ("scheduler commands", "pass"), ("sbatch --test-only", "pass"),
        ("module lines", "pass"), ("vLLM runtime", "pass"), ("HF cache", "pass"),
        ("probe job", "pass"), ("nodes", "pass"), ("InfiniBand", "skip"),
        ("head interface", "pass"), ("node-local /tmp", "pass"),
        ("shared job directory", "pass"), ("TCP to the head", "pass"), ("collective", "pass"),
        ("NCCL transport", "skip"), ("all_reduce bandwidth", "pass"),
    ]  # fmt: skip
    assert report.exit_code == 0
    assert report.allocation is not None and report.allocation.nodelist == "node[1-2]"
    assert c.ex.commands("scancel") == []  # it ended by itself
    assert c.ex.closed


def test_a_failure_on_the_login_node_stops_the_probe_and_exits_1() -> None:
    c = FakeCluster()
    c.runtime = result(["bash"], rc=3)
    report, _ = run(cluster=c)
    checks = by_name(report.checks)
    assert checks["vLLM runtime"].failed
    assert (
        checks["probe job"].status == "skip" and checks["probe job"].detail == "vLLM runtime failed"
    )
    assert checks["collective"].blocked
    assert checks["HF cache"].status == "pass"  # does not need the runtime
    assert c.ex.commands("sbatch") == [["sbatch", "--test-only"]]  # no probe job submitted
    assert report.exit_code == 1


def test_ctrl_c_while_waiting_cancels_the_probe_job() -> None:
    c = FakeCluster()
    c.states = ["PENDING"]

    def interrupt(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    c.on_squeue = interrupt
    with pytest.raises(KeyboardInterrupt):
        run(cluster=c)
    assert c.ex.commands("scancel") == [["scancel", "77"]]
    assert c.ex.closed


# -- the command line --------------------------------------------------------------------------
def test_cli_prints_one_line_per_check_the_fix_and_exits_1(known_site, cli, monkeypatch) -> None:
    known_site(LAB_LIKE)
    c = FakeCluster()
    c.test_only = result(["sbatch"], stderr="sbatch: error: invalid partition specified: lab", rc=1)
    c.states = ["COMPLETED"]
    monkeypatch.setattr("hpcserve.doctor.run._executor_for", lambda _s: c.ex)
    code, out, _err = cli("doctor", "--site", "lab-like")
    assert code == 1
    lines = out.splitlines()
    fail = next(i for i, ln in enumerate(lines) if ln.startswith("FAIL"))
    assert "sbatch --test-only" in lines[fail] and "invalid partition specified" in lines[fail]
    assert "fix: set scheduler.partition" in lines[fail + 1]
    assert any(
        ln.startswith("skip  probe job") and "sbatch --test-only failed" in ln for ln in lines
    )
    assert "1 check(s) failed: sbatch --test-only" in lines[-1]


def test_cli_json(known_site, cli, monkeypatch) -> None:
    known_site(LAB_LIKE)
    c = FakeCluster()
    c.states = ["COMPLETED"]  # no poll to sleep through
    monkeypatch.setattr("hpcserve.doctor.run._executor_for", lambda _s: c.ex)
    code, out, _err = cli("doctor", "--site", "lab-like", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["ok"] is True and data["allocation"]["job_id"] == "77"
    assert [ch["status"] for ch in data["checks"]][:2] == ["pass", "pass"]


def test_cli_bad_nodes_is_a_usage_error(cli) -> None:
    code, _out, err = cli("doctor", "--site", "x", "--nodes", "0")
    assert code == 2 and "--nodes" in err
