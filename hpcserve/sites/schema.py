"""The site-config schema: one set of dataclasses that drives validation, rendering and docs.

A site file is YAML whose keys mirror these dataclasses. Each field's ``metadata`` carries its
documentation (``doc``), and optionally ``choices``, ``min`` and ``example``. The loader in
:mod:`hpcserve.sites.loader` validates a file against these classes (types, choices, unknown keys
with a did-you-mean), the renderer reads the resulting :class:`Site`, and ``hpcserve sites schema``
prints the reference from the same metadata. Add a field here and all three follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def meta(doc: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: ``doc`` plus optional ``choices``, ``min``, ``example``."""
    return {"doc": doc, **extra}


@dataclass
class LoginHost:
    """One login node reachable with SSH."""

    host: str = field(metadata=meta("Login host name, e.g. login.lxp.lu.", example="login.lxp.lu"))
    port: int = field(default=22, metadata=meta("SSH port of the login host.", min=1))
    user: str | None = field(
        default=None, metadata=meta("SSH user; unset means ~/.ssh/config or the local user.")
    )
    jump: str | None = field(
        default=None,
        metadata=meta("Jump host(s) as OpenSSH ProxyJump: [user@]host[:port][,...]."),
    )
    identity_file: str | None = field(
        default=None, metadata=meta("SSH private key; unset means ~/.ssh/config or the agent.")
    )
    known_hosts: str | None = field(
        default=None,
        metadata=meta(
            "known_hosts file that pins this host's key; unset means ~/.ssh/known_hosts."
        ),
    )


@dataclass
class Scheduler:
    """SLURM defaults for this site; command-line options override them."""

    account: str | None = field(default=None, metadata=meta("Default --account (project)."))
    partition: str | None = field(default=None, metadata=meta("Default --partition."))
    qos: str | None = field(default=None, metadata=meta("Default --qos."))
    time: str = field(default="01:00:00", metadata=meta("Default --time limit, [D-]HH:MM:SS."))
    constraint: str | None = field(default=None, metadata=meta("Default --constraint."))
    gpus_directive: str = field(
        default="gres",
        metadata=meta(
            "How GPUs are requested: 'gres' (--gres=gpu:N), 'gpus-per-node' "
            "(--gpus-per-node=N) or 'none' (whole nodes, nothing to ask).",
            choices=["gres", "gpus-per-node", "none"],
        ),
    )
    exclusive: bool = field(default=True, metadata=meta("Request whole nodes (--exclusive)."))
    extra_sbatch: list[str] = field(
        default_factory=list,
        metadata=meta("Extra #SBATCH options, each like '--hint=nomultithread'."),
    )
    submit: str = field(
        default="auto",
        metadata=meta(
            "Where sbatch runs: 'local' (this machine), 'ssh' (the first login host) or 'auto' "
            "(a site with login hosts: here only on one of its login_hostnames, else through "
            "SSH; a site without: local when sbatch is on PATH).",
            choices=["auto", "local", "ssh"],
        ),
    )
    login_hostnames: list[str] = field(
        default_factory=list,
        metadata=meta(
            "Hostname patterns (shell globs) of the site's own login nodes: with submit 'auto', "
            "a machine whose hostname matches one submits with its own sbatch.",
            example=["login*.lxp.lu"],
        ),
    )


@dataclass
class Node:
    """Shape of one compute node."""

    gpus: int = field(metadata=meta("GPUs per node; becomes the tensor-parallel size.", min=1))
    gpu_model: str = field(
        metadata=meta(
            "GPU model. A name from the GPU table (T4, V100-16GB, V100-32GB, A10, L4, L40S, "
            "A100-40GB, A100-64GB, A100-80GB, H100, H200, GH200, B200, MI250X, MI300X; "
            "docs/plan.md) gives memory and compute capability; any other name (or 'cpu' "
            "for a CPU build) needs gpu_memory_mib or gpu_memory_gb.",
            example="A100-40GB",
        )
    )
    gpu_memory_mib: int | None = field(
        default=None,
        metadata=meta(
            "Memory per GPU as nvidia-smi prints it (memory.total in MiB, e.g. 81920); "
            "overrides the GPU table.",
            min=1,
        ),
    )
    gpu_memory_gb: float | None = field(
        default=None,
        metadata=meta(
            "Memory per GPU as sold ('80GB'), read as GiB like vLLM (80 -> 81920 MiB); "
            "overrides the GPU table. Give this or gpu_memory_mib, not both.",
            min=0.1,
        ),
    )
    cpus: int | None = field(default=None, metadata=meta("CPU cores per node.", min=1))
    memory_gb: float | None = field(default=None, metadata=meta("Host RAM per node in GB.", min=1))


@dataclass
class Container:
    """How vLLM is started on a node."""

    runtime: str = field(
        default="apptainer",
        metadata=meta(
            "apptainer, singularity, or none (vLLM from a host venv).",
            choices=["apptainer", "singularity", "none"],
        ),
    )
    image: str | None = field(
        default=None, metadata=meta("Path of the .sif image on the cluster (runtime != none).")
    )
    gpu_flag: str = field(
        default="--nv",
        metadata=meta("GPU flag of the runtime.", choices=["--nv", "--nvccli", "--rocm", ""]),
    )
    binds: list[str] = field(
        default_factory=list, metadata=meta("Extra bind mounts, each 'src[:dst[:opts]]'.")
    )
    venv: str | None = field(
        default=None, metadata=meta("Python venv whose bin/vllm is used when runtime is none.")
    )


