"""What hpcserve remembers about a submitted job, and where the job's files are on the cluster.

A job directory on the cluster's shared filesystem holds everything one job writes::

    JOBDIR/launcher.sbatch    the rendered launcher (per node: `bash launcher.sbatch node`)
    JOBDIR/secrets.env        0600: HF_TOKEN / VLLM_API_KEY, sourced by the launcher, never printed
    JOBDIR/slurm-%j.out       the batch step's own output
    JOBDIR/node-K.log         output of node K's vLLM process (K = SLURM_NODEID, 0 = head)
    JOBDIR/nccl/              NCCL_DEBUG_FILE output, one file per process
    JOBDIR/endpoint.json      written by the batch step once it chose them:
                              {"head_addr", "head_host", "api_port", "master_port", "job_id"}
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

LAUNCHER = "launcher.sbatch"
SECRETS = "secrets.env"
ENDPOINT = "endpoint.json"
NCCL_DIR = "nccl"
BATCH_LOG = "slurm-%j.out"


def node_log_name(node_rank: int) -> str:
    """File name of node ``node_rank``'s vLLM log inside the job directory."""
    return f"node-{node_rank}.log"


@dataclass
class JobRecord:
    """One job in the local registry (see :mod:`hpcserve.jobs.registry`)."""

    job_id: str
    site: str
    model: str
    nodes: int
    tp: int
    pp: int
    job_dir: str  # on the cluster (or this machine for local submission)
    submitted_at: float  # unix time
    remote: bool  # True when sbatch ran on the login host through SSH
    name: str | None = None
    dp: int = 1  # data-parallel ranks (vLLM --data-parallel-size)
    head_addr: str | None = None  # filled from endpoint.json once the job runs
    head_host: str | None = None
    api_port: int | None = None
    master_port: int | None = None
    api_key_file: str | None = None  # local 0600 file with the job's API key, if any
    served_model_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> str:
        """Path of ``name`` inside this job's directory (on the cluster)."""
        return posixpath.join(self.job_dir, name)

    def node_log(self, node_rank: int) -> str:
        return self.path(node_log_name(node_rank))

    def batch_log(self) -> str:
        return self.path(BATCH_LOG.replace("%j", self.job_id))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})
