"""The paramiko tunnel (hpcserve.net.tunnel.Forwarder) against OpenSSH's ``ssh -N -L``,
side by side.

Both forward through the same real sshd (started here, 127.0.0.1, key auth) to the same HTTP
server: a real vLLM given with ``--url`` (e.g. the CPU vLLM of the local lab), or else a stand-in
streaming server started here (named as such in the output). Measured in one run:

* added latency per request, p50/p99, against going direct: ``GET /v1/models`` on a kept-alive
  connection (one SSH channel round trip) and on a new connection each time (channel open too);
* streamed-token throughput with 1 and 64 concurrent streams (chat completions, hpcserve.net.bench);
* raw bytes throughput (a large response; the stand-in's /blob, or vLLM's /openapi.json).

Usage: python bench/bench_tunnel.py [--url http://127.0.0.1:PORT --api-key-file F]
                                    [--requests 300] [--output-len 64] [--streams 1,64]
Needs root and /usr/sbin/sshd (as the tests do).
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from net_fixtures import SshLab, StandInHTTP  # noqa: E402

from hpcserve.cluster.ssh import route_for  # noqa: E402
from hpcserve.net import bench as hb  # noqa: E402
from hpcserve.net.tunnel import OpensshTunnel, free_port, openssh_argv  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    return hb.percentile(xs, p)


def latency_samples(
    ports: dict[str, int], n: int, path: str, headers: dict[str, str], keepalive: bool
) -> dict[str, list[float]]:
    """Interleaved (one request per path in turn) so drift hits all paths alike."""
    conns: dict[str, http.client.HTTPConnection] = {}
    out: dict[str, list[float]] = {k: [] for k in ports}
    for i in range(n + 5):
        for name, port in ports.items():
            if not keepalive or name not in conns:
                conns[name] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c = conns[name]
            t0 = time.perf_counter()
            c.request("GET", path, headers=headers)
            r = c.getresponse()
            r.read()
            dt = time.perf_counter() - t0
            if not keepalive:
                c.close()
                del conns[name]
            if i >= 5:  # warm-up
                out[name].append(dt)
    for c in conns.values():
        c.close()
    return out


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"hpcserve tunnel exited {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("hpcserve tunnel did not listen")


def bytes_rate(port: int, path: str, headers: dict[str, str], repeat: int) -> float:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("GET", path, headers=headers)  # warm-up (vLLM builds /openapi.json once)
    c.getresponse().read()
    total, t0 = 0, time.perf_counter()
    for _ in range(repeat):
        c.request("GET", path, headers=headers)
        total += len(c.getresponse().read())
    dt = time.perf_counter() - t0
    c.close()
    return total / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="real server (vLLM) at http://127.0.0.1:PORT; default stand-in")
    ap.add_argument("--api-key-file")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--streams", default="1,64")
    ap.add_argument("--prompts-per-stream", type=int, default=2)
    args = ap.parse_args()

    key = Path(args.api_key_file).read_text().strip() if args.api_key_file else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    stand_in = None
    if args.url:
        host, port = args.url.removeprefix("http://").rstrip("/").split(":")
        remote = (host, int(port))
        server = f"real vLLM at {args.url}"
        blob_path, blob_repeat = "/openapi.json", 20
    else:
        stand_in = StandInHTTP()
        remote = ("127.0.0.1", stand_in.port)
        server = "STAND-IN streaming HTTP server (not vLLM)"
        blob_path, blob_repeat = "/blob/8000000", 10

    with tempfile.TemporaryDirectory() as d:
        lab = SshLab(Path(d))
        os.environ["HPCSERVE_SSH_CONFIG"] = str(lab.ssh_config)
        os.environ.pop("SSH_AUTH_SOCK", None)
        lab.add("login")
        lab.write_known_hosts("login")
        lab.write_config()
        # the paramiko tunnel runs as `hpcserve tunnel` in its own process, as users run it
        pport = free_port()
        env = dict(os.environ, HPCSERVE_STATE_DIR=str(Path(d) / "state"), PYTHONPATH=str(ROOT))
        fwd = subprocess.Popen(
            [sys.executable, "-m", "hpcserve", "tunnel", "--remote", f"{remote[0]}:{remote[1]}",
             "--login", "login", "--local-port", str(pport)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(pport, fwd)
        route, _ = route_for("login")
        oport = free_port()
        argv = openssh_argv(route, oport, remote)
        ossh = OpensshTunnel(argv, oport).start()
        ports = {"direct": remote[1], "openssh": oport, "paramiko": pport}
        try:
            rows = run(args, ports, headers, key, blob_path, blob_repeat)
        finally:
            fwd.terminate()
            fwd.wait(10)
            ossh.stop()
            lab.stop()
            if stand_in:
                stand_in.close()
    print(f"\nserver: {server}; sshd: OpenSSH on 127.0.0.1; python {sys.version.split()[0]}")
    print("\n".join(rows))


def run(
    args: Any,
    ports: dict[str, int],
    headers: dict[str, str],
    key: str | None,
    blob_path: str,
    blob_repeat: int,
) -> list[str]:
    rows = [
        "",
        "| measure | direct | openssh | paramiko | paramiko/openssh |",
        "|---|---|---|---|---|",
    ]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b > 0 else "n/a"

    for keepalive in (True, False):
        lat = latency_samples(ports, args.requests, "/v1/models", headers, keepalive)
        kind = "kept-alive conn" if keepalive else "new conn each"
        for p in (50, 99):
            v = {k: pct(x, p) * 1000 for k, x in lat.items()}
            add_o, add_p = v["openssh"] - v["direct"], v["paramiko"] - v["direct"]
            rows.append(
                f"| GET /v1/models p{p} ({kind}), ms | {v['direct']:.3f} | {v['openssh']:.3f} | "
                f"{v['paramiko']:.3f} | |"
            )
            rows.append(
                f"| added latency p{p} ({kind}), ms | - | {add_o:.3f} | {add_p:.3f} | "
                f"{ratio(add_p, add_o)} |"
            )
        print(f"latency ({kind}) done", file=sys.stderr)
    mbs = {k: bytes_rate(p, blob_path, headers, blob_repeat) for k, p in ports.items()}
    rows.append(
        f"| bytes throughput ({blob_path}), MB/s | {mbs['direct']:.0f} | {mbs['openssh']:.0f} | "
        f"{mbs['paramiko']:.0f} | {ratio(mbs['paramiko'], mbs['openssh'])} |"
    )
    import requests

    model = requests.get(
        f"http://127.0.0.1:{ports['direct']}/v1/models", headers=headers, timeout=30
    ).json()["data"][0]["id"]
    for streams in (int(s) for s in args.streams.split(",")):
        prompts = hb.random_prompts(
            streams * args.prompts_per_stream, args.input_len, args.output_len
        )
        res: dict[str, hb.Metrics] = {}
        for name, port in ports.items():
            outs, dur = hb.run_load(
                f"http://127.0.0.1:{port}", prompts, model=model, api_key=key,
                concurrency=streams, progress=False,
            )  # fmt: skip
            res[name] = hb.compute_metrics(outs, dur, max_concurrency=streams)
            failed = res[name].failed
            if failed:
                print(f"{name}: {failed} failed requests", file=sys.stderr)
        tput = {k: m.output_throughput for k, m in res.items()}
        rows.append(
            f"| streamed tokens/s, {streams} streams | {tput['direct']:.0f} | "
            f"{tput['openssh']:.0f} | {tput['paramiko']:.0f} | "
            f"{ratio(tput['paramiko'], tput['openssh'])} |"
        )
        tpot = {k: m.stats_ms["mean_tpot_ms"] for k, m in res.items()}
        rows.append(
            f"| mean TPOT, {streams} streams, ms | {tpot['direct']:.2f} | "
            f"{tpot['openssh']:.2f} | {tpot['paramiko']:.2f} | "
            f"{ratio(tpot['paramiko'], tpot['openssh'])} |"
        )
        ttft = {k: m.stats_ms["median_ttft_ms"] for k, m in res.items()}
        rows.append(
            f"| median TTFT, {streams} streams, ms | {ttft['direct']:.2f} | "
            f"{ttft['openssh']:.2f} | {ttft['paramiko']:.2f} | "
            f"{ratio(ttft['paramiko'], ttft['openssh'])} |"
        )
        print(f"{streams} streams done", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