@dataclass
class Network:
    """How nodes reach each other."""

    head_interface: str | None = field(
        default=None,
        metadata=meta("Interface whose IPv4 address the head publishes to workers and tunnels."),
    )
    nccl_socket_ifname: str | None = field(default=None, metadata=meta("NCCL_SOCKET_IFNAME."))
    gloo_socket_ifname: str | None = field(default=None, metadata=meta("GLOO_SOCKET_IFNAME."))
    nccl_ib_hca: str | None = field(default=None, metadata=meta("NCCL_IB_HCA, e.g. mlx5."))
    nccl_env: dict[str, str] = field(
        default_factory=dict, metadata=meta("Extra NCCL_* environment, name -> value.")
    )


@dataclass
class Storage:
    """Where models and job files live on the cluster."""

    hf_cache: str | None = field(
        default=None, metadata=meta("Shared HF_HOME visible from login and compute nodes.")
    )
    offline: bool = field(
        default=False,
        metadata=meta("Compute nodes have no internet: sets HF_HUB_OFFLINE=1 in the job."),
    )
    workdir: str = field(
        default="~/hpcserve-jobs",
        metadata=meta("Directory on the shared filesystem for per-job directories and logs."),
    )
    compile_cache: bool = field(
        default=True,
        metadata=meta(
            "Reuse vLLM's compilation cache (torch.compile artefacts, Triton kernels) across "
            "this site's jobs: every node exports VLLM_CACHE_ROOT and TRITON_CACHE_DIR under "
            "compile_cache_dir/vllm-<engine.vllm_version>, so a later job of the same model, "
            "layout and vLLM loads what an earlier one compiled. false: vLLM's own defaults."
        ),
    )
    compile_cache_dir: str | None = field(
        default=None,
        metadata=meta(
            "Shared directory for that cache, visible from every compute node (unset: "
            "<workdir>/vllm-cache).",
            example="/project/p200000/vllm-cache",
        ),
    )
    stage_dir: str | None = field(
        default=None,
        metadata=meta(
            "Node-local directory (local SSD, /tmp): each node copies the model there before "
            "vLLM starts and serves the copy, reused by later jobs on that node. Give a path "
            "that is the same for every job (not a per-job $TMPDIR): vLLM keys its "
            "compilation cache on the model path. Unset: weights are read where they are.",
            example="/local/scratch",
        ),
    )


@dataclass
class Engine:
    """vLLM process settings that depend on the site, not on the model."""

    vllm: str = field(default="vllm", metadata=meta("The vllm executable (inside the container)."))
    vllm_version: str | None = field(
        default=None,
        metadata=meta(
            "vLLM release the image or venv holds, e.g. 0.26.0: `plan` applies that release's "
            "memory rules (default utilisation, KV token count); unset: the newest known.",
            example="0.26.0",
        ),
    )
    port: int = field(default=8000, metadata=meta("Lowest API port tried on the head.", min=1024))
    env: dict[str, str] = field(
        default_factory=dict, metadata=meta("Extra environment for vLLM, name -> value.")
    )
    cpu_bind: str = field(
        default="none",
        metadata=meta(
            "CPU builds only, for several nodes sharing one host: bind each node's vLLM to one "
            "of the cores its step may use, through VLLM_CPU_OMP_THREADS_BIND: 'node-rank' "
            "picks core (node rank in the job mod cores), 'node-name' core (the number that ends "
            "the node's hostname, minus 1, mod cores), so that jobs of one node each on "
            "different nodes also use different cores.",
            choices=["none", "node-rank", "node-name"],
        ),
    )
    extra_args: list[str] = field(
        default_factory=list, metadata=meta("Extra `vllm serve` arguments for every job here.")
    )
    layout: str = field(
        default="pp-across-nodes",
        metadata=meta(
            "How ranks span nodes: 'pp-across-nodes' (TP = GPUs per node, PP = nodes) or "
            "'tp-across-nodes' (TP = GPUs per node x nodes, PP = 1; the CPU lab, whose vLLM "
            "build fails PP).",
            choices=["pp-across-nodes", "tp-across-nodes"],
        ),
    )


@dataclass
class Site:
    """One cluster."""

    name: str = field(metadata=meta("Short name used with --site.", example="meluxina"))
    node: Node = field(metadata=meta("Shape of one compute node."))
    description: str = field(default="", metadata=meta("One line shown by `sites list`."))
    login: list[LoginHost] = field(
        default_factory=list, metadata=meta("Login nodes, tried in order.")
    )
    scheduler: Scheduler = field(default_factory=Scheduler)
    modules: list[str] = field(
        default_factory=list, metadata=meta("Arguments of `module load` lines, one per entry.")
    )
    container: Container = field(default_factory=Container)
    network: Network = field(default_factory=Network)
    storage: Storage = field(default_factory=Storage)
    engine: Engine = field(default_factory=Engine)
    sources: list[str] = field(
        default_factory=list, metadata=meta("Where the node facts come from (URLs, documents).")
    )
    must_set: dict[str, str] = field(
        default_factory=dict,
        metadata=meta(
            "Values each user must supply, dotted field -> why (e.g. scheduler.account). "
            "submit refuses and render warns while one is unset, naming the option or the "
            "user-file line that sets it; a container image and, with storage.offline, "
            "storage.hf_cache are must-haves on every site."
        ),
    )
    unconfirmed: list[str] = field(
        default_factory=list,
        metadata=meta("Dotted field names whose value could not be confirmed from a source."),
    )
    path: str | None = field(
        default=None,
        metadata=meta("Set by the loader: the file this site came from.", internal=True),
    )
    provenance: dict[str, str] = field(
        default_factory=dict,
        metadata=meta(
            "Set by the loader: dotted field -> where its value was set "
            "('shipped: FILE:LINE', 'user: FILE:LINE', 'option: --image').",
            internal=True,
        ),
    )
