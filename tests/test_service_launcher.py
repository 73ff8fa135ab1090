"""The launcher's monitor functions (--idle-stop, --keep-alive) run by bash, against the Python
rules they mirror (hpcserve/service/lead.py, metrics.py, chain.py, rules.py), with fake
squeue/sbatch/scancel/curl commands (named as such) on PATH. No SLURM is involved."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import venv_site

from hpcserve.launch.render import render
from hpcserve.launch.request import build_request
from hpcserve.rules import parse_slurm_time
from hpcserve.service import chain, lead, metrics
from hpcserve.service.chain import fold, parse_log

DATA = Path(__file__).parent / "data" / "vllm-metrics"

FAKE_BIN = {
    # squeue -h -j ID -o %L | %l: the time left / the limit the test wrote
    "squeue": '#!/bin/bash\ncase "$*" in\n  *%L*) cat "$FAKE/left" ;;\n'
    '  *%l*) cat "$FAKE/limit" ;;\nesac\n',
    "sbatch": '#!/bin/bash\necho "$PWD $*" >>"$FAKE/sbatch.calls"\n'
    'env | grep -c "^SLURM_JOB_ID=" >>"$FAKE/sbatch.env" || true\ncat "$FAKE/next_id"\n',
    "scancel": '#!/bin/bash\necho "$*" >>"$FAKE/scancel.calls"\n',
    # curl -fsS --max-time 5 URL: /health answers once "$FAKE/up" exists; /metrics from a file
    "curl": "#!/bin/bash\nurl=${!#}\ncase $url in\n  */health) [[ -e $FAKE/up ]] ;;\n"
    '  */metrics) [[ -e $FAKE/up ]] && cat "$FAKE/metrics" ;;\n  *) exit 22 ;;\nesac\n',
}


def launcher(tmp_path: Path, **options: object) -> str:
    site = venv_site()
    req = build_request(site, model="/models/tiny", name="svc", job_dir=str(tmp_path / "svc"),
                        **options)  # type: ignore[arg-type]  # fmt: skip
    return render(site, req)


def functions(script: str) -> str:
    """The launcher without its last lines (the dispatch on $1): only definitions."""
    return script[: script.index('case "${1:-}" in')]


class Bash:
    """Runs the launcher's functions in bash with the fake commands and a clock the test sets."""

    def __init__(self, tmp_path: Path, script: str) -> None:
        self.fake = tmp_path / "fake"
        self.fake.mkdir()
        bin_dir = tmp_path / "fake-bin"
        bin_dir.mkdir()
        for name, text in FAKE_BIN.items():
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        self.lib = tmp_path / "launcher-functions.sh"
        self.lib.write_text(
            functions(script)
            + 'date() { if [[ ${1:-} == +%s && -n ${NOW:-} ]]; then echo "$NOW"; '
            + 'else command date "$@"; fi; }\n'
        )
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "FAKE": str(self.fake),
            "SLURM_JOB_ID": "101",
            "HPCSERVE_API_PORT": "8012",
            "HPCSERVE_HEAD_ADDR": "10.0.0.11",
        }
        self.set(left="10:00", limit="10:00", next_id="102")

    def set(self, **files: str) -> None:
        for name, text in files.items():
            (self.fake / name).write_text(text + "\n")

    def run(self, body: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", f'source "{self.lib}"\n{body}'],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def out(self, body: str, **env: str) -> str:
        p = self.run(body, **env)
        assert p.returncode == 0, p.stderr
        return p.stdout


@pytest.fixture
def svc(tmp_path: Path) -> Bash:
    b = Bash(tmp_path, launcher(tmp_path, keep_alive=True, idle_stop="1m"))
    (tmp_path / "svc" / "jobs" / "101").mkdir(parents=True)
    return b


# -- what is rendered --------------------------------------------------------------------------
def test_a_plain_launcher_has_no_monitor(tmp_path: Path) -> None:
    script = launcher(tmp_path)
    assert "hpcserve_monitor" not in script and "hpcserve_idle_step" not in script


def test_idle_stop_alone_has_no_service_functions(tmp_path: Path) -> None:
    script = launcher(tmp_path, idle_stop="90s")
    assert "IDLE_STOP_S=90" in script and "hpcserve_monitor &" in script
    assert "hpcserve_service_step" not in script and "--requeue" not in script
    assert f"JOBDIR={tmp_path}/svc\n" in script


def test_a_service_gives_each_job_its_directory_and_asks_for_requeue(tmp_path: Path) -> None:
    script = launcher(tmp_path, keep_alive=True)
    svc_dir = tmp_path / "svc"
    assert f'JOBDIR={svc_dir}/jobs/"${{SLURM_JOB_ID}}"' in script
    assert f"SERVICE_DIR={svc_dir}\n" in script
    for line in ("--requeue", "--open-mode=append", f"--output={svc_dir}/slurm-%j.out"):
        assert f"#SBATCH {line}\n" in script
    assert "hpcserve_service_start || exit 0" in script
    assert "hpcserve_idle_step" not in script
    p = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
    assert p.returncode == 0, p.stderr


# -- the shell's rules against Python's --------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["4:31", "30", "0:09", "00:00:59", "1:00:00", "2-00", "1-02:03", "1-02:03:04"]
)
def test_slurm_seconds_as_parse_slurm_time(svc: Bash, text: str) -> None:
    assert int(svc.out(f"hpcserve_slurm_seconds {text}")) == parse_slurm_time(text)


