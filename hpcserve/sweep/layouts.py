"""``--layouts``: ``auto`` (every layout vLLM accepts on the nodes) or a list such as
``tp2,pp2,dp2`` / ``dp2xtp4,tp4xpp2`` / ``dp2xtp4xnoep``.

Each item names some of ``dp``, ``tp``, ``pp`` (a number after each) joined by ``x``, and
optionally ``ep`` or ``noep``; what it leaves out :func:`hpcserve.plan.layout.choose_layout`
fills in, as ``--dp``/``--tp``/``--pp`` of ``render`` would. ``auto`` is
:func:`hpcserve.plan.layout.candidates`. A refused item is one UsageError line naming it.
"""

from __future__ import annotations

import re

from hpcserve.errors import UsageError
from hpcserve.plan.layout import Layout, candidates, choose_layout
from hpcserve.plan.modelinfo import ModelInfo
from hpcserve.sites.schema import Site

_PART = re.compile(r"^(dp|tp|pp)([1-9][0-9]*)$")


def _item(text: str) -> dict[str, int | bool]:
    """``dp2xtp4xep`` -> ``{"dp": 2, "tp": 4, "ep": True}``."""
    want: dict[str, int | bool] = {}
    for part in text.split("x"):
        key: str
        value: int | bool
        if part in ("ep", "noep"):
            key, value = "ep", part == "ep"
        else:
            m = _PART.match(part)
            if m is None:
                raise UsageError(
                    f"--layouts {text!r}: expected parts like tp4, pp2, dp2, ep or noep joined "
                    "by x (e.g. dp2xtp4), or auto"
                )
            key, value = m[1], int(m[2])
        if key in want:
            raise UsageError(f"--layouts {text!r}: {key} is given twice")
        want[key] = value
    return want


def label(lay: Layout) -> str:
    """``dp2-tp4-pp1-ep``: a layout as a directory name and a ``--layouts`` item's words."""
    return f"dp{lay.dp}-tp{lay.tp}-pp{lay.pp}" + ("-ep" if lay.ep else "")


def _resolve(site: Site, info: ModelInfo | None, nodes: int, text: str) -> Layout:
    want = _item(text)
    tp, pp, dp, ep = (want.get(k) for k in ("tp", "pp", "dp", "ep"))
    try:
        return choose_layout(
            info, nodes, site.node.gpus,
            tp=int(tp) if tp is not None else None,
            pp=int(pp) if pp is not None else None,
            mode=site.engine.layout,
            dp=int(dp) if dp is not None else None,
            ep=bool(ep) if ep is not None else None,
        )  # fmt: skip
    except UsageError as e:
        raise UsageError(f"--layouts {text!r}: {e}") from e


def sweep_layouts(site: Site, info: ModelInfo | None, nodes: int, text: str) -> list[Layout]:
    """The layouts ``--layouts text`` names on ``nodes`` nodes of ``site``, duplicates dropped."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError("--layouts: expected auto or a list such as tp2,pp2,dp2")
    if items == ["auto"]:
        found = candidates(info, nodes, site.node.gpus)
    else:
        found = [_resolve(site, info, nodes, t) for t in items]
    out: list[Layout] = []
    for lay in found:
        if lay not in out:
            out.append(lay)
    if not out:
        raise UsageError(f"no layout vLLM accepts on {nodes} node(s) of {site.node.gpus} GPUs")
    return out


def parse_concurrency(text: str) -> tuple[int, ...]:
    """``--concurrency 1,8,32``: positive whole numbers, in the order given."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise UsageError(
                f"--concurrency {text!r}: expected positive whole numbers separated by commas, "
                "e.g. 1,8,32"
            )
        values.append(int(part))
    return tuple(values)
