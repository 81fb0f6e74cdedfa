"""How big the notebooks run, chosen by one environment variable, LLAMA2_EDU_SCALE:

    toy    (default; what CI runs) seconds to a few minutes on 2 CPU cores
    small  a laptop: longer runs, clearer results
    7b     real Llama 2 weights from LLAMA2_DIR, on a GPU

Notebooks read every size from one cell:  `sizes = pick(toy=dict(...), small=dict(...))`.
"""

from __future__ import annotations

import os

SCALES = ("toy", "small", "7b")


def current_scale() -> str:
    scale = os.environ.get("LLAMA2_EDU_SCALE", "toy").strip().lower()
    if scale not in SCALES:
        raise ValueError(f"LLAMA2_EDU_SCALE={scale!r} is not one of {', '.join(SCALES)}")
    return scale


def pick(toy, small=None, **others):
    """The value for the current scale; a scale without its own value falls back to the next
    smaller one (7b -> small -> toy)."""
    values = {"toy": toy, "small": small, **{k.lstrip("_"): v for k, v in others.items()}}
    order = SCALES[: SCALES.index(current_scale()) + 1]
    for scale in reversed(order):
        if values.get(scale) is not None:
            return values[scale]
    return toy
