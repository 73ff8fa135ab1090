"""The scheduler adapter: every SLURM command hpcserve runs goes through here.

Commands run through an :class:`hpcserve.cluster.executor.Executor` (locally, or over one SSH
connection kept for the command's lifetime). The parsers are pure functions of the commands'
text output.

Where a job's state comes from, in order:

1. ``squeue -h -t all -j ID1,ID2,... -o FIELDS``: one call for all watched jobs. With ``-t all``
   it also lists jobs that ended less than MinJobAge ago.
2. ``scontrol show job -o ID`` for a job squeue did not list (same MinJobAge window, but also
   works where squeue filters differently).
3. ``sacct`` when the job left the controller's memory, if accounting is there (the local lab
   has no slurmdbd: sacct prints nothing, and the job is reported ``UNKNOWN``).

Transient controller failures ("Socket timed out on send/recv operation", "Unable to contact
slurm controller", "Zero Bytes were transmitted or received") are retried with backoff, then
reported as one plain :class:`RemoteError`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hpcserve.cluster.executor import CommandResult, Executor
from hpcserve.errors import RemoteError, Unreachable
from hpcserve.rules import format_slurm_time, parse_slurm_time

# id | state (long) | reason | nodes | nodelist | time left | time limit | start | used | exit
SQUEUE_FORMAT = "%i|%T|%r|%D|%N|%L|%l|%S|%M"
SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Start,End,Elapsed,Timelimit,NNodes,Reason"

TRANSIENT_MARKERS = (
    "Socket timed out on send/recv operation",
    "Unable to contact slurm controller",
    "Zero Bytes were transmitted or received",
    "Connection refused",
    "Resource temporarily unavailable",
    "Slurm backup controller in standby mode",
    "Communication connection failure",
)
INVALID_JOB = "Invalid job id specified"
# What SLURM's commands print when munge (auth/munge) cannot sign or check a request: munged
# stopped, its socket gone, or keys that differ between hosts.
AUTH_MARKERS = (
    "Protocol authentication error",
    "Munge encode failed",
    "Munge decode failed",
    "Invalid authentication credential",
    "auth_g_create",
)

ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "RESIZING",
        "STAGE_OUT",
        "SIGNALING",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESV_DEL_HOLD",
        "STOPPED",
    }
)
END_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "TIMEOUT",
        "CANCELLED",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)


@dataclass
class SchedJob:
    """What the scheduler says about one job."""

    job_id: str
    state: str  # PENDING, RUNNING, ..., or UNKNOWN when no source knows the job
    reason: str | None = None  # pending reason, or why it ended
    nodes: int | None = None
    nodelist: str | None = None
    time_left_s: int | None = None
    time_limit_s: int | None = None
    start_time: str | None = None  # as SLURM prints it (expected start while pending)
    elapsed_s: int | None = None
    exit_code: str | None = None
    source: str = "squeue"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def ended(self) -> bool:
        return self.state in END_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- pure parsers ------------------------------------------------------------------------------
_NONE = {"", "(null)", "N/A", "None", "Unknown", "n/a", "NONE", "INVALID", "NOT_SET"}


def _opt(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return None if text in _NONE else text


def parse_duration(text: str | None) -> int | None:
    """Seconds in a SLURM duration as squeue/sacct print it; None for no limit, an empty field
    or anything else (the rule is :func:`hpcserve.rules.parse_slurm_time`)."""
    text = _opt(text)
    if text is None or text.upper() == "PARTITION_LIMIT":
        return None
    try:
        return parse_slurm_time(text)
    except ValueError:
        return None


def format_duration(seconds: int | float | None) -> str:
    """``1-02:03:04`` / ``02:03:04`` (:func:`hpcserve.rules.format_slurm_time`); ``-`` for None."""
    return "-" if seconds is None else format_slurm_time(seconds)


def _state(text: str) -> str:
    # sacct: "CANCELLED by 1000"; squeue long names are already upper-case words.
    word = text.strip().split(" ")[0] if text.strip() else "UNKNOWN"
    return word.rstrip("+").upper()


def _int(text: str | None) -> int | None:
    text = _opt(text)
    if text is None:
        return None
    m = re.match(r"(\d+)", text)  # "2-2" (min-max) from scontrol
    return int(m.group(1)) if m else None


def _pipe_rows(text: str, width: int) -> Iterator[list[str]]:
    """The first ``width`` fields of each ``|``-separated row that has them and a job id."""
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= width and parts[0]:
            yield parts[:width]


def parse_squeue(text: str) -> dict[str, SchedJob]:
    """Rows of ``squeue -h -o SQUEUE_FORMAT`` by job id (array/het steps kept as printed)."""
    out: dict[str, SchedJob] = {}
    for parts in _pipe_rows(text, 9):
        jid, state, reason, nodes, nodelist, left, limit, start, used = parts
        out[jid] = SchedJob(
            job_id=jid,
            state=_state(state),
            reason=_opt(reason),
            nodes=_int(nodes),
            nodelist=_opt(nodelist),
            time_left_s=parse_duration(left),
            time_limit_s=parse_duration(limit),
            start_time=_opt(start),
            elapsed_s=parse_duration(used),
            source="squeue",
        )
    return out


_KV = re.compile(r"(\S+?)=(\S*)")


def parse_scontrol(text: str) -> SchedJob | None:
    """``scontrol show job [-o] ID`` (one line or the indented form) -> SchedJob, or None."""
    fields: dict[str, str] = {}
    for key, value in _KV.findall(text):
        fields.setdefault(key, value)
    jid = fields.get("JobId")
    if not jid:
        return None
    run = parse_duration(fields.get("RunTime"))
    limit = parse_duration(fields.get("TimeLimit"))
    state = _state(fields.get("JobState", "UNKNOWN"))
    left = limit - run if (limit is not None and run is not None and state == "RUNNING") else None
    reason = _opt(fields.get("Reason"))
    return SchedJob(
        job_id=jid,
        state=state,
        reason=reason.replace("_", " ") if reason else None,
        nodes=_int(fields.get("NumNodes")),
        nodelist=_opt(fields.get("NodeList")),
        time_left_s=left,
        time_limit_s=limit,
        start_time=_opt(fields.get("StartTime")),
        elapsed_s=run,
        exit_code=_opt(fields.get("ExitCode")),
        source="scontrol",
    )


def parse_sacct(text: str) -> dict[str, SchedJob]:
    """``sacct -n -P -X -o SACCT_FIELDS`` rows by job id."""
    out: dict[str, SchedJob] = {}
    for parts in _pipe_rows(text, 10):
        jid, state, exit_code, nodelist, start, _end, elapsed, limit, nnodes, reason = parts
        out[jid] = SchedJob(
            job_id=jid,
            state=_state(state),
            reason=_opt(reason),
            nodes=_int(nnodes),
            nodelist=_opt(nodelist),
            time_limit_s=parse_duration(limit),
            start_time=_opt(start),
            elapsed_s=parse_duration(elapsed),
            exit_code=_opt(exit_code),
            source="sacct",
        )
    return out


def parse_sbatch_parsable(stdout: str) -> tuple[str, str | None]:
    """``sbatch --parsable`` output -> (job id, cluster or None); RemoteError if none."""
    for line in reversed(stdout.strip().splitlines()):
        m = re.fullmatch(r"\s*(\d+(?:_\d+)?)(?:;(\S+))?\s*", line)
        if m:
            return m.group(1), m.group(2)
    raise RemoteError(f"sbatch printed no job id: {stdout.strip()[:200] or 'no output'}")


def parse_steps(stdout: str) -> list[str]:
    """``squeue -h -s -o %i`` output -> step ids (``70.0``, ``70.batch``)."""
    return [s.strip() for s in stdout.splitlines() if s.strip()]


def is_transient(result: CommandResult) -> bool:
    text = f"{result.stderr}\n{result.stdout}"
    return any(marker in text for marker in TRANSIENT_MARKERS)


def is_auth_failure(result: CommandResult) -> bool:
    """True when munge refused to sign or check the request (:data:`AUTH_MARKERS`)."""
    text = f"{result.stderr}\n{result.stdout}"
    return any(marker in text for marker in AUTH_MARKERS)


# -- the adapter -------------------------------------------------------------------------------
def sbatch_argv(script: str, args: Sequence[str] = ()) -> list[str]:
    """The command :meth:`Slurm.submit` runs: ``sbatch --parsable ARGS SCRIPT``."""
    return ["sbatch", "--parsable", *args, script]


class Slurm:
    """SLURM commands through one executor, with retries for transient controller errors."""

    def __init__(
        self,
        executor: Executor,
        *,
        attempts: int = 4,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        timeout_s: float = 60,
    ) -> None:
        self.executor = executor
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.sleep = sleep
        self.timeout_s = timeout_s
        self._have_sacct: bool | None = None

    def run(
        self,
        argv: list[str],
        *,
        ok_if: Callable[[CommandResult], bool] | None = None,
        input: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` (``input`` on its stdin); retry transient failures with exponential
        backoff; RemoteError if it still fails (unless ``ok_if(result)`` accepts the failed
        result)."""
        delay = self.backoff_s
        result: CommandResult | None = None
        for attempt in range(1, self.attempts + 1):
            result = self.executor.run(argv, input=input, timeout=self.timeout_s)
            if result.ok or (ok_if is not None and ok_if(result)):
                return result
            if not is_transient(result) or attempt == self.attempts:
                break
            self.sleep(delay)
            delay *= 2
        assert result is not None
        if is_transient(result):
            raise Unreachable(
                f"the SLURM controller did not answer after {self.attempts} tries: "
                f"{result.describe()}"
            )
        if is_auth_failure(result):
            raise RemoteError(
                f"SLURM's authentication (munge) failed on {self.executor.describe()}: "
                f"{result.describe()}; munged is not running there or its key differs "
                "(the site's admins restart it; nothing about the job changed)"
            )
        raise RemoteError(result.describe())

    # -- queries ------------------------------------------------------------------------------
    def squeue(self, job_ids: Sequence[str]) -> dict[str, SchedJob]:
        """One squeue call for all ``job_ids`` (any state still in the controller)."""
        if not job_ids:
            return {}
        res = self.run(
            ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", SQUEUE_FORMAT],
            ok_if=lambda r: INVALID_JOB in r.stderr,  # all of them gone: not an error
        )
        return parse_squeue(res.stdout) if res.ok else {}

    def job_steps(self, job_id: str) -> list[str]:
        """Step ids of the job still known to the controller (``squeue -s``); [] when gone."""
        res = self.run(
            ["squeue", "-h", "-s", "-j", job_id, "-o", "%i"],
            ok_if=lambda r: "Invalid job id" in r.stderr,
        )
        return parse_steps(res.stdout) if res.ok else []

    def scontrol(self, job_id: str) -> SchedJob | None:
        res = self.run(
            ["scontrol", "show", "job", "-o", job_id], ok_if=lambda r: INVALID_JOB in r.stderr
        )
        return parse_scontrol(res.stdout) if res.ok else None

    def sacct(self, job_ids: Sequence[str]) -> dict[str, SchedJob]:
        """Accounting records, or {} when sacct is missing or has no database."""
        if not job_ids or self._have_sacct is False:
            return {}
        try:
            res = self.executor.run(
                ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", SACCT_FIELDS],
                timeout=self.timeout_s,
            )
        except RemoteError:  # not installed
            self._have_sacct = False
            return {}
        if not res.ok:
            # "Slurm accounting storage is disabled" and friends: no accounting here.
            self._have_sacct = False
            return {}
        return parse_sacct(res.stdout)

    def query(self, job_ids: Iterable[str]) -> dict[str, SchedJob]:
        """State of every job: squeue for all in one call, then scontrol, then sacct."""
        ids = list(dict.fromkeys(job_ids))
        found = self.squeue(ids)
        missing = [j for j in ids if j not in found]
        for jid in missing:
            job = self.scontrol(jid)
            if job is not None:
                found[jid] = job
        missing = [j for j in ids if j not in found]
        if missing:
            found.update({k: v for k, v in self.sacct(missing).items() if k in missing})
        for jid in ids:
            found.setdefault(jid, SchedJob(job_id=jid, state="UNKNOWN", source="none"))
        return {jid: found[jid] for jid in ids}

    # -- actions ------------------------------------------------------------------------------
    def cancel(self, job_id: str, signal: str | None = None) -> None:
        argv = ["scancel"] + ([f"--signal={signal}"] if signal else []) + [job_id]
        self.run(argv)

    def test_only(self, script_text: str) -> str:
        """``sbatch --test-only`` of a script's text (on stdin): the scheduler checks account,
        partition, QoS and resources and says when the job would start (sbatch(1)); its answer,
        or RemoteError "sbatch refused it: ..." with sbatch's error line."""
        try:
            res = self.run(["sbatch", "--test-only"], input=script_text)
        except RemoteError as e:
            raise RemoteError(f"sbatch refused it: {e}") from e
        lines = (res.stderr.strip() or res.stdout.strip()).splitlines()
        return lines[-1] if lines else "accepted"

    def submit(self, script: str, args: Sequence[str] = ()) -> tuple[str, str | None]:
        """``sbatch --parsable ARGS SCRIPT`` -> (job id, cluster); RemoteError "sbatch failed: ..."
        when sbatch refuses it or prints no job id."""
        try:
            res = self.run(sbatch_argv(script, args))
            return parse_sbatch_parsable(res.stdout)
        except RemoteError as e:
            raise RemoteError(f"sbatch failed: {e}") from e