@pytest.mark.parametrize("text", ["UNLIMITED", "INVALID", "NOT_SET", ""])
def test_slurm_seconds_of_no_time(svc: Bash, text: str) -> None:
    assert svc.run(f"hpcserve_slurm_seconds '{text}'").returncode == 1


LOGS = {
    "nothing measured": ["1000 service 101 name=svc", "1000 submitted 101 by=user"],
    "one": ["1000 submitted 101 by=user", "1061 ready 101 restart=0 addr=a port=1"],
    "ready before submitted": ["1061 ready 101 restart=0", "1000 submitted 101 by=user"],
    "many": [
        line
        for i, took in enumerate([500, 40, 44, 40, 40, 41])
        for line in (
            f"{1000 * (i + 1)} submitted {101 + i} by=x",
            f"{1000 * (i + 1) + took} ready {101 + i} restart=0",
            f"{1000 * (i + 1) + took + 9} ready {101 + i} restart=1",
        )
    ],
}


@pytest.mark.parametrize("name", sorted(LOGS))
@pytest.mark.parametrize("limit", [0, 180, 86400])
def test_lead_time_as_lead_time_s(svc: Bash, tmp_path: Path, name: str, limit: int) -> None:
    text = "\n".join(LOGS[name]) + "\n"
    (tmp_path / "svc" / chain.LOG).write_text(text)
    expected = lead.lead_time_s(fold(parse_log(text)).samples(), limit or None)
    assert int(svc.out(f"hpcserve_lead_time {limit}")) == expected


@pytest.mark.parametrize("name", ["idle.txt", "busy.txt", "done.txt", "two-engines.txt"])
def test_load_from_recorded_metrics_as_parse_load(svc: Bash, name: str) -> None:
    text = (DATA / name).read_text()
    svc.set(metrics=text, up="")
    load = metrics.parse_load(text)
    assert load is not None
    assert svc.out("hpcserve_load").split() == [
        str(load.running),
        str(load.waiting),
        str(load.served),
    ]


def test_recorded_metrics_read() -> None:
    read = {n: metrics.parse_load((DATA / n).read_text()) for n in ("busy.txt", "two-engines.txt")}
    assert read["busy.txt"] == metrics.Load(2, 1, 7)  # waiting_by_reason is not counted again
    assert read["two-engines.txt"] == metrics.Load(1, 0, 7)
    assert metrics.parse_load("# nothing\n") is None


def test_no_answer_is_no_load(svc: Bash) -> None:
    assert svc.out("hpcserve_load") == ""  # the fake server is not up


DRAIN = [  # (seconds since the handover, load or None = no answer)
    [(0, "1 0 5"), (5, "0 0 6"), (10, "0 0 6"), (15, "0 0 6")],
    [(0, "0 0 5"), (5, "0 0 5"), (10, "0 0 5")],
    [(0, "2 1 5"), (30, "1 0 6"), (61, "1 0 6")],
    [(0, None), (5, None), (11, None)],
    [(12, "0 1 3"), (17, "0 0 4"), (22, "0 0 4")],
]


@pytest.mark.parametrize("looks", DRAIN)
def test_drain_step_as_python(svc: Bash, looks: list[tuple[int, str | None]]) -> None:
    idle = 0
    for waited, text in looks:
        load = metrics.Load(*map(int, text.split())) if text else None
        step, idle_after = metrics.drain_step(
            load, waited, idle, switch_s=lead.SWITCH_S, grace_s=lead.DRAIN_GRACE_S
        )
        got = svc.out(f"hpcserve_drain_step {waited} {idle} '{text or ''}'").split()
        assert got == [str(int(step.done)), step.reason or "-", str(idle_after)], (waited, text)
        idle = idle_after
        if step.done:
            break


