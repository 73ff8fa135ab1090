"""What the probe job's answers say, as doctor's step-3 checks, one function per check."""

from __future__ import annotations

from hpcserve.doctor.checks import Check, failed, passed, skipped
from hpcserve.doctor.probe import NodeResult, ProbeResult, bus_bandwidth
from hpcserve.launch.render import MASTER_PORT_GAP, PORT_SPREAD
from hpcserve.sites.schema import Site

PROBE_JOB = "probe job"
NODES = "nodes"
INFINIBAND = "InfiniBand"
INTERFACE = "head interface"
TMP = "node-local /tmp"
SHARED = "shared job directory"
TCP = "TCP to the head"
COLLECTIVE = "collective"
NCCL = "NCCL transport"
BANDWIDTH = "all_reduce bandwidth"


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):g} MiB"


def _no_answer_fix(tail: str) -> str:
    if "python3" in tail and ("No such file" in tail or "not found" in tail):
        return "the runtime has no python3: the venv or image must hold a python3 (vLLM's own)"
    return "read the logs named above in the job directory"


def probe_job_check(res: ProbeResult) -> Check:
    """The probe job ran and every node answered."""
    alloc = res.allocation.to_dict() if res.allocation else {}
    if res.problem:
        return failed(PROBE_JOB, res.problem, res.problem_fix or "", allocation=alloc)
    silent = [k for k, a in res.answers.items() if a is None]
    if silent:
        tails = "; ".join(f"{n}: {t.splitlines()[-1]}" for n, t in res.log_tails.items())
        return failed(
            PROBE_JOB,
            f"node(s) {', '.join(map(str, silent))} wrote no answer in {res.job_dir}"
            + (f" ({tails})" if tails else ""),
            _no_answer_fix(" ".join(res.log_tails.values())),
            allocation=alloc,
            logs=res.log_tails,
        )
    broken = [a for a in res.present() if a.error]
    if broken:
        a = broken[0]
        return failed(
            PROBE_JOB,
            f"the probe failed on node {a.rank} ({a.hostname}): {a.error}",
            f"read node-{a.rank}.log in {res.job_dir}",
            allocation=alloc,
        )
    where = res.allocation.nodelist if res.allocation and res.allocation.nodelist else "?"
    job = res.allocation.job_id if res.allocation else "?"
    return passed(
        PROBE_JOB,
        f"job {job} ran on {where} ({res.nodes} node(s)); {res.job_dir}",
        allocation=alloc,
    )


def _visible(a: NodeResult) -> int:
    count = a.gpus.get("count")
    if isinstance(count, int):
        return count
    cvd = a.gpus.get("cuda_visible_devices") or ""
    return len([d for d in str(cvd).split(",") if d.strip()])


def nodes_check(site: Site, res: ProbeResult) -> Check:
    """Per node: hostname, the CPUs its step gets, the GPUs visible inside the runtime."""
    parts = []
    for a in res.present():
        names = sorted(set(a.gpus.get("names") or []))
        gpu = f"{_visible(a)} GPU(s)" + (f" {', '.join(names)}" if names else "")
        parts.append(f"node {a.rank} {a.hostname}: {a.cpus} CPU(s), {gpu}")
    detail = "; ".join(parts)
    if site.node.gpu_model.lower() == "cpu":
        return passed(NODES, detail + " (a CPU site: no GPU expected)")
    short = [a for a in res.present() if _visible(a) < site.node.gpus]
    if short:
        a = short[0]
        return failed(
            NODES,
            f"node {a.rank} sees {_visible(a)} GPU(s), the site has {site.node.gpus} per node: "
            + detail,
            "ask for the GPUs (scheduler.gpus_directive) and pass them into the container "
            "(container.gpu_flag, e.g. --nv); `nvidia-smi` in a job shows what a node has",
        )
    return passed(NODES, detail)


def infiniband_check(res: ProbeResult) -> Check:
    """InfiniBand/RoCE devices and their port state on every node."""
    found = {a.rank: a.infiniband for a in res.present() if a.infiniband}
    if not found:
        return skipped(INFINIBAND, "no InfiniBand or RoCE devices on the nodes: NCCL uses sockets")
    for rank, ports in found.items():
        if not any(p.get("state") == "ACTIVE" for p in ports):
            states = ", ".join(f"{p['device']}:{p['port']} {p['state']}" for p in ports)
            return failed(
                INFINIBAND,
                f"node {rank} has no ACTIVE port ({states})",
                "ask the site about the link (`ibstat` on the node); meanwhile set "
                "network.nccl_ib_hca to the devices that are up",
            )
    lacking = [a.rank for a in res.present() if not a.infiniband]
    shown = sorted(
        {
            f"{p['device']}:{p['port']} {p['state']} ({p.get('link_layer') or '?'})"
            for ps in found.values()
            for p in ps
        }
    )
    if lacking:
        return failed(
            INFINIBAND,
            f"node(s) {lacking} have no InfiniBand device, others do ({', '.join(shown)})",
            "ask for nodes of one kind (scheduler.constraint or partition)",
        )
    return passed(INFINIBAND, ", ".join(shown))


