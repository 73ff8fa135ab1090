"""What one node of ``hpcserve doctor``'s probe job runs, in vLLM's place (standalone: the
standard library, and torch when the runtime has it).

The launcher starts it on every node after its own set-up (modules, environment, the head's
address and claimed ports in ``HPCSERVE_*``, ``VLLM_HOST_IP``), inside the runtime vLLM would
use. Each node writes ``OUT/node-K.facts.json`` (what it sees), then the head checks that every
node's file appears (the shared job directory), listens on the claimed API and master ports and
the workers connect to it (TCP), then all run a ``torch.distributed`` all_reduce (NCCL with a
GPU, else gloo), and each writes ``OUT/node-K.json``. Failures are reported in the JSON; the
script itself exits 0 so every node's answer is written.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import glob
import importlib
import json
import os
import socket
import struct
import tempfile
import time
import traceback
from typing import Any

SIOCGIFADDR = 0x8915  # linux/sockios.h


def iface_addr(name: str) -> str | None:
    """The IPv4 address of interface ``name`` (ioctl SIOCGIFADDR), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def interfaces() -> list[list[str]]:
    """[name, IPv4] of every interface that has an IPv4 address."""
    out = []
    for _, name in socket.if_nameindex():
        addr = iface_addr(name)
        if addr:
            out.append([name, addr])
    return out


def infiniband() -> list[dict[str, str]]:
    """Every InfiniBand/RoCE port under /sys/class/infiniband: device, port, state, link."""
    out = []
    for port_dir in sorted(glob.glob("/sys/class/infiniband/*/ports/*")):
        parts = port_dir.split("/")

        def read(name: str, d: str = port_dir) -> str:
            try:
                with open(os.path.join(d, name)) as f:
                    return f.read().strip()
            except OSError:
                return ""

        state = read("state")  # "4: ACTIVE"
        out.append(
            {
                "device": parts[-3],
                "port": parts[-1],
                "state": state.split(":", 1)[-1].strip(),
                "link_layer": read("link_layer"),
            }
        )
    return out


def gpus() -> dict[str, Any]:
    """CUDA_VISIBLE_DEVICES and what torch sees (None where torch is not there)."""
    info: dict[str, Any] = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        torch = importlib.import_module("torch")
    except Exception as e:  # noqa: BLE001  (any failure to import is "no torch")
        info.update(torch=None, torch_error=str(e), count=None, names=[])
        return info
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    info.update(
        torch=torch.__version__,
        count=count,
        names=[torch.cuda.get_device_name(i) for i in range(count)],
    )
    return info


def tmp_writable() -> dict[str, Any]:
    """Whether node-local /tmp takes a file."""
    try:
        with tempfile.NamedTemporaryFile(dir="/tmp", prefix="hpcserve-doctor-") as f:
            f.write(b"x")
            f.flush()
        return {"path": "/tmp", "writable": True, "error": None}
    except OSError as e:
        return {"path": "/tmp", "writable": False, "error": str(e)}


def facts(rank: int, interface: str) -> dict[str, Any]:
    return {
        "rank": rank,
        "hostname": socket.gethostname(),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_list": sorted(os.sched_getaffinity(0)),
        "gpus": gpus(),
        "infiniband": infiniband(),
        "interface": {"name": interface, "addr": iface_addr(interface) if interface else None},
        "interfaces": interfaces(),
        "vllm_host_ip": os.environ.get("VLLM_HOST_IP"),
        "tmp": tmp_writable(),
    }


def write_json(path: str, data: dict[str, Any]) -> None:
    """Write atomically (other nodes poll for it on the shared filesystem)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def wait_for(paths: list[str], timeout: float) -> list[str]:
    """Wait until every path exists; the ones still missing at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [p for p in paths if not os.path.exists(p)]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.2)


def read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


CONNECT_RETRY_S = 10.0  # how long a worker retries a port the head already listens on


