"""Submit a rendered launcher: job directory, secrets file, ``sbatch``, registry record.

The cluster is reached only through an :class:`~hpcserve.cluster.executor.Executor`, so this
runs the same on a login node and on a laptop that submits over SSH. Secrets go into
``JOBDIR/secrets.env`` (0600) and the local registry's 0600 secret file, never into the script
or onto a command line.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from hpcserve.cluster.connect import expand_home
from hpcserve.cluster.executor import Executor
from hpcserve.cluster.slurm import Slurm, sbatch_argv
from hpcserve.errors import HpcserveError, RemoteError, UsageError
from hpcserve.jobs import record as jobrecord
from hpcserve.launch.render import LaunchRequest, choose_layout, path_word, render, shell_word
from hpcserve.launch.request import default_job_dir
from hpcserve.sites.schema import Site


@dataclass
class Submission:
    """What ``submit`` did."""

    job_id: str | None  # None for --dry-run
    job_dir: str
    launcher: str
    site: str
    model: str
    nodes: int
    tp: int
    pp: int
    dp: int = 1
    api_key_file: str | None = None
    warnings: list[str] = field(default_factory=list)
    submit_to: str = "local"  # where sbatch runs: local, or user@host:port of the login host
    command: list[str] = field(default_factory=list)  # what runs there

    def to_dict(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "job_dir": self.job_dir,
            "launcher": self.launcher,
            "site": self.site,
            "model": self.model,
            "nodes": self.nodes,
            "tp": self.tp,
            "pp": self.pp,
            "dp": self.dp,
            "api_key_file": self.api_key_file,
            "dry_run": self.job_id is None,
            "warnings": self.warnings,
            "submit_to": self.submit_to,
            "command": self.command,
        }


def read_hf_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The HF token: ``$HF_TOKEN``, else ``$HF_HOME/token`` or ``~/.cache/huggingface/token``."""
    env = os.environ if environ is None else environ
    token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token.strip() or None
    home = env.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    path = Path(home) / "token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def secrets_env(values: Mapping[str, str | None]) -> str:
    """``KEY='value'`` lines, readable by ``source`` and by ``apptainer --env-file``."""
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items() if v)


def model_cache_dir(hf_cache: str, model: str) -> str:
    """Where the HF hub cache under ``HF_HOME`` keeps ``model`` (``hub/models--org--name``)."""
    return posixpath.join(hf_cache, "hub", "models--" + model.replace("/", "--"))


def is_local_path(model: str) -> bool:
    return model.startswith(("/", "~", "./", "../"))


def offline_cache_warning(site: Site, model: str, executor: Executor, home: str) -> str | None:
    """A warning when compute nodes are offline and the model is not on the cluster yet."""
    if not site.storage.offline:
        return None
    if is_local_path(model):
        path = expand_home(model, home)
        if executor.exists(path):
            return None
        return f"{model} does not exist on {site.name}; the offline compute nodes cannot fetch it"
    if not site.storage.hf_cache:
        return (
            f"{site.name} compute nodes are offline and the site has no storage.hf_cache; "
            f"vLLM will not be able to download {model}"
        )
    cache = model_cache_dir(expand_home(site.storage.hf_cache, home), model)
    if executor.exists(cache):
        return None
    return (
        f"{site.name} compute nodes are offline and {model} is not in {site.storage.hf_cache}; "
        f"run `hpcserve download {model} --site {site.name}` first"
    )


