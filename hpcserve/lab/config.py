"""The lab's layout and the text of its config files: pure functions, no side effects.

One :class:`LabLayout` names every path, address and name the lab uses; the renderers turn it
into ``slurm.conf``, ``cgroup.conf`` and ``sshd_config``.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

STATE_DIR = Path(os.environ.get("HPCSERVE_LAB_STATE", "/var/lib/hpcserve-lab"))
CACHE_DIR = Path(os.environ.get("HPCSERVE_LAB_CACHE", "/var/cache/hpcserve-lab"))
VLLM_VERSION = "0.32.0"
CLUSTER_NAME = "hpcserve-lab"
DB_NAME = "hpcserve_lab_acct"
LAB_ACCOUNT = "lab"  # the account every lab user belongs to (accounting enforces associations)
MAX_JOB_ID = 0x03FF0000  # slurm.conf MaxJobId's default (67043328); ids wrap to FirstJobId past it


@dataclass(frozen=True)
class LabNode:
    """One compute node: a SLURM node in its own network namespace."""

    name: str
    netns: str
    addr: str
    veth: str


@dataclass(frozen=True)
class LabLayout:
    """Every name, address and path of one lab."""

    nodes: int = 2
    state_dir: Path = STATE_DIR
    cache_dir: Path = CACHE_DIR
    hostname: str = field(default_factory=socket.gethostname)
    prefix: str = "10.77.0"
    bridge: str = "hpcs-br0"
    ns_prefix: str = "hpcs-node"
    veth_prefix: str = "hpcs-v"
    ifname: str = "eth0"
    cpus_per_node: int = 2
    gpus_per_node: int = 2
    accounting: bool = field(
        default_factory=lambda: os.environ.get("HPCSERVE_LAB_ACCOUNTING", "1") != "0"
    )
    dbd_port: int = 6819
    db_port: int = 3307
    partition: str = "lab"
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 2222
    ssh_user: str = "root"

    @property
    def bridge_addr(self) -> str:
        return f"{self.prefix}.1"

    @property
    def node_list(self) -> list[LabNode]:
        return [
            LabNode(
                f"node{k}",
                f"{self.ns_prefix}{k}",
                f"{self.prefix}.{10 + k}",
                f"{self.veth_prefix}{k}",
            )
            for k in range(1, self.nodes + 1)
        ]

    @property
    def etc(self) -> Path:
        return self.state_dir / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def login_dir(self) -> Path:
        return self.state_dir / "login"

    @property
    def identity_file(self) -> Path:
        return self.login_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.login_dir / "known_hosts"

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    def node_dir(self, node: str) -> Path:
        """A node's own files: its /tmp (bind-mounted in its mount namespace)."""
        return self.state_dir / "node" / node

    @property
    def gpu_devices(self) -> list[Path]:
        """The GRES device files (character devices without a driver behind them)."""
        return [self.state_dir / "dev" / f"gpu{i}" for i in range(self.gpus_per_node)]

    @property
    def modulefiles(self) -> Path:
        """MODULEPATH of the lab's Lmod: the module ``vllm/<version>`` puts the venv on PATH."""
        return self.cache_dir / "modulefiles"

    @property
    def vllm_module(self) -> str:
        return f"vllm/{VLLM_VERSION}"

    @property
    def venv(self) -> Path:
        return self.cache_dir / "vllm-venv"

    @property
    def model(self) -> Path:
        return self.cache_dir / "models" / "tiny-llama"

    @property
    def job_state(self) -> Path:
        """slurmctld's job state file (StateSaveLocation/job_state)."""
        return self.state_dir / "slurmctld" / "job_state"

    @property
    def kept_job_state(self) -> Path:
        """Where ``down.sh`` copies :attr:`job_state` before it removes the state dir."""
        return self.cache_dir / "slurmctld" / "job_state"

    @property
    def next_job_id_file(self) -> Path:
        """The job-id counter kept across ``lab down``/``lab up`` (one decimal number)."""
        return self.cache_dir / "slurmctld" / "next_job_id"

    def script_env(self) -> dict[str, str]:
        """The environment the shell scripts read."""
        return {
            "LAB_STATE": str(self.state_dir),
            "LAB_CACHE": str(self.cache_dir),
            "LAB_VENV": str(self.venv),
            "LAB_MODEL": str(self.model),
            "LAB_VLLM_VERSION": VLLM_VERSION,
            "LAB_NODES": str(self.nodes),
            "LAB_PREFIX": self.prefix,
            "LAB_BRIDGE": self.bridge,
            "LAB_NS_PREFIX": self.ns_prefix,
            "LAB_VETH_PREFIX": self.veth_prefix,
            "LAB_IFNAME": self.ifname,
            "LAB_SSH_HOST": self.ssh_host,
            "LAB_SSH_PORT": str(self.ssh_port),
            "LAB_GPUS": str(self.gpus_per_node),
            "LAB_ACCOUNTING": "1" if self.accounting else "0",
            "LAB_DB_PORT": str(self.db_port),
            "LAB_CLUSTER": CLUSTER_NAME,
            "LAB_ACCOUNT": LAB_ACCOUNT,
            "LAB_MODULEFILES": str(self.modulefiles),
            "LAB_VLLM_MODULE": self.vllm_module,
        }


