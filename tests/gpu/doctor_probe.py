"""Run hpcserve doctor's probe on the device tool's GPU machine, as far as one host allows.

No SLURM there: the probe launcher (THE launcher, rendered with the node probe in vLLM's place)
runs its batch step with tests/fake_bin/srun on PATH, which starts the node role once per
"node" on this host. Then doctor reads the job directory as it does after a real probe job
and prints its step-3 checks. Writes $OUT/doctor-checks.json, the node answers and NCCL logs.

    device run (kind nvidia-h200):  bash tests/gpu/run_doctor_probe.sh
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hpcserve.cluster.executor import LocalExecutor
from hpcserve.cluster.slurm import SchedJob
from hpcserve.doctor import probe_checks as pc
from hpcserve.doctor.probe import PROBE_DIR, ProbeJob
from hpcserve.sites.loader import load_site_file


def main() -> int:
    out = Path(os.environ["OUT"])
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    site = load_site_file(str(Path(__file__).with_name("site.yaml")))
    job = ProbeJob(site, LocalExecutor(), nodes=nodes)
    launcher = job.prepare()
    job.job_id = "1"
    env = {**os.environ, "SLURM_JOB_ID": "1"}
    p = subprocess.run(["bash", launcher], env=env, capture_output=True, text=True, timeout=400)
    print(f"launcher rc={p.returncode}\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    res = job.collect(SchedJob("1", "COMPLETED", nodes=nodes, nodelist="localhost"))
    checks = [
        pc.probe_job_check(res),
        pc.nodes_check(site, res),
        pc.infiniband_check(res),
        pc.interface_check(site, res),
        pc.tmp_check(res),
        pc.shared_check(res),
        pc.tcp_check(site, res),
        pc.collective_check(res),
        pc.nccl_check(res),
        pc.bandwidth_check(res),
    ]
    for c in checks:
        print(f"{c.status:4}  {c.name:22} {c.detail}" + (f"\n      fix: {c.fix}" if c.fix else ""))
    (out / "doctor-checks.json").write_text(json.dumps([c.to_dict() for c in checks], indent=2))
    jd = Path(res.job_dir)
    for f in [*sorted((jd / PROBE_DIR).glob("node-*.json")), *sorted((jd / "nccl").glob("*.log"))]:
        if not f.name.endswith(".facts.json"):
            shutil.copy(f, out / f.name.replace("%", "_"))
    for f in sorted(jd.glob("*.log")) + sorted(jd.glob("slurm-*.out")):
        shutil.copy(f, out / f.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
