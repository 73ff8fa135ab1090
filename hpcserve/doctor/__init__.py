"""``hpcserve doctor``: prove a site works before a model is loaded (docs/doctor.md).

checks.py (the check record and the order/stop rule), local.py (step 1, here), login.py
(step 2, on the login node), probe.py (step 3, the probe job), node_probe.py (the script each
node of the probe job runs), report.py (text and JSON), run.py (:func:`run.doctor`).
"""
