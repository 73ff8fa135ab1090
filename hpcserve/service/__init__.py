"""Serving past the walltime: a chain of jobs behind one name (``submit --keep-alive``).

The chain runs on the cluster: each job's batch step submits its successor before its own time
limit (:mod:`.lead` decides when), hands over once the successor answers, drains and exits; the
launcher's shell functions for that come from :mod:`.launcher`. Everything the chain did is one
append-only log in the service directory (:mod:`.chain` reads it), so every client sees the same
chain; :mod:`.remote` reads and cancels it through an executor, :mod:`.follow` lets a tunnel
follow its current job, :mod:`.metrics` reads vLLM's ``/metrics`` load and :mod:`.stop` the
lines the launcher writes when it ends a job by itself (idle stop, handover).
"""
