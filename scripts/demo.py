"""The whole hpcserve path on the local lab, as a user would type it, with the time of each phase.

Run by scripts/demo.sh (which installs hpcserve first). Every step is a real `hpcserve` command,
printed before it runs: lab up -> submit (through the login node's sshd) -> wait -> tunnel ->
query -> cancel. The lab stays up afterwards unless --down is given.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time

T0 = time.monotonic()


def say(text: str) -> None:
    print(f"\n[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


def run(*argv: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
    print(f"$ {shlex.join(argv)}", flush=True)
    p = subprocess.run(argv, text=True, stdout=subprocess.PIPE if capture else None)
    if check and p.returncode != 0:
        raise SystemExit(f"demo: `{shlex.join(argv)}` failed with exit code {p.returncode}")
    return p


def status(job: str) -> dict[str, object]:
    p = subprocess.run(
        ["hpcserve", "status", job, "--json"], text=True, stdout=subprocess.PIPE, check=False
    )
    try:
        data = json.loads(p.stdout)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--prompt", default="Hello! Who are you?")
    ap.add_argument("--down", action="store_true", help="take the lab down at the end")
    args = ap.parse_args()
    timings: list[tuple[str, float]] = []

    say("1. bring up the local cluster (SLURM + login sshd + vLLM CPU venv + tiny model)")
    t = time.monotonic()
    run("hpcserve", "lab", "up", "--nodes", str(args.nodes))
    timings.append(("cluster up", time.monotonic() - t))
    lab = json.loads(run("hpcserve", "lab", "status", "--json", capture=True).stdout)
    model = str(lab["model"])

    say(f"2. submit vLLM across {args.nodes} nodes through the login node")
    t_submit = time.monotonic()
    sub = run(
        "hpcserve", "submit", "--site", "local", "--nodes", str(args.nodes),
        "--model", model, "--name", "demo", "--json", capture=True,
    )  # fmt: skip
    job = str(json.loads(sub.stdout)["job_id"])
    print(f"job id: {job}")
    try:
        say("3. wait until the job runs, then until its API answers")
        while True:
            st = status(job)
            if st.get("state") not in (None, "PENDING", "CONFIGURING"):
                break
            time.sleep(0.5)
        t_running = time.monotonic()
        timings.append(("queue -> running", t_running - t_submit))
        run("hpcserve", "wait", job, "--timeout", "900")
        t_ready = time.monotonic()
        timings.append(("running -> ready", t_ready - t_running))

        say("4. forward a local port through the login node to the head node")
        run("hpcserve", "tunnel", job, "--background")

        say("5. ask the model, through the tunnel")
        print(f"$ hpcserve query {job} {shlex.quote(args.prompt)}", flush=True)
        t_query = time.monotonic()
        p = subprocess.Popen(
            ["hpcserve", "query", job, args.prompt, "--max-tokens", "32"],
            stdout=subprocess.PIPE,
        )
        assert p.stdout is not None
        first = p.stdout.read(1)
        t_first = time.monotonic()
        sys.stdout.buffer.write(first + p.stdout.read())
        sys.stdout.flush()
        if p.wait() != 0 or not first:
            raise SystemExit("demo: the query failed")
        timings.append(("query -> first token", t_first - t_query))
        timings.append(("submit -> first token", t_first - t_submit))
        run("hpcserve", "tunnel", "--stop", job)
    finally:
        say("6. cancel the job; every vLLM process on every node exits")
        run("hpcserve", "cancel", job, "--forget", check=False)  # the name is free for a rerun

    if args.down:
        run("hpcserve", "lab", "down")
    else:
        print("\nThe lab is still up: try `hpcserve sites show local`, `hpcserve status`,")
        print("`hpcserve submit ...` again; `hpcserve lab down` takes it away.")
    print("\nmeasured on this machine:")
    for what, secs in timings:
        print(f"  {what:<24} {secs:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
