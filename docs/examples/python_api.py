"""hpcserve from Python: plan, submit, wait, endpoint, query, cancel (docs/python-api.md).

Serves the local lab's tiny model (`hpcserve lab up`) on its two nodes; give another model path
as the first argument.

    python docs/examples/python_api.py [MODEL]
"""

from __future__ import annotations

import sys

import hpcserve
from hpcserve.lab.config import LabLayout


def main(model: str) -> int:
    plan = hpcserve.plan(model, "local", nodes=2, max_model_len=2048)
    layout = plan.fit.layout
    print(f"plan: TP={layout.tp} x PP={layout.pp} on {layout.nodes} node(s); {plan.lines()[-1]}")

    with hpcserve.submit(model, "local", nodes=2, name="api-example") as job:
        print(f"submitted job {job.job_id}")
        try:
            res = job.wait(timeout_s=900, on_change=lambda st: print(f"  {st.detail}"))
            if not res.status.ready:
                print(f"not ready: {res.status.detail}", file=sys.stderr)
                return 1
            with job.endpoint() as ep:
                print(f"base URL: {ep.openai_base_url}")
                key = ep.api_key or ""  # give it to an OpenAI client; never print it
                print(f"API key: {'set' if key else 'none'} ({len(key)} characters)")
            print(f"answer: {job.query('Hello!', max_tokens=8)!r}")
        finally:
            print(job.cancel().message)
            job.forget()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(LabLayout().model)))