def job_id_sequence(job_state: bytes) -> int | None:
    """The next job id slurmctld would give, from the header of its ``job_state`` file.

    slurmctld (``dump_all_job_state`` in src/slurmctld/job_mgr.c) starts the file with a packed
    string (big-endian u32 length counting the NUL, then the bytes: ``PROTOCOL_VERSION``), the
    u16 protocol version, the u64 save time and the u32 ``job_id_sequence`` it keeps "so that the
    job id remains persistent even after slurmctld is restarted". None when that is not there.
    """
    try:
        (size,) = struct.unpack_from(">I", job_state, 0)
        if job_state[4 : 4 + size] != b"PROTOCOL_VERSION\0":
            return None
        (seq,) = struct.unpack_from(">I", job_state, 4 + size + 2 + 8)
    except struct.error:
        return None
    return int(seq) if 0 < seq < MAX_JOB_ID else None


def render_slurm_conf(lay: LabLayout, first_job_id: int = 1) -> str:
    """slurm.conf: a controller on the bridge address, one node per namespace.

    ``first_job_id`` is the counter kept from the last lab (``FirstJobId``): the state dir goes
    with ``lab down``, so slurmctld would otherwise number jobs from 1 again, unlike a real
    cluster, whose StateSaveLocation survives a restart.

    Like a site's GPU nodes: each node has its own hostname (``NodeHostname``, set in its UTS
    namespace), ``gpus_per_node`` GPUs as GRES (``gres.conf`` names a device file for each:
    slurmd 22.05's gpu plugin counts a GPU without one as 0 and sets the node INVAL), and CPU
    binding (task/cgroup with ``ConstrainCores`` + task/affinity). Nodes are shared: cons_tres
    + CR_Core with cores over-subscribed 2:1 (``OverSubscribe=FORCE:2``), so two jobs that each
    ask one GPU and all of a node's cores (as the launcher does) run on the same nodes at once.
    Every slurmd of the lab maps its cores onto the same host CPUs, so confining a step to
    fewer cores than a node has would put the ranks of different nodes on the same CPU. With
    ``accounting`` slurmctld records jobs in slurmdbd (``sacct``) and enforces associations, so
    an account the database does not know is refused at submit.
    """
    s = lay.state_dir
    lines = [
        "# Written by `hpcserve lab up`; removed by `hpcserve lab down`.",
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={lay.hostname}({lay.bridge_addr})",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={s}/munge/munge.socket",
        f"StateSaveLocation={s}/slurmctld",
        f"FirstJobId={first_job_id}",
        f"SlurmdSpoolDir={s}/slurmd/%n",
        f"SlurmctldPidFile={s}/run/slurmctld.pid",
        f"SlurmdPidFile={s}/run/slurmd-%n.pid",
        f"SlurmctldLogFile={s}/log/slurmctld.log",
        f"SlurmdLogFile={s}/log/slurmd-%n.log",
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        "ProctrackType=proctrack/cgroup",
        "TaskPlugin=task/cgroup,task/affinity",
        "GresTypes=gpu",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        # A small lab: run the scheduler every 2 s, not every 60 s (a job submitted while
        # another completes would otherwise wait up to a minute).
        "SchedulerParameters=sched_interval=2,bf_interval=2",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "SwitchType=switch/none",
        *_accounting_lines(lay),
        "JobCompType=jobcomp/none",
        "ReturnToService=2",
        "SlurmdTimeout=30",
        "SlurmctldTimeout=30",
        "InactiveLimit=0",
        "KillWait=10",
        "MinJobAge=300",
        "SlurmdParameters=config_overrides",
    ]
    for n in lay.node_list:
        lines.append(
            f"NodeName={n.name} NodeAddr={n.addr} NodeHostname={n.name} "
            f"CPUs={lay.cpus_per_node} Sockets=1 CoresPerSocket={lay.cpus_per_node} "
            f"ThreadsPerCore=1 RealMemory=1024 Gres=gpu:{lay.gpus_per_node} State=UNKNOWN"
        )
    lines.append(
        f"PartitionName={lay.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP "
        "OverSubscribe=FORCE:2"
    )
    return "\n".join(lines) + "\n"


