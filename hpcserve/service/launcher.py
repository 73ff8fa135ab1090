"""The launcher template's values for ``--idle-stop`` and ``--keep-alive`` (pure).

:func:`launcher_context` is called by :func:`hpcserve.launch.render.launcher_context` and
returns what it adds or replaces: with neither option the template includes none of the
monitor's shell functions. A service's launcher gives each job its own directory
``SERVICE_DIR/jobs/JOB_ID`` (a job directory belongs to one job) and keeps the chain log, the
launcher every job of the chain submits again, its secrets and the batch logs in
``SERVICE_DIR``; it asks SLURM to requeue it (``--requeue``) and to append to its log then
(``--open-mode=append``; sbatch(1): a requeued batch script starts again from its beginning
with the same job id, SLURM_RESTART_COUNT counting the restarts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcserve.jobs import record as jobrecord
from hpcserve.launch.render import Var, Word, path_word
from hpcserve.launch.request import default_job_dir
from hpcserve.rules import format_duration_text
from hpcserve.service import chain, lead
from hpcserve.sites.schema import Site

if TYPE_CHECKING:
    from hpcserve.launch.request import LaunchRequest

SERVICE_DIRECTIVES = ("--requeue", "--open-mode=append")


def _parts(word: Word) -> tuple[Any, ...]:
    return word if isinstance(word, tuple) else (word,)


def service_dir_word(site: Site, req: LaunchRequest) -> Word:
    """The service directory: ``req.job_dir``, else ``<workdir>/<name>``."""
    if req.job_dir:
        return path_word(req.job_dir.rstrip("/") or "/")
    return path_word(default_job_dir(site, req.job_name))


def launcher_context(site: Site, req: LaunchRequest, ctx: dict[str, Any]) -> dict[str, Any]:
    """The values ``req``'s ``idle_stop_s`` and ``keep_alive`` add to the template context
    ``ctx`` (:func:`hpcserve.launch.render.launcher_context`'s), and those they replace."""
    idle = int(req.idle_stop_s or 0)
    out: dict[str, Any] = {
        "monitor": bool(idle or req.keep_alive),
        "service": req.keep_alive,
        "idle_stop_s": idle,
        "idle_stop_text": format_duration_text(idle),
        "poll_s": lead.POLL_S,
    }
    if not req.keep_alive:
        return out
    service_dir = service_dir_word(site, req)
    out.update(
        service_dir=service_dir,
        job_dir=(*_parts(service_dir), "/" + chain.JOBS_DIR + "/", Var("SLURM_JOB_ID")),
        job_dir_per_job=True,
        directives=[*ctx["directives"], *SERVICE_DIRECTIVES],
        service_batch_link=not ctx["redirect_batch_output"],
        chain_log=chain.LOG,
        chain_current=chain.CURRENT,
        chain_stop=chain.STOP,
        secrets_name=jobrecord.SECRETS,
        launcher_name=jobrecord.LAUNCHER,
        until=int(req.until or 0),
        drain_grace_s=lead.DRAIN_GRACE_S,
        switch_s=lead.SWITCH_S,
        retry_s=lead.RETRY_S,
        first_guess_s=lead.FIRST_GUESS_S,
        lead_factor=lead.LEAD_FACTOR,
        lead_margin_s=lead.LEAD_MARGIN_S,
        recent=lead.RECENT,
    )
    return out