def interface_check(site: Site, res: ProbeResult) -> Check:
    """The head interface exists on every node and has an IPv4 address (what the launcher
    publishes as the head's address and each node's VLLM_HOST_IP)."""
    name = site.network.head_interface
    nodes = res.present()
    if not name:
        addrs = ", ".join(f"node {a.rank} {a.vllm_host_ip}" for a in nodes)
        return passed(INTERFACE, f"not set: the launcher uses `hostname -I`'s first ({addrs})")
    bad = [a for a in nodes if not a.interface.get("addr")]
    if bad:
        a = bad[0]
        have = ", ".join(f"{n} {ip}" for n, ip in a.interfaces) or "none"
        return failed(
            INTERFACE,
            f"{name} has no IPv4 address on node {a.rank} ({a.hostname}); its interfaces: {have}",
            "set network.head_interface (and nccl_socket_ifname, gloo_socket_ifname) to the "
            "interface the nodes reach each other on, one every node has",
        )
    differ = [a for a in nodes if a.vllm_host_ip and a.vllm_host_ip != a.interface["addr"]]
    if differ:
        a = differ[0]
        return failed(
            INTERFACE,
            f"{name} has {a.interface['addr']} on node {a.rank}, but the launcher published "
            f"{a.vllm_host_ip} (it could not read {name}'s address and fell back to "
            "`hostname -I`)",
            "the launcher reads addresses with `ip -4 -o addr show dev IFACE`: the nodes need "
            "the `ip` command (iproute2) on PATH",
        )
    addrs = ", ".join(f"node {a.rank} {a.interface['addr']}" for a in nodes)
    return passed(INTERFACE, f"{name}: {addrs}")


def tmp_check(res: ProbeResult) -> Check:
    bad = [a for a in res.present() if not a.tmp.get("writable")]
    if bad:
        a = bad[0]
        return failed(
            TMP,
            f"/tmp is not writable on node {a.rank}: {a.tmp.get('error')}",
            "the launcher keeps its port locks in $TMPDIR or /tmp: set TMPDIR in engine.env "
            "to a node-local directory you can write",
        )
    return passed(TMP, "writable on every node")


def shared_check(res: ProbeResult) -> Check:
    """Every node's file reached the head, and the head's reached every worker."""
    head = res.head
    missing = list(head.shared.get("missing") or []) if head else []
    blind = [a.rank for a in res.present() if a.rank and a.shared.get("head_file_seen") is False]
    if missing or blind:
        what = (f"the head did not see node(s) {missing}'s files" if missing else "") + (
            f"; node(s) {blind} did not see the head's" if blind else ""
        )
        return failed(
            SHARED,
            what.lstrip("; ") + f" in {res.job_dir}",
            "storage.workdir must be on a filesystem every node mounts at the same path",
        )
    return passed(SHARED, f"{res.job_dir} seen by all {res.nodes} node(s)")


def _port_ranges(site: Site) -> str:
    base = site.engine.port
    top = base + MASTER_PORT_GAP
    return f"API {base}-{base + PORT_SPREAD - 1}, master {top}-{top + PORT_SPREAD - 1}"


def tcp_check(site: Site, res: ProbeResult) -> Check:
    """Every worker connects to the head on the claimed API and master ports."""
    if res.nodes < 2:
        return skipped(TCP, "one node: no worker to connect")
    head = res.head
    assert head is not None
    errors = head.tcp.get("errors") or {}
    if errors:
        return failed(
            TCP,
            "the head could not listen: " + "; ".join(f"{k}: {v}" for k, v in errors.items()),
            "another process holds the claimed port on the head node; run doctor again",
        )
    ports = head.tcp.get("ports") or {}
    for a in res.present():
        for port_name, outcome in (a.tcp.get("connect") or {}).items():
            if outcome != "ok":
                return failed(
                    TCP,
                    f"node {a.rank} cannot connect to the head {a.tcp.get('head')}:"
                    f"{ports.get(port_name)} ({port_name} port): {outcome}",
                    f"open the launcher's ports between the nodes ({_port_ranges(site)}; "
                    "from engine.port), or set engine.port to a range that is open; check that "
                    "network.head_interface is on the nodes' own network",
                )
    shown = ", ".join(f"{k} {v}" for k, v in ports.items())
    # the head's address as the workers dialled it (the head's own answer does not carry it)
    dialled = next((a.tcp.get("head") for a in res.present() if a.rank and a.tcp.get("head")), None)
    return passed(TCP, f"{res.nodes - 1} worker(s) reached {dialled or 'the head'} ({shown})")


