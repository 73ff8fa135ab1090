"""``hpcserve nccl`` in-process: log files, directories, stdin, gzip, usage errors, and a job
reference read through the job's executor (this machine: the test site submits locally)."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cliutil import run_main
from conftest import venv_site
from fakes import FakeExecutor, result

from hpcserve.jobs.handle import Jobs
from hpcserve.jobs.record import JobRecord
from hpcserve.jobs.registry import Registry
from hpcserve.nccl import scan_paths
from hpcserve.sites.schema import Site

DATA = Path(__file__).parent / "data" / "nccl"
SOCKET_2NODE = DATA / "v2.19-vllm-socket-2node.log"
COLLNET = DATA / "v2.23-torchrun-collnet-sharp.log"
NCCL_0 = (
    "gpu1:11:11 [0] NCCL INFO comm 0x1 rank 0 nRanks 8 nNodes 2 localRanks 4 localRank 0\n"
    "gpu1:11:11 [0] NCCL INFO NET/IB : No device found.\n"
    "gpu1:11:11 [0] NCCL INFO Channel 00/0 : 3[3] -> 4[0] [send] via NET/Socket/0\n"
)


def nccl(capsys: pytest.CaptureFixture[str], *args: str, obj: object = None):
    return run_main(capsys, "nccl", *args, obj=obj)


def stdin_of(monkeypatch: pytest.MonkeyPatch, raw: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(raw))))


# -- files -------------------------------------------------------------------------------------
def test_human_output_of_a_degraded_two_node_log(capsys):
    code, out, err = nccl(capsys, str(SOCKET_2NODE))
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0] == "NCCL: degraded: 2 nodes over TCP sockets"
    assert "  NCCL version : 2.19.3+cuda12.3" in lines
    assert "  nodes / ranks: 2 / 8" in lines
    assert "  cross-node   : socket (GPUDirect RDMA: no, link: -)" in lines
    assert "  intra-node   : p2p" in lines
    assert "  per host (as NCCL names them):" in lines
    assert any(ln.startswith("    gpu-b02: 1 process(es), ranks [4]") for ln in lines)
    i = lines.index("  likely causes and fixes:")
    assert lines[i + 1].startswith("    - no InfiniBand device is visible to NCCL")
    assert lines[i + 2].startswith("      fix: make the HCA visible where NCCL runs")
    assert lines[i + 3].endswith("NCCL INFO NET/IB : No device found.")
    assert "  evidence:" in lines
    assert err == ""


def test_json_is_the_report_of_the_file(capsys):
    code, out, _ = nccl(capsys, "--json", str(SOCKET_2NODE))
    assert code == 1
    assert json.loads(out) == scan_paths([str(SOCKET_2NODE)]).to_dict()


def test_gdr_optional_changes_the_verdict_of_ib_without_gdr(capsys):
    log = str(DATA / "v2.20-cloudwatch-ib-nogdr-peermem.log")
    code, out, _ = nccl(capsys, "--json", log)
    assert code == 1 and json.loads(out)["verdict"] == "degraded"
    code, out, _ = nccl(capsys, "--json", "--gdr-optional", log)
    assert json.loads(out) == scan_paths([log], expect_gdr=False).to_dict()
    assert (code, json.loads(out)["verdict"]) == (0, "optimal")


def test_warnings_and_unknown_verdict_are_printed(capsys):
    code, out, _ = nccl(capsys, str(DATA / "h200x4-socket.log"))
    assert code == 1
    warnings = [ln for ln in out.splitlines() if ln.startswith("  warning: ")]
    assert len(warnings) == len(scan_paths([str(DATA / "h200x4-socket.log")]).warnings) == 2
    code, out, _ = nccl(capsys, str(DATA / "no-nccl.log"))
    assert code == 3
    assert out.splitlines()[0] == "NCCL: verdict unknown"
    assert "  NCCL version : not in the log" in out
    assert "  nodes / ranks: ? / ?" in out
    assert "  intra-node   : none seen" in out


def test_many_hosts_and_ranks_are_cut_short(tmp_path, capsys):
    hosts, per = 66, 17
    log = tmp_path / "many.log"
    log.write_text(
        "".join(
            f"host{h:02d}:{100 + k}:{100 + k} [{k}] NCCL INFO comm 0x1 rank {h * per + k} "
            f"nRanks {hosts * per} nNodes {hosts} localRanks {per} localRank {k}\n"
            for h in range(hosts)
            for k in range(per)
        )
        + "host00:100:100 [0] NCCL INFO Channel 00/0 : 0[0] -> 17[0] [send] via NET/IB/0/GDRDMA\n"
    )
    code, out, _ = nccl(capsys, str(log))
    assert code == 0
    lines = out.splitlines()
    shown = [ln for ln in lines if ln.startswith("    host")]
    assert len(shown) == 64
    assert shown[0] == (
        "    host00: 17 process(es), ranks [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15...], "
        "transports net:IB"
    )
    assert shown[1].endswith("], transports -")
    assert "    ... 2 more" in lines


def test_a_directory_is_every_file_under_it(tmp_path, capsys):
    (tmp_path / "logs" / "deeper").mkdir(parents=True)
    shutil.copy(SOCKET_2NODE, tmp_path / "logs" / "a.log")
    shutil.copy(COLLNET, tmp_path / "logs" / "deeper" / "b.log")
    code, out, _ = nccl(capsys, "--json", str(tmp_path / "logs"))
    want = scan_paths([str(SOCKET_2NODE), str(COLLNET)])
    assert code == want.exit_code
    assert json.loads(out) == want.to_dict()


def test_stdin_plain_and_gzipped(monkeypatch, capsys):
    raw = COLLNET.read_bytes()
    want = scan_paths([str(COLLNET)]).to_dict()
    for data in (raw, gzip.compress(raw)):
        stdin_of(monkeypatch, data)
        code, out, _ = nccl(capsys, "--json", "-")
        assert code == 0
        assert json.loads(out) == want


def test_stdin_beside_a_file(tmp_path, monkeypatch, capsys):
    stdin_of(monkeypatch, COLLNET.read_bytes())
    code, out, _ = nccl(capsys, "--json", str(SOCKET_2NODE), "-")
    assert code == 1
    assert json.loads(out) == scan_paths([str(SOCKET_2NODE), str(COLLNET)]).to_dict()


def test_a_gzipped_copy_reads_as_the_original(tmp_path, capsys):
    gz = tmp_path / "node-0.log.gz"
    gz.write_bytes(gzip.compress(SOCKET_2NODE.read_bytes()))
    code, out, _ = nccl(capsys, "--json", str(gz))
    assert code == 1
    assert json.loads(out) == scan_paths([str(SOCKET_2NODE)]).to_dict()


# -- usage errors ------------------------------------------------------------------------------
def test_no_source_is_a_usage_error(capsys):
    code, out, err = nccl(capsys)
    assert (code, out) == (2, "")
    assert err == "error: give a job, one or more log files, or '-' for stdin\n"


def test_stdin_twice_is_a_usage_error(capsys):
    code, _, err = nccl(capsys, "-", "-")
    assert code == 2
    assert err == "error: '-' (stdin) can be given once\n"


def test_a_job_reference_beside_a_file_is_a_usage_error(capsys):
    code, _, err = nccl(capsys, str(SOCKET_2NODE), "run1")
    assert code == 2
    assert err == "error: no such file: run1 (a job reference must be the only argument)\n"


def test_an_unreadable_file_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "cut.log.gz"
    bad.write_bytes(gzip.compress(SOCKET_2NODE.read_bytes())[:200])  # gzip cut short
    code, out, err = nccl(capsys, str(bad))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: cannot read {bad}: ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_missing_path_is_an_error_not_an_unknown_verdict(tmp_path, capsys):
    code, out, err = nccl(capsys, str(tmp_path / "no" / "such.log"))
    assert (code, out) == (2, "")
    assert err == f"error: no such file or directory: {tmp_path / 'no' / 'such.log'}\n"


def test_an_unlistable_directory_is_an_error_not_an_unknown_verdict(tmp_path, monkeypatch, capsys):
    import os

    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(SOCKET_2NODE, logs / "a.log")
    real_walk = os.walk

    def walk_denied(top, onerror=None, **kw):  # what os.walk does when scandir is refused
        if onerror is not None:
            onerror(PermissionError(13, "Permission denied", str(top)))
        return real_walk(tmp_path / "empty-on-purpose")

    monkeypatch.setattr(os, "walk", walk_denied)
    code, out, err = nccl(capsys, str(logs))
    assert (code, out) == (2, "")
    assert err == f"error: cannot read directory {logs}: Permission denied\n"


def test_an_unknown_job_reference_names_both_readings(registry, capsys):
    registry()
    code, _, err = nccl(capsys, "nope")
    assert code == 2
    assert err.startswith("error: no such file or job: nope (no job 'nope' in the registry")
    assert len(err.splitlines()) == 1


# -- a job reference ---------------------------------------------------------------------------
@pytest.fixture
def local_job(
    tmp_path: Path, registry: Callable[[], Registry], known_site: Callable[[Site], Site]
) -> Callable[[str], Path]:
    """Register job 4711 ("run1") on a site that submits on this machine, in ``job_dir``
    (relative to the test's home for a ``~`` path); the job directory's path."""
    site = known_site(venv_site(name="nccl-site"))

    def add(job_dir: str) -> Path:
        rec = JobRecord("4711", site.name, "m", 2, 4, 2, job_dir, 0.0, False, name="run1")
        registry().add(rec)
        return tmp_path / "home" / job_dir[2:] if job_dir.startswith("~/") else Path(job_dir)

    return add


def write_job_logs(jobdir: Path) -> None:
    (jobdir / "nccl").mkdir(parents=True)
    (jobdir / "nccl" / "node-0.gpu1.11.log").write_text(NCCL_0)
    (jobdir / "nccl" / "notes.txt").write_text(  # not an NCCL debug file: not read
        "gpu9:1:1 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[0] [send] via NET/IB/0/GDRDMA\n"
    )
    (jobdir / "node-1.log").write_text(
        "INFO vllm worker started\n"
        "gpu2:22:22 [0] NCCL INFO Channel 00/0 : 4[0] -> 5[1] via P2P/CUMEM\n"
    )


def test_job_reference_reads_nccl_and_node_logs(tmp_path, local_job, capsys):
    jobdir = local_job(str(tmp_path / "job dir 'quoted'"))
    write_job_logs(jobdir)
    code, out, err = nccl(capsys, "--json", "run1")
    assert code == 1, err
    d = json.loads(out)
    assert d["verdict"] == "degraded"
    assert d["cross_node"]["transport"] == "socket"
    assert d["intra_node"] == ["p2p"]  # from node-1.log
    assert not any("gpu9" in line for line in d["evidence"])  # notes.txt was not read


def test_job_reference_with_a_home_relative_job_dir(local_job, capsys):
    write_job_logs(local_job("~/jobs/4711"))
    code, out, err = nccl(capsys, "run1")
    assert code == 1, err
    assert out.splitlines()[0].startswith("NCCL: degraded")


def test_job_reference_without_logs_yet(tmp_path, local_job, capsys):
    jobdir = local_job(str(tmp_path / "empty-job"))
    jobdir.mkdir()
    code, out, err = nccl(capsys, "run1")
    assert (code, out) == (1, "")
    assert err == (
        f"error: job 4711: no NCCL or node logs yet in {jobdir} "
        "(has it started? were NCCL communicators created?)\n"
    )


def test_job_reference_on_a_broken_site_file_shows_its_problems(
    tmp_path, registry, known_site, capsys
):
    known_site(venv_site(name="ok"))  # makes $HPCSERVE_SITES
    sites = tmp_path / "sites"
    text = (sites / "ok.yaml").read_text().replace("name: ok\n", "name: broken\n", 1)
    (sites / "broken.yaml").write_text(text + "bogus_field: 1\n")
    rec = JobRecord("5", "broken", "m", 1, 1, 1, str(tmp_path), 0.0, False, name="b")
    registry().add(rec)
    code, out, err = nccl(capsys, "b")
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and "broken.yaml" in err and "bogus_field" in err
    assert "no such file or job" not in err


def test_job_reference_goes_through_the_context_s_jobs(tmp_path, monkeypatch, capsys):
    """The job's executor is the one the Jobs in click's context opens (here a fake that
    answers `find` and `printenv HOME`, as a remote login node would), and it is closed."""
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    Registry().add(JobRecord("9", "far", "m", 2, 4, 2, "~/jobs/9", 0.0, True, name="far1"))
    files = {
        "/home/u/jobs/9/nccl/node-0.gpu1.11.log": NCCL_0,
        "/home/u/jobs/9/node-0.log": "INFO starting\n",
    }

    def respond(argv: list[str]):
        if argv == ["printenv", "HOME"]:
            return result(argv, "/home/u\n")
        if argv[0] == "find":
            return result(argv, "".join(f"{p}\n" for p in files if p.startswith(argv[1] + "/")))
        return None

    ex = FakeExecutor(respond, files=files)
    jobs = Jobs(connect=lambda name: (venv_site(name=name), ex))
    code, out, err = nccl(capsys, "--json", "far1", obj=jobs)
    assert code == 1, err
    assert json.loads(out)["cross_node"]["transport"] == "socket"
    listed = [c[1] for c in ex.commands("find")]
    assert listed == ["/home/u/jobs/9/nccl", "/home/u/jobs/9"]
    assert ex.closed


# -- issue 12: logs that end at init, failed socket connections ---------------------------------
def test_human_output_of_a_log_that_ends_at_init(capsys):
    code, out, _ = nccl(capsys, str(DATA / "v2.19-init-roce-2host.log"))
    assert code == 3
    lines = out.splitlines()
    assert lines[0] == "NCCL: RoCE selected, not yet seen carrying traffic (2 nodes)"
    assert "  cross-node   : ib (GPUDirect RDMA: -, link: roce)" in lines
    assert (
        "  selected net : IB [mlx5_10:1/RoCE, mlx5_11:1/RoCE] (not yet seen carrying traffic)"
        in lines
    )
    code, out, _ = nccl(capsys, "--json", str(DATA / "v2.19-init-roce-2host.log"))
    d = json.loads(out)
    assert (d["verdict"], d["nodes"], d["selected_network"]["link"]) == ("selected", 2, "roce")


def test_human_output_of_a_failed_socket_connection(capsys):
    log = DATA / "v2.18-socket-connect-abort-net-socket.log"
    code, out, _ = nccl(capsys, str(log))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == (
        "NCCL: failed: socket connection to 10.0.0.2<45763>: Software caused connection abort"
    )
    assert lines.index("  failure      : Software caused connection abort (peer 10.0.0.2<45763>), "
                       "in the NET/Socket transport (data between nodes over TCP)") > 0  # fmt: skip
    i = lines.index("  likely causes and fixes:")
    assert "NCCL_SOCKET_IFNAME" in lines[i + 2]
    code, out, _ = nccl(capsys, "--json", str(log))
    assert json.loads(out)["failure"] == scan_paths([str(log)]).to_dict()["failure"]
