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
from hpcserve.launch import caches, vllm_flags
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

__all__ = [
    "DEFAULT_JOB_NAME",
    "LaunchRequest",
    "NodeProgram",
    "choose_layout",
    "module_script",
    "render",
    "runtime_command",
    "shell_word",
]

TEMPLATE = "launcher.sbatch.j2"
SRUN_WAIT_S = 30  # seconds srun waits after the first node's task ends before ending the rest
PORT_SPREAD = 100  # API/master search starts at base + (job id % PORT_SPREAD)
MASTER_PORT_GAP = 1000  # master ports are searched from engine.port + this
JOB_CLAIM = ".hpcserve-job"  # in the job directory: the id of the one job it belongs to
# Sourced, first found, when a batch shell has no `module` function (Lmod, Environment Modules).
MODULE_INITS = ("/etc/profile.d/lmod.sh", "/etc/profile.d/z00_lmod.sh", "/etc/profile.d/modules.sh")


@dataclass(frozen=True)
class Var:
    """A shell variable inside a rendered word, e.g. ``Var("NODE_RANK")`` -> ``"${NODE_RANK}"``."""

    name: str


Part = str | Var
Word = str | Var | tuple[Part, ...]


@dataclass(frozen=True)
class NodeProgram:
    """Another program for every node's task instead of ``vllm serve`` (``hpcserve doctor``'s
    probe): ``program`` run inside the same runtime as vLLM (:func:`runtime_command`), then
    ``argv``; the rest of the launcher (modules, environment, address, ports) is unchanged."""

    program: str
    argv: tuple[Word, ...] = ()


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
    # before engine.env, which may still point one of them elsewhere
    env += [(k, path_word(v)) for k, v in caches.cache_env(site)]
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
    for path in (site.storage.hf_cache, caches.compile_cache_root(site), site.storage.stage_dir):
        if path:
            binds.append(path_word(path))
    return binds


def runtime_command(
    site: Site, program: str | None = None, *, on_node: bool = True
) -> tuple[list[Word], bool]:
    """The command before ``serve``, and whether secrets go through ``--env-file``.

    ``program`` (e.g. ``python3``) runs in vLLM's place inside the same runtime: the venv's
    ``bin/`` copy, or the image's. ``on_node=False`` is the same runtime and image for a login
    node: no GPU flag, binds or ``--env-file`` (they need a node and a job directory).
    """
    c = site.container
    if c.runtime == "none":
        name = program or site.engine.vllm
        if c.venv:
            return [join_word(path_word(c.venv), "bin/" + (program or "vllm"))], False
        return [name], False
    if not c.image:
        raise UsageError(f"site {site.name}: container.image is required for runtime {c.runtime}")
    prefix: list[Word] = [c.runtime, "exec"]
    if on_node:
        if c.gpu_flag:
            prefix.append(c.gpu_flag)
        for bind in _binds(site):
            prefix += ["--bind", bind]
        prefix += ["--env-file", (Var("JOBDIR"), "/" + jobrecord.SECRETS)]
    prefix += [path_word(c.image), program or site.engine.vllm]
    return prefix, True


def module_script(site: Site) -> list[str]:
    """The launcher's ``module load`` lines as bash (a ``module`` function set up first from
    :data:`MODULE_INITS` when the shell has none); [] when the site loads no modules."""
    modules = _modules(site)
    if not modules:
        return []
    inits = " ".join(shlex.quote(p) for p in MODULE_INITS)
    setup = (
        "if ! command -v module >/dev/null 2>&1; then "
        f"for init in {inits}; do "
        'if [[ -f $init ]]; then source "$init"; break; fi; done; fi'
    )
    return [setup, *("module load " + shlex.join(words) for words in modules)]


#: The shell variable the node role sets to its first DP rank (SLURM_NODEID × ranks a node).
DP_START_RANK_VAR = "HPCSERVE_DP_START_RANK"