def _accounting_lines(lay: LabLayout) -> list[str]:
    if not lay.accounting:
        return [
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
        ]
    return [
        "AccountingStorageType=accounting_storage/slurmdbd",
        f"AccountingStorageHost={lay.bridge_addr}",
        f"AccountingStoragePort={lay.dbd_port}",
        # With auth/munge this names the munge socket for slurmdbd connections (slurm.conf(5)).
        f"AccountingStoragePass={lay.state_dir}/munge/munge.socket",
        "AccountingStorageEnforce=associations,limits,qos",
        "JobAcctGatherType=jobacct_gather/linux",
    ]


def render_slurmdbd_conf(lay: LabLayout) -> str:
    """slurmdbd.conf: the accounting daemon on the bridge, its MariaDB on loopback.

    slurmdbd reads it from the directory of ``SLURM_CONF`` and refuses it unless it is owned by
    ``SlurmUser`` with mode 0600 (``slurmdbd.conf(5)``).
    """
    s = lay.state_dir
    return "\n".join(
        [
            "# Written by `hpcserve lab up`; removed by `hpcserve lab down`.",
            "AuthType=auth/munge",
            f"AuthInfo=socket={s}/munge/munge.socket",
            f"DbdHost={lay.hostname}",
            f"DbdAddr={lay.bridge_addr}",
            f"DbdPort={lay.dbd_port}",
            "SlurmUser=root",
            f"PidFile={s}/run/slurmdbd.pid",
            f"LogFile={s}/log/slurmdbd.log",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={lay.db_port}",
            "StorageUser=root",
            f"StorageLoc={DB_NAME}",
            "",
        ]
    )


def render_gres_conf(lay: LabLayout) -> str:
    """gres.conf: the GPUs of every node, one device file each (no autodetection: no NVML)."""
    files = ",".join(str(d) for d in lay.gpu_devices)
    return f"AutoDetect=off\nName=gpu File={files}\n"


def render_hosts(lay: LabLayout) -> str:
    """/etc/hosts inside every node: the node names resolve, as cluster DNS makes them."""
    lines = ["127.0.0.1 localhost", f"{lay.bridge_addr} {lay.hostname} lab-controller"]
    lines += [f"{n.addr} {n.name}" for n in lay.node_list]
    return "\n".join(lines) + "\n"


def render_cgroup_conf() -> str:
    """cgroup.conf: cgroup v1 (this VM mounts v1 controllers; the v2 hierarchy has none), each
    step confined to the cores it was given; memory is not confined (vLLM's CPU build needs
    more than the nodes' declared 1 GiB, and the lab's nodes share one host's memory)."""
    return "CgroupPlugin=cgroup/v1\nConstrainCores=yes\nConstrainRAMSpace=no\nConstrainDevices=no\n"


def render_sshd_config(lay: LabLayout) -> str:
    """sshd_config of the login node: loopback only, keys only, root by key."""
    d = lay.login_dir
    return "\n".join(
        [
            "# Written by `hpcserve lab up`: the lab's login node.",
            f"ListenAddress {lay.ssh_host}:{lay.ssh_port}",
            f"HostKey {d}/ssh_host_ed25519_key",
            f"PidFile {lay.state_dir}/run/sshd.pid",
            f"AuthorizedKeysFile {d}/authorized_keys",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {lay.ssh_user}",
            "UsePAM no",
            "X11Forwarding no",
            "AllowTcpForwarding yes",
            "PermitTunnel no",
            # The login shell finds the lab's SLURM like a real login node finds its own.
            # MODULEPATH: the lab's modules, as a site's login profile sets its own.
            f"SetEnv SLURM_CONF={lay.slurm_conf} MODULEPATH={lay.modulefiles}",
            "Subsystem sftp internal-sftp",
            "LogLevel INFO",
            "",
        ]
    )
