"""``hpcserve sweep``: every candidate layout of N nodes in one allocation, benchmarked in turn.

slo.py (the ``--slo`` rule), layouts.py (``--layouts`` -> layouts, through
:func:`hpcserve.plan.layout.choose_layout`), job.py (the sweep job: one sbatch holding the
nodes, whose batch step runs each layout's rendered launcher in turn), run.py (this machine's
side: wait for each layout, benchmark it through the tunnel code, stop it), report.py (table,
recommendation, JSON, plot).
"""