def _dp_topology(layout: Layout) -> tuple[list[Word], list[Word]]:
    """(every node's, the headless nodes' extra) DP flags, as ``data_parallel_deployment.md``
    runs them: each node ``--data-parallel-size N --data-parallel-size-local L
    --data-parallel-address HEAD --data-parallel-rpc-port P``; the others also
    ``--data-parallel-start-rank K`` (``run_headless`` in ``vllm/entrypoints/cli/serve.py``
    starts engines K..K+L-1 and meets the head at ADDRESS:P). The RPC port is the launcher's
    master port: with whole DP ranks on each node no torch.distributed group spans nodes."""
    f = vllm_flags.flag
    common: list[Word] = [
        f("data_parallel_size_local"), str(layout.dp_local),
        f("data_parallel_address"), Var("HPCSERVE_HEAD_ADDR"),
        f("data_parallel_rpc_port"), Var("HPCSERVE_MASTER_PORT"),
    ]  # fmt: skip
    return common, [f("data_parallel_start_rank"), Var(DP_START_RANK_VAR)]


def _node_topology(layout: Layout) -> tuple[list[Word], list[Word]]:
    """(every node's, the headless nodes' extra) topology flags."""
    if layout.dp > 1:
        return _dp_topology(layout)
    if layout.nodes == 1:
        return [], []
    f = vllm_flags.flag
    topo: list[Word] = [
        f("nnodes"), str(layout.nodes),
        f("node_rank"), Var("NODE_RANK"),
        f("master_addr"), Var("HPCSERVE_HEAD_ADDR"),
        f("master_port"), Var("HPCSERVE_MASTER_PORT"),
    ]  # fmt: skip
    return topo, []


def _layout_values(layout: Layout) -> dict[str, Any]:
    """The layout's table flags: TP and PP always, DP and EP when on, the mp executor when one
    DP rank spans the nodes."""
    values: dict[str, Any] = {
        "tensor_parallel_size": layout.tp,
        "pipeline_parallel_size": layout.pp,
    }
    if layout.dp > 1:
        values["data_parallel_size"] = layout.dp
    if layout.ep:
        values["enable_expert_parallel"] = True
    if layout.nodes > 1 and layout.dp == 1:
        values["distributed_executor_backend"] = "mp"
    return values


def node_argv(site: Site, req: LaunchRequest, layout: Layout) -> tuple[list[Word], list[Word]]:
    """(head argv, worker argv): everything after the runtime prefix, per role. With DP the
    workers are headless engines of DP ranks (:func:`_dp_topology`), else headless workers of
    the head's one engine."""
    values = dict(req.vllm_options)
    if values.get("dtype") is not None:
        values["dtype"] = resolve_dtype(str(values["dtype"]))
    values.update(_layout_values(layout))
    model: Word = path_word(req.model)
    if _staged(site, req) is not None:
        model = Var(MODEL_VAR)  # the node's copy, or the model itself when it could not copy
        if values.get("served_model_name") is None and not _names_served_model(req.vllm_args):
            values["served_model_name"] = req.model  # the API name stays the model's
    common: list[Word] = ["serve", model, *vllm_flags.flag_argv(values)]
    common += [*site.engine.extra_args, *req.vllm_args]
    f = vllm_flags.flag
    topo, worker_only = _node_topology(layout)
    api: list[Word] = [f("host"), "0.0.0.0", f("port"), Var("HPCSERVE_API_PORT")]
    head = [*common, *topo, *api]
    worker = [*common, *topo, *worker_only, *api, f("headless")]
    return head, worker


#: The shell variable holding the model path ``vllm serve`` gets when the site stages models.
MODEL_VAR = "HPCSERVE_MODEL"


def _staged(site: Site, req: LaunchRequest) -> str | None:
    """The node-local copy of the model (:func:`hpcserve.launch.caches.staged_model_dir`)."""
    revision = req.vllm_options.get("revision")
    return caches.staged_model_dir(site, req.model, None if revision is None else str(revision))


