"""Render the multi-node sbatch launcher: a pure function of a :class:`Site` and a request.

Python decides everything here (directives, argv lists, environment); the Jinja2 template
``templates/launcher.sbatch.j2`` only lays out shell. Every value that reaches bash goes through
:func:`shell_word` (``shlex.quote`` for literals), so a model name such as ``x; touch /tmp/pwned``
stays one harmless argument. No secret is ever an input of :func:`render`.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpcserve.cluster.sbatch import merged, sbatch_directives
from hpcserve.errors import UsageError
from hpcserve.jobs import record as jobrecord
from hpcserve.launch import vllm_flags
from hpcserve.launch.request import (
    DEFAULT_JOB_NAME,
    LaunchRequest,
    check_request,
    choose_layout,
    default_job_dir,
)
from hpcserve.plan.layout import Layout
from hpcserve.rules import is_env_name, resolve_dtype
from hpcserve.sites.schema import Site

__all__ = ["DEFAULT_JOB_NAME", "LaunchRequest", "choose_layout", "render", "shell_word"]

TEMPLATE = "launcher.sbatch.j2"
SRUN_WAIT_S = 30  # seconds srun waits after the first node's task ends before ending the rest
PORT_SPREAD = 100  # API/master search starts at base + (job id % PORT_SPREAD)
MASTER_PORT_GAP = 1000  # master ports are searched from engine.port + this
JOB_CLAIM = ".hpcserve-job"  # in the job directory: the id of the one job it belongs to


@dataclass(frozen=True)
class Var:
    """A shell variable inside a rendered word, e.g. ``Var("NODE_RANK")`` -> ``"${NODE_RANK}"``."""

    name: str


Part = str | Var
Word = str | Var | tuple[Part, ...]


def shell_word(word: Word) -> str:
    """One bash word: literals ``shlex.quote``d, variables double-quoted, parts concatenated."""
    parts = word if isinstance(word, tuple) else (word,)
    out = []
    for part in parts:
        if isinstance(part, Var):
            if not is_env_name(part.name):
                raise ValueError(f"bad shell variable name {part.name!r}")
            out.append(f'"${{{part.name}}}"')
        else:
            out.append(shlex.quote(str(part)))
    return "".join(out) if out else "''"


def path_word(path: str) -> Word:
    """A path as a word; a leading ``~`` becomes ``$HOME`` (expanded on the cluster)."""
    if path == "~":
        return Var("HOME")
    if path.startswith("~/"):
        return (Var("HOME"), path[1:])
    return path


def join_word(base: Word, tail: str) -> Word:
    """``base`` + ``/tail``."""
    parts = base if isinstance(base, tuple) else (base,)
    return (*parts, "/" + tail)


def _modules(site: Site) -> list[list[str]]:
    out = []
    for line in site.modules:
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise UsageError(f"site {site.name}: modules entry {line!r}: {e}") from e
        if words:
            out.append(words)
    return out


def _env(site: Site) -> list[tuple[str, Word]]:
    """Environment exported on every node (values are literals or paths; no secrets)."""
    net = site.network
    env: list[tuple[str, Word]] = []
    for name, value in (
        ("NCCL_SOCKET_IFNAME", net.nccl_socket_ifname),
        ("GLOO_SOCKET_IFNAME", net.gloo_socket_ifname),
        ("NCCL_IB_HCA", net.nccl_ib_hca),
    ):
        if value:
            env.append((name, value))
    env += [(k, str(v)) for k, v in net.nccl_env.items()]
    env.append(("NCCL_DEBUG", "INFO"))
    # Line by line into node-K.log, so `status`/`wait` see the phases as they happen (Python
    # buffers a redirected stdout: a worker killed after 25 s had written nothing).
    env.append(("PYTHONUNBUFFERED", "1"))
    if site.storage.hf_cache:
        env.append(("HF_HOME", path_word(site.storage.hf_cache)))
    if site.storage.offline:
        env.append(("HF_HUB_OFFLINE", "1"))
    env += [(k, str(v)) for k, v in site.engine.env.items()]
    bad = [k for k, _ in env if not is_env_name(k)]
    if bad:
        raise UsageError(f"site {site.name}: invalid environment variable name(s): {bad}")
    return env


def _binds(site: Site) -> list[Word]:
    binds: list[Word] = []
    for spec in site.container.binds:
        src, sep, rest = spec.partition(":")
        word = path_word(src)
        binds.append((*(word if isinstance(word, tuple) else (word,)), sep + rest) if sep else word)
    binds.append(Var("JOBDIR"))
    if site.storage.hf_cache:
        binds.append(path_word(site.storage.hf_cache))
    return binds


def _runtime_prefix(site: Site) -> tuple[list[Word], bool]:
    """The command before ``serve``, and whether secrets go through ``--env-file``."""
    c = site.container
    if c.runtime == "none":
        vllm: Word = join_word(path_word(c.venv), "bin/vllm") if c.venv else site.engine.vllm
        return [vllm], False
    if not c.image:
        raise UsageError(f"site {site.name}: container.image is required for runtime {c.runtime}")
    prefix: list[Word] = [c.runtime, "exec"]
    if c.gpu_flag:
        prefix.append(c.gpu_flag)
    for bind in _binds(site):
        prefix += ["--bind", bind]
    prefix += ["--env-file", (Var("JOBDIR"), "/" + jobrecord.SECRETS)]
    prefix += [path_word(c.image), site.engine.vllm]
    return prefix, True


def node_argv(site: Site, req: LaunchRequest, layout: Layout) -> tuple[list[Word], list[Word]]:
    """(head argv, worker argv): everything after the runtime prefix, per role."""
    values = dict(req.vllm_options)
    if values.get("dtype") is not None:
        values["dtype"] = resolve_dtype(str(values["dtype"]))
    values["tensor_parallel_size"] = layout.tp
    values["pipeline_parallel_size"] = layout.pp
    if layout.nodes > 1:
        values["distributed_executor_backend"] = "mp"
    common: list[Word] = ["serve", path_word(req.model), *vllm_flags.flag_argv(values)]
    common += [*site.engine.extra_args, *req.vllm_args]
    f = vllm_flags.flag
    topo: list[Word] = []
    if layout.nodes > 1:
        topo = [
            f("nnodes"), str(layout.nodes),
            f("node_rank"), Var("NODE_RANK"),
            f("master_addr"), Var("HPCSERVE_HEAD_ADDR"),
            f("master_port"), Var("HPCSERVE_MASTER_PORT"),
        ]  # fmt: skip
    api: list[Word] = [f("host"), "0.0.0.0", f("port"), Var("HPCSERVE_API_PORT")]
    head = [*common, *topo, *api]
    worker = [*common, *topo, *api, f("headless")]
    return head, worker


_RANK_MARK = 987654321


def _in_job(first: str, *rest: Part) -> Word:
    """A path inside the job directory, as a word using the script's ``$JOBDIR``."""
    return (Var("JOBDIR"), "/" + first, *rest)