class Probe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rank = int(os.environ.get("SLURM_NODEID", "0"))
        self.n = args.nodes
        self.out = args.out
        self.head = os.environ.get("HPCSERVE_HEAD_ADDR", "")
        self.ports = {
            "api": int(os.environ.get("HPCSERVE_API_PORT", "0")),
            "master": int(os.environ.get("HPCSERVE_MASTER_PORT", "0")),
        }
        self.result: dict[str, Any] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    # -- shared directory ----------------------------------------------------------------
    def shared(self) -> None:
        if self.rank == 0:
            want = [self.path(f"node-{k}.facts.json") for k in range(self.n)]
            missing = wait_for(want, self.args.wait)
            seen = [k for k in range(self.n) if want[k] not in missing]
            self.result["shared"] = {
                "seen": seen,
                "missing": sorted(set(range(self.n)) - set(seen)),
            }
        else:
            missing = wait_for([self.path("head.json")], self.args.wait)
            self.result["shared"] = {"head_file_seen": not missing}

    # -- TCP from every worker to the head on the claimed ports --------------------------
    def tcp_head(self) -> None:
        listeners = {}
        errors = {}
        for name, port in self.ports.items():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
                s.listen(64)
                s.settimeout(0.2)
                listeners[name] = s
            except OSError as e:
                errors[name] = f"cannot listen on {port}: {e}"
                s.close()
        write_json(self.path("head.json"), {"listening": sorted(listeners), "errors": errors})
        got: dict[str, list[int]] = {name: [] for name in listeners}
        deadline = time.monotonic() + self.args.wait
        want = self.n - 1
        while time.monotonic() < deadline and any(len(v) < want for v in got.values()):
            if self.workers_gave_up():
                break  # every worker has tried, some in vain: no one else will connect
            for name, s in listeners.items():
                with contextlib.suppress(socket.timeout, OSError):
                    conn, _ = s.accept()
                    with conn:
                        conn.settimeout(5)
                        data = conn.recv(64).decode(errors="replace").split()
                        if data and data[0].isdigit():
                            got[name].append(int(data[0]))
        for s in listeners.values():
            s.close()
        self.result["tcp"] = {"accepted": got, "errors": errors, "ports": self.ports}
        write_json(self.path("tcp-done.json"), self.result["tcp"])

    def workers_gave_up(self) -> bool:
        """Every worker's answer holds its connection outcomes and one of them failed (when
        all succeeded, the head accepts until it has every connection)."""
        outcomes: list[str] = []
        for k in range(1, self.n):
            try:
                tcp = read_json(self.path(f"node-{k}.json")).get("tcp")
            except (OSError, ValueError):
                return False
            if not tcp:
                return False
            outcomes += list(tcp.get("connect", {}).values())
        return any(o != "ok" for o in outcomes)

    def tcp_worker(self) -> None:
        out: dict[str, str] = {}
        # The head listens before it writes head.json (which shared() waited for): a refused
        # or dropped connection is retried only briefly, so the answer is written in time.
        patience = CONNECT_RETRY_S if os.path.exists(self.path("head.json")) else self.args.wait
        for name, port in self.ports.items():
            out[name] = self.connect(port, patience)
        self.result["tcp"] = {"connect": out, "head": self.head, "ports": self.ports}
        self.answer()
        wait_for([self.path("tcp-done.json")], self.args.wait + 10)

    def answer(self) -> None:
        """Write what this node knows so far (again at the end): a node that srun ends early,
        when the head has finished, still leaves its answer."""
        write_json(self.path(f"node-{self.rank}.json"), self.result)

    def connect(self, port: int, patience: float) -> str:
        deadline = time.monotonic() + patience
        last = "not tried"
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.head, port), timeout=5) as c:
                    c.sendall(f"{self.rank}\n".encode())
                return "ok"
            except OSError as e:
                last = f"{type(e).__name__}: {e}"
                time.sleep(0.5)
        return last

    # -- the collective ------------------------------------------------------------------
    def collective(self) -> None:
        res: dict[str, Any] = {"backend": None, "ok": False, "error": None, "timings": []}
        self.result["collective"] = res
        try:
            torch = importlib.import_module("torch")
            dist = importlib.import_module("torch.distributed")
        except Exception as e:  # noqa: BLE001
            res["error"] = f"torch.distributed is not importable here: {e}"
            return
        use_nccl = torch.cuda.is_available() and dist.is_nccl_available()
        res["backend"] = "nccl" if use_nccl else "gloo"
        try:
            self._all_reduce(torch, dist, use_nccl, res)
        except Exception as e:  # noqa: BLE001
            res["error"] = f"{type(e).__name__}: {e}"
            res["trace"] = traceback.format_exc(limit=3)

    def _all_reduce(self, torch: Any, dist: Any, use_nccl: bool, res: dict[str, Any]) -> None:
        device = torch.device("cuda", 0) if use_nccl else torch.device("cpu")
        if use_nccl:
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=res["backend"],
            init_method=f"tcp://{self.head}:{self.ports['master']}",
            rank=self.rank,
            world_size=self.n,
            timeout=datetime.timedelta(seconds=self.args.wait),
        )
        try:
            check = torch.full((4,), float(self.rank + 1), device=device)
            dist.all_reduce(check)
            want = self.n * (self.n + 1) / 2
            res["correct"] = bool(torch.all(check == want).item())
            sizes = self.args.gpu_sizes if use_nccl else self.args.cpu_sizes
            for size in sizes:
                res["timings"].append(self._time(torch, dist, device, size, use_nccl))
            res["ok"] = res["correct"]
        finally:
            dist.destroy_process_group()

    def _time(self, torch: Any, dist: Any, device: Any, size: int, sync: bool) -> dict[str, Any]:
        x = torch.ones(size // 4, dtype=torch.float32, device=device)
        for _ in range(2):
            dist.all_reduce(x)
        if sync:
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        for _ in range(self.args.iters):
            dist.all_reduce(x)
        if sync:
            torch.cuda.synchronize()
        took = (time.perf_counter() - start) / self.args.iters
        return {"bytes": x.numel() * 4, "seconds": took, "iters": self.args.iters}

    # -- the run -------------------------------------------------------------------------
    def run(self) -> None:
        self.result.update(facts(self.rank, self.args.interface))
        write_json(self.path(f"node-{self.rank}.facts.json"), self.result)
        self.answer()
        if self.rank == 0:
            self.shared()
            if self.n > 1:
                self.tcp_head()
        else:
            self.shared()
            self.tcp_worker()
        if self.tcp_ok():
            self.collective()
        else:
            self.result["collective"] = {"skipped": "a worker could not reach the head"}

    def tcp_ok(self) -> bool:
        if self.n == 1:
            return True
        done = self.path("tcp-done.json")
        if not os.path.exists(done):
            return False
        tcp = read_json(done)
        return all(len(v) == self.n - 1 for v in tcp["accepted"].values()) and not tcp["errors"]


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--interface", default="")
    p.add_argument("--wait", type=float, default=60.0)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--cpu-sizes", type=_sizes, default=[1 << 16, 1 << 20, 1 << 23])
    p.add_argument("--gpu-sizes", type=_sizes, default=[1 << 20, 1 << 24, 1 << 27])
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    probe = Probe(args)
    try:
        probe.run()
    except Exception as e:  # noqa: BLE001  (say what broke, in the answer)
        probe.result["error"] = f"{type(e).__name__}: {e}"
        probe.result["trace"] = traceback.format_exc(limit=5)
    probe.answer()
    print(f"hpcserve doctor probe: node {probe.rank} done", flush=True)


if __name__ == "__main__":
    main()