def _collective(res: ProbeResult) -> dict[str, object]:
    return res.head.collective if res.head else {}


def collective_check(res: ProbeResult) -> Check:
    """torch.distributed all_reduce across the nodes: NCCL with a GPU, gloo otherwise."""
    col = _collective(res)
    if col.get("skipped"):
        return skipped(COLLECTIVE, str(col["skipped"]))
    errors = [
        (a.rank, a.collective.get("error")) for a in res.present() if a.collective.get("error")
    ]
    backend = col.get("backend") or "?"
    if errors:
        rank, err = errors[0]
        return failed(
            COLLECTIVE,
            f"{backend} all_reduce failed on node {rank}: {err}",
            "set network.nccl_socket_ifname / gloo_socket_ifname to the interface the nodes "
            "reach each other on; `hpcserve nccl` on the job directory's nccl/ says more",
        )
    if not col.get("ok"):
        return failed(
            COLLECTIVE,
            f"{backend} all_reduce gave a wrong sum across {res.nodes} node(s)",
            "report it to the site: the interconnect corrupts data",
        )
    why = (
        " (no GPU: gloo, as vLLM's CPU build uses; NCCL is not tried)" if backend == "gloo" else ""
    )
    return passed(COLLECTIVE, f"{backend} all_reduce across {res.nodes} node(s) is correct{why}")


def nccl_check(res: ProbeResult) -> Check:
    """The probe's NCCL log through ``hpcserve nccl``'s verdict."""
    from hpcserve.nccl import one_line

    backend = _collective(res).get("backend")
    if backend != "nccl":
        return skipped(NCCL, f"no NCCL collective ran ({backend or 'none'}): no log to judge")
    report = res.nccl
    if report is None or not report.found:
        return failed(
            NCCL,
            f"NCCL wrote no debug lines in {res.job_dir}/nccl",
            "the launcher exports NCCL_DEBUG=INFO and NCCL_DEBUG_FILE: check engine.env "
            "does not override them",
        )
    line = one_line(report)
    data = report.to_dict()
    if report.verdict in ("degraded", "failed"):
        fixes = "; ".join(c.fix for c in report.causes) or "see `hpcserve nccl` on the log"
        return failed(NCCL, line, fixes, report=data)
    version = f"NCCL {report.nccl_version}" if report.nccl_version else "NCCL"
    if report.verdict in ("unknown", "single-node") and res.nodes < 2:
        return passed(
            NCCL, f"{version} initialised on one node: no cross-node link to judge", report=data
        )
    if report.verdict == "unknown":
        return skipped(
            NCCL, f"{version} initialised; the log gives no verdict ({line})", report=data
        )
    return passed(NCCL, line, report=data)


def bandwidth_check(res: ProbeResult) -> Check:
    """all_reduce bus bandwidth for each message size the probe timed."""
    col = _collective(res)
    timings = col.get("timings")
    if not isinstance(timings, list) or not timings:
        return skipped(BANDWIDTH, "the probe timed no all_reduce")
    rows: list[dict[str, float]] = []
    parts = []
    for t in timings:
        alg, bus = bus_bandwidth(int(t["bytes"]), float(t["seconds"]), res.nodes)
        rows.append({"bytes": int(t["bytes"]), "algbw_gbps": alg / 1e9, "busbw_gbps": bus / 1e9})
        parts.append(f"{_mib(int(t['bytes']))} {bus / 1e9:.2f} GB/s")
    if res.nodes < 2:
        shown = ", ".join(f"{_mib(int(r['bytes']))} algbw {r['algbw_gbps']:.2f} GB/s" for r in rows)
        return passed(BANDWIDTH, f"one rank, no bus traffic: {shown}", sizes=rows)
    backend = col.get("backend") or "?"
    return passed(BANDWIDTH, f"{backend} busbw: " + ", ".join(parts), sizes=rows)