def _job_dir_word(site: Site, req: LaunchRequest) -> Word:
    """The job directory as a word: ``req.job_dir``, or with none ``<workdir>/<name>-<job id>``
    (a job directory belongs to one job, so two launchers rendered alike never share one)."""
    if req.job_dir:
        return path_word(req.job_dir.rstrip("/") or "/")
    base = path_word(default_job_dir(site, req.job_name))
    return (*(base if isinstance(base, tuple) else (base,)), "-", Var("SLURM_JOB_ID"))


def launcher_context(site: Site, req: LaunchRequest) -> dict[str, Any]:
    """Everything the template needs, decided here (an empty ``job_dir`` is the default one)."""
    layout = check_request(site, req)
    per_job = not req.job_dir
    job_dir = _job_dir_word(site, req)
    absolute = isinstance(job_dir, str)
    sched = site.scheduler
    gpus = layout.ranks_per_node
    defaults: dict[str, Any] = {
        "job_name": req.job_name,
        "nodes": layout.nodes,
        "time": sched.time,
        "partition": sched.partition,
        "account": sched.account,
        "qos": sched.qos,
        "constraint": sched.constraint,
        "exclusive": sched.exclusive,
        "gres": f"gpu:{gpus}" if sched.gpus_directive == "gres" else None,
        "gpus_per_node": gpus if sched.gpus_directive == "gpus-per-node" else None,
    }
    if absolute:
        defaults["output"] = f"{req.job_dir.rstrip('/')}/{jobrecord.BATCH_LOG}"
        defaults["chdir"] = req.job_dir.rstrip("/")
    opts = merged(defaults, req.sbatch)
    if opts["nodes"] != layout.nodes:
        raise UsageError("use --nodes, not --sbatch-arg nodes=...")
    directives = sbatch_directives(**opts, extra=sched.extra_sbatch)
    prefix, env_file = _runtime_prefix(site)
    head, worker = node_argv(site, req, layout)
    batch_before, _, batch_after = jobrecord.BATCH_LOG.partition("%j")
    log_before, _, log_after = jobrecord.node_log_name(_RANK_MARK).partition(str(_RANK_MARK))
    ctx: dict[str, Any] = {
        "site_name": site.name,
        "model": req.model,
        "layout": layout,
        "directives": directives,
        "job_dir": job_dir,
        "job_dir_per_job": per_job,
        "claim_path": _in_job(JOB_CLAIM),
        "redirect_batch_output": not absolute,
        "modules": _modules(site),
        "env": _env(site),
        "head_interface": site.network.head_interface or "",
        "nodes": int(layout.nodes),
        "srun_wait": SRUN_WAIT_S,
        "port_base": int(site.engine.port),
        "port_spread": PORT_SPREAD,
        "master_port_gap": MASTER_PORT_GAP,
        "head_argv": [*prefix, *head],
        "worker_argv": [*prefix, *worker],
        "secrets_via_env_file": env_file,
        "cpu_bind_node_rank": site.engine.cpu_bind == "node-rank",
        "launcher_path": _in_job(jobrecord.LAUNCHER),
        "secrets_path": _in_job(jobrecord.SECRETS),
        "endpoint_path": _in_job(jobrecord.ENDPOINT),
        "endpoint_tmp": _in_job("." + jobrecord.ENDPOINT + ".tmp"),
        "nccl_dir": _in_job(jobrecord.NCCL_DIR),
        "nccl_file": _in_job(jobrecord.NCCL_DIR + "/node-", Var("NODE_RANK"), ".%h.%p.log"),
        "node_log": _in_job(log_before, Var("NODE_RANK"), log_after),
        "batch_log": _in_job(batch_before, Var("SLURM_JOB_ID"), batch_after),
    }
    from hpcserve.service.launcher import launcher_context as monitor_context

    ctx.update(monitor_context(site, req, ctx))  # --idle-stop, --keep-alive
    return ctx