IDLE = [  # (clock, metrics file or None = not answering)
    [(100, None), (105, "idle.txt"), (135, "idle.txt"), (165, "idle.txt"), (170, "idle.txt")],
    [(100, "done.txt"), (130, "busy.txt"), (150, "done.txt"), (200, "done.txt"), (215, "done.txt")],
    [(100, "idle.txt"), (150, "done.txt"), (160, "done.txt"), (225, "done.txt")],
]


@pytest.mark.parametrize("looks", IDLE)
def test_idle_step_as_python(svc: Bash, looks: list[tuple[int, str | None]]) -> None:
    lines, want = [], []
    before, since = None, None
    for now, name in looks:
        text = (DATA / name).read_text() if name else ""
        load = metrics.parse_load(text) if name else None
        stop, since = metrics.idle_step(load, before, since, now, 60)
        before = load
        want.append(f"{'stop' if stop else 'go'} {since if since is not None else ''}".strip())
        if name:
            lines.append(f'cp {DATA / name} "$FAKE/metrics"; touch "$FAKE/up"')
        else:
            lines.append('rm -f "$FAKE/up"')
        lines.append(f'NOW={now}; r=go; hpcserve_idle_step || r=stop; echo "$r $IDLE_SINCE"')
        if stop:
            break
    body = "SRUN_PID=999999999\n" + "\n".join(lines)
    got = [ln.strip() for ln in svc.out(body).splitlines() if not ln.startswith("hpcserve:")]
    assert got == want


def test_idle_stop_says_why_and_stops_srun(svc: Bash, tmp_path: Path) -> None:
    body = (
        "sleep 60 & SRUN_PID=$!\n"
        f'cp {DATA / "idle.txt"} "$FAKE/metrics"; touch "$FAKE/up"\n'
        "SVC_PHASE=serving\n"
        "NOW=100; hpcserve_idle_step; NOW=161; hpcserve_idle_step || echo stopped\n"
        'wait "$SRUN_PID" || echo "srun ended $?"\n'
        'cat "$STOP_REASON"\n'
    )
    p = svc.run(body)
    assert p.stdout.split("\n")[:3] == ["stopped", "srun ended 143", "idle"]
    assert "hpcserve: stopped: idle for 1m (nothing running or waiting since" in p.stderr
    # in a service, an idle stop ends the chain: no job submits another
    assert (tmp_path / "svc" / chain.STOP).read_text().split() == ["idle", "101"]
    st = fold(parse_log((tmp_path / "svc" / chain.LOG).read_text()))
    assert st.stopped is not None and st.stopped.fields["cause"] == "idle"


# -- the keep-alive state machine ----------------------------------------------------------------
def chain_state(tmp_path: Path) -> chain.ChainState:
    return fold(parse_log((tmp_path / "svc" / chain.LOG).read_text()))


def test_start_ready_successor_handover_drain(svc: Bash, tmp_path: Path) -> None:
    svc_dir = tmp_path / "svc"
    (svc_dir / "secrets.env").write_text("VLLM_API_KEY='k'\n")
    # nothing measured yet: lead time min(600, 180 / 2) = 90 s, due with 90 + 60 s left
    svc.set(limit="3:00", left="2:40", metrics=(DATA / "idle.txt").read_text())
    body = (
        "sleep 60 & SRUN_PID=$!\n"
        "NOW=1000; hpcserve_service_start; echo limit=$TIME_LIMIT_S\n"
        "NOW=1005; hpcserve_service_step; echo $SVC_PHASE\n"  # not answering yet
        'touch "$FAKE/up"; NOW=1060; hpcserve_service_step; echo $SVC_PHASE\n'
        "NOW=1065; hpcserve_service_step\n"  # 160 s left > lead + grace: nothing yet
        'echo 2:00 >"$FAKE/left"; NOW=1095; hpcserve_service_step\n'  # due: submit
        "NOW=1100; hpcserve_service_step\n"  # submitted already: no second one
        'echo "102 10.0.0.12 8034 0" >"$SERVICE_CURRENT"\n'
        "NOW=1150; hpcserve_service_step; echo $SVC_PHASE $SVC_NEW\n"
        "NOW=1155; hpcserve_service_step && echo waiting\n"
        "NOW=1160; hpcserve_service_step || echo done\n"  # two idle looks, switch time over
        'wait "$SRUN_PID" || true; cat "$STOP_REASON"\n'
    )
    p = svc.run(body)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [
        "limit=180", "starting", "serving", "draining", "102", "waiting", "done", "handover",
    ]  # fmt: skip
    calls = (svc.fake / "sbatch.calls").read_text().splitlines()
    assert calls == [f"{svc_dir} --parsable {svc_dir}/launcher.sbatch"]  # once, the same launcher
    assert (svc.fake / "sbatch.env").read_text().split() == ["0"]  # without this job's SLURM_*
    jobdir = svc_dir / "jobs" / "101"
    assert (jobdir / "secrets.env").read_text() == "VLLM_API_KEY='k'\n"
    assert oct((jobdir / "secrets.env").stat().st_mode & 0o777) == "0o600"
    assert os.readlink(jobdir / "slurm-101.out") == f"{svc_dir}/slurm-101.out"
    assert "stopped: handed over to job 102 (drained in 10 s)" in p.stderr
    st = chain_state(tmp_path)
    assert st.jobs["102"].by == "101" and st.current == "101"  # 102's own ready comes from 102
    assert (svc_dir / chain.CURRENT).read_text() == "102 10.0.0.12 8034 0\n"
    events = [e.kind for e in parse_log((svc_dir / chain.LOG).read_text())]
    assert events == ["started", "ready", "submitted", "draining", "drained"]