def _names_served_model(args: Sequence[str]) -> bool:
    return any(vllm_flags.table_name(a) == "served_model_name" for a in args)


def _stage_context(site: Site, req: LaunchRequest) -> dict[str, Any] | None:
    """What the node role needs to stage the model, or None when the site does not."""
    dest = _staged(site, req)
    if dest is None:
        return None
    revision = req.vllm_options.get("revision")
    return {
        "model": path_word(req.model),
        "dest": path_word(dest),
        "revision": "" if revision is None else str(revision),
        "mark": caches.STAGED_MARK,
    }


def _cache_dirs(site: Site) -> list[Word]:
    """Directories the node role makes before vLLM starts (a container binds only what exists)."""
    root = caches.compile_cache_root(site)
    return [] if root is None else [path_word(root)]


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


def cpus_per_task(site: Site, layout: Layout) -> int | None:
    """CPUs the one task on each node asks for (``--cpus-per-task``): the node's share for the
    GPUs the job uses there, ``node.cpus × ranks per node / node.gpus`` (all of a node's cores
    when the job uses all its GPUs); None when the site does not say how many cores a node has.

    Without it SLURM gives each task one CPU, and vLLM's workers (one process per GPU, plus
    the API server and the engine core on the head) would all share it. The launcher passes
    it on to srun as ``SRUN_CPUS_PER_TASK``: since SLURM 22.05 srun no longer takes
    ``--cpus-per-task`` from the job's allocation (RELEASE_NOTES of 22.05, srun(1)
    "SRUN_CPUS_PER_TASK").
    """
    node = site.node
    if not node.cpus:
        return None
    return max(1, node.cpus * layout.ranks_per_node // node.gpus)


def launcher_context(
    site: Site, req: LaunchRequest, program: NodeProgram | None = None
) -> dict[str, Any]:
    """Everything the template needs, decided here (an empty ``job_dir`` is the default one;
    ``program``: every node runs that instead of ``vllm serve``)."""
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
        "cpus_per_task": cpus_per_task(site, layout),
    }
    if absolute:
        defaults["output"] = f"{req.job_dir.rstrip('/')}/{jobrecord.BATCH_LOG}"
        defaults["chdir"] = req.job_dir.rstrip("/")
    opts = merged(defaults, req.sbatch)
    if opts["nodes"] != layout.nodes:
        raise UsageError("use --nodes, not --sbatch-arg nodes=...")
    directives = sbatch_directives(**opts, extra=sched.extra_sbatch)
    prefix, env_file = runtime_command(site, program.program if program else None)
    head, worker = node_argv(site, req, layout)
    if program is not None:
        head = worker = list(program.argv)
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
        "module_inits": list(MODULE_INITS),
        "env": _env(site),
        "head_interface": site.network.head_interface or "",
        "nodes": int(layout.nodes),
        "dp_local": int(layout.dp_local) if layout.dp > 1 else 0,
        "srun_wait": SRUN_WAIT_S,
        "port_base": int(site.engine.port),
        "port_spread": PORT_SPREAD,
        "master_port_gap": MASTER_PORT_GAP,
        "head_argv": [*prefix, *head],
        "worker_argv": [*prefix, *worker],
        "secrets_via_env_file": env_file,
        "cpu_bind": site.engine.cpu_bind if site.engine.cpu_bind != "none" else "",
        "cache_dirs": _cache_dirs(site),
        "stage": _stage_context(site, req) if program is None else None,
        "model_var": MODEL_VAR,
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


def render(site: Site, req: LaunchRequest, program: NodeProgram | None = None) -> str:
    """The launcher script text for ``req`` on ``site`` (``program``: :class:`NodeProgram`)."""
    return render_template(TEMPLATE, launcher_context(site, req, program))


def render_template(name: str, ctx: dict[str, Any]) -> str:
    """Template ``name`` of ``templates/`` with ``ctx``, through the launcher's environment
    (its quoting filters, strict undefined names, the bytecode cache)."""
    return str(_environment().get_template(name).render(**ctx))
