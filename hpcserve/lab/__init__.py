"""The local lab: a real SLURM cluster on this machine (``hpcserve lab up|down|status``).

slurmctld on a bridge, one slurmd per network namespace, an OpenSSH login node on loopback,
vLLM (CPU) in a cached venv and a tiny random model made offline. See docs/lab.md.
"""