def submit(
    site: Site,
    req: LaunchRequest,
    executor: Executor,
    *,
    dry_run: bool = False,
    api_key: bool = True,
    environ: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Submission:
    """Write the job directory and submit it. ``req.job_dir`` empty means a fresh default.

    ``name`` is the registry name the user chose (checked before anything is submitted).
    """
    if name is not None and not dry_run:
        from hpcserve.jobs.registry import Registry

        Registry().check_free_name(name)
    layout = choose_layout(site, req)
    home = executor.home()
    job_dir = (
        expand_home(req.job_dir, home)
        if req.job_dir
        else default_job_dir(site, req.job_name, home=home, unique=True)
    )
    req = replace(req, job_dir=job_dir)
    script = render(site, req)  # validates everything before anything is written
    warnings = []
    warning = offline_cache_warning(site, req.model, executor, home)
    if warning:
        warnings.append(warning)

    key = secrets.token_urlsafe(32) if api_key else None
    launcher = posixpath.join(job_dir, jobrecord.LAUNCHER)
    executor.makedirs(job_dir, 0o700)
    executor.makedirs(posixpath.join(job_dir, jobrecord.NCCL_DIR), 0o700)
    executor.write_text(launcher, script, 0o700)
    executor.write_text(
        posixpath.join(job_dir, jobrecord.SECRETS),
        secrets_env({"HF_TOKEN": read_hf_token(environ), "VLLM_API_KEY": key}),
        0o600,
    )
    sub = Submission(
        job_id=None,
        job_dir=job_dir,
        launcher=launcher,
        site=site.name,
        model=req.model,
        nodes=layout.nodes,
        tp=layout.tp,
        pp=layout.pp,
        dp=layout.dp,
        warnings=warnings,
        submit_to=executor.describe(),
        command=sbatch_argv(launcher),
    )
    if dry_run:
        return sub

    sub.job_id, _cluster = Slurm(executor, timeout_s=120).submit(launcher)
    try:
        sub.api_key_file = _record(sub, req, remote=executor.remote, api_key=key, name=name)
    except (HpcserveError, OSError) as e:  # the job runs: say so, and where its key is
        raise HpcserveError(
            f"job {sub.job_id} was submitted ({job_dir}) but could not be recorded: {e}; its "
            f"API key is in {posixpath.join(job_dir, jobrecord.SECRETS)} on the cluster"
        ) from e
    return sub


def _record(
    sub: Submission, req: LaunchRequest, *, remote: bool, api_key: str | None, name: str | None
) -> str | None:
    """Add the job to the local registry; store its API key in a 0600 file. Returns that path.

    The job runs once sbatch has answered, so a record left under the same ``SITE:JOB_ID`` by a
    job the scheduler no longer knows is replaced (:meth:`Registry.add_submitted`), with a
    warning naming its job directory.
    """
    from hpcserve.jobs.registry import Registry  # lazy: written by the jobs helper

    assert sub.job_id is not None
    served = req.vllm_options.get("served_model_name")
    rec = jobrecord.JobRecord(
        job_id=sub.job_id,
        site=sub.site,
        model=sub.model,
        nodes=sub.nodes,
        tp=sub.tp,
        pp=sub.pp,
        dp=sub.dp,
        job_dir=sub.job_dir,
        submitted_at=time.time(),
        remote=remote,
        name=name,
        served_model_name=served if isinstance(served, str) else None,
    )
    registry = Registry()
    stale = registry.add_submitted(rec)
    if stale is not None:
        sub.warnings.append(
            f"the scheduler gave job id {sub.job_id} again: replaced the record of the earlier "
            f"job {stale.site}:{stale.job_id} ({stale.job_dir}), which it no longer knows"
        )
    if api_key is None:
        return None
    path = Path(registry.secret_path(sub.job_id, "api_key"))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(api_key + "\n")
    os.chmod(path, 0o600)
    rec.api_key_file = str(path)
    registry.update(rec)
    return str(path)


def download_argv(site: Site, model: str, revision: str | None = None) -> list[str]:
    """``bash -c`` argv that downloads ``model`` into the site's HF cache on the login host.

    The token arrives on stdin (first line) and is exported, never put on the command line.
    """
    assert site.storage.hf_cache
    script = (
        "IFS= read -r HF_TOKEN || true; "
        'if [ -n "$HF_TOKEN" ]; then export HF_TOKEN; else unset HF_TOKEN; fi; '
        f"export HF_HOME={shell_word(path_word(site.storage.hf_cache))}; "
        'mkdir -p "$HF_HOME"; '
        'if command -v hf >/dev/null 2>&1; then exec hf download "$@"; '
        'else exec huggingface-cli download "$@"; fi'
    )
    argv = ["bash", "-c", script, "hpcserve-download", model]
    if revision:
        argv += ["--revision", revision]
    return argv


def download(site: Site, model: str, revision: str | None, executor: Executor) -> str:
    """Fetch ``model`` into the site's HF cache through ``executor`` (the token on stdin); the
    last line the download printed."""
    if not site.storage.hf_cache:
        raise UsageError(f"site {site.name} has no storage.hf_cache to download into")
    if model.startswith("-") or "\n" in model:
        raise UsageError(f"{model!r} is not a model id")
    token = read_hf_token()
    result = executor.run(
        download_argv(site, model, revision), input=(token or "") + "\n", timeout=None
    )
    if not result.ok:
        raise RemoteError(f"download of {model} failed: {result.describe()}")
    tail = result.stdout.strip().splitlines()
    return tail[-1] if tail else ""