def _bytecode_cache() -> Any:
    """Compiled templates cached per user (keyed by the template's checksum), or None.

    Compiling the launcher template costs about a third of a bare interpreter start; loading
    it from the cache keeps ``hpcserve render`` near the cold-start target.
    """
    import contextlib
    import os

    from jinja2 import FileSystemBytecodeCache

    class QuietCache(FileSystemBytecodeCache):
        def dump_bytecode(self, bucket: Any) -> None:
            # read-only home: render still works, it just compiles each time
            with contextlib.suppress(OSError):
                super().dump_bytecode(bucket)

    if os.environ.get("HPCSERVE_NO_TEMPLATE_CACHE"):
        return None
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(root, "hpcserve", "jinja2")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return QuietCache(directory)


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from hpcserve.resources import templates_dir

    env = Environment(
        bytecode_cache=_bytecode_cache(),
        loader=FileSystemLoader(str(templates_dir())),
        autoescape=False,  # bash, not HTML: quoting is done by the filters below
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["quote"] = lambda v: shlex.quote(str(v))
    env.filters["word"] = shell_word
    env.filters["words"] = _words
    env.filters["comment"] = _comment
    return env


def _comment(value: Any) -> str:
    """``value`` made safe inside a ``#`` comment line: control characters become ``?``."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def _words(words: Sequence[Word]) -> str:
    return " ".join(shell_word(w) for w in words)


def render(site: Site, req: LaunchRequest) -> str:
    """The launcher script text for ``req`` on ``site``."""
    ctx = launcher_context(site, req)
    return str(_environment().get_template(TEMPLATE).render(**ctx))