def test_until_reached_submits_no_successor(tmp_path: Path) -> None:
    b = Bash(tmp_path, launcher(tmp_path, keep_alive=True, until=2_000_000_000))
    (tmp_path / "svc" / "jobs" / "101").mkdir(parents=True)
    b.set(limit="3:00", left="1:00")
    b.out(
        'touch "$FAKE/up"; hpcserve_service_start; NOW=1999999990; hpcserve_service_step\n'
        "hpcserve_service_step; hpcserve_service_step\n"
    )
    assert not (b.fake / "sbatch.calls").exists()
    assert chain_state(tmp_path).until_reached


def test_a_failed_submission_is_logged_and_retried_later(svc: Bash, tmp_path: Path) -> None:
    (svc.fake / "next_id").unlink()  # the fake sbatch fails (cat of a missing file)
    svc.set(limit="3:00", left="1:00")
    svc.out(
        'touch "$FAKE/up"; hpcserve_service_start; NOW=1000; hpcserve_service_step\n'
        "NOW=1005; hpcserve_service_step; NOW=1010; hpcserve_service_step\n"
        f"NOW={1010 + lead.RETRY_S}; hpcserve_service_step\n"
    )
    assert len((svc.fake / "sbatch.calls").read_text().splitlines()) == 2
    assert len(chain_state(tmp_path).notes) == 2


def test_requeued_job_whose_successor_serves_does_not_start(svc: Bash, tmp_path: Path) -> None:
    svc_dir = tmp_path / "svc"
    (svc_dir / chain.LOG).write_text("900 submitted 101 by=user\n950 submitted 102 by=101\n")
    (svc_dir / chain.CURRENT).write_text("102 10.0.0.12 8034 0\n")
    p = svc.run("hpcserve_service_start || echo not-started", SLURM_RESTART_COUNT="1")
    assert p.stdout.strip() == "not-started"
    assert "job 102 serves the chain already" in p.stderr
    assert chain_state(tmp_path).jobs["101"].end_cause == "superseded"


def test_requeued_job_submits_no_second_successor(svc: Bash, tmp_path: Path) -> None:
    svc_dir = tmp_path / "svc"
    (svc_dir / chain.LOG).write_text("900 submitted 101 by=user\n950 submitted 102 by=101\n")
    svc.set(limit="3:00", left="0:30")
    out = svc.out(
        'touch "$FAKE/up"; hpcserve_service_start; hpcserve_service_step; echo $SVC_PHASE\n'
        "hpcserve_service_step; hpcserve_service_step\n",
        SLURM_RESTART_COUNT="1",
    )
    assert out.split() == ["serving"]
    assert not (svc.fake / "sbatch.calls").exists()
    st = chain_state(tmp_path)
    assert st.jobs["101"].restarts == 1 and st.current == "101"


def test_a_stopped_chain_starts_no_job(svc: Bash, tmp_path: Path) -> None:
    (tmp_path / "svc" / chain.STOP).write_text("cancel user\n")
    p = svc.run("hpcserve_service_start || echo not-started")
    assert p.stdout.strip() == "not-started"
    assert "the service was stopped (cancel user)" in p.stderr


def test_monitor_end_logs_the_end_and_exits_0_after_a_stop(svc: Bash, tmp_path: Path) -> None:
    out = svc.out(
        'printf "handover\\n" >"$STOP_REASON"; MONITOR_PID=999999999\n'
        'hpcserve_monitor_end 143; echo "rc=$FINAL_RC"\n'
        'hpcserve_monitor_end 143; echo "rc=$FINAL_RC"\n'
    )
    assert out.split() == ["rc=0", "rc=143"]
    ends = [e for e in parse_log((tmp_path / "svc" / chain.LOG).read_text()) if e.kind == "ended"]
    assert [e.fields["cause"] for e in ends] == ["handover", "signal"]
