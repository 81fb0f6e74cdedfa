"""The few matplotlib helpers the notebooks share: one look for every figure, and one place
where figures are written.

    from llama2_edu import plotting as P
    P.use_style()
    fig, ax = plt.subplots()
    P.plot_curves({"pre-norm": grads_pre, "post-norm": grads_post}, ax=ax, logy=True)
    P.save(fig, "01_prenorm_gradients")        # -> <repo>/figures/01_prenorm_gradients.png

`save` writes into the repository's `figures/` folder whatever the current directory is (the
notebooks run in `notebooks/`, `make figures` from the root), so a figure has one stable path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np

FIGURES_ENV = "LLAMA2_EDU_FIGURES"

# Okabe & Ito's palette: distinguishable with the common forms of colour blindness.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
           "#000000"]

STYLE = {
    "figure.figsize": (6.4, 3.8),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "legend.frameon": False,
    "image.cmap": "viridis",
}

_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]*")


def use_style() -> None:
    """Apply the book's matplotlib style (call once per notebook, after importing pyplot)."""
    mpl.rcParams.update(STYLE)


def figures_dir() -> Path:
    """Where figures go: $LLAMA2_EDU_FIGURES if set, else `figures/` of the repository this
    package was installed from (editable install), else `./figures`."""
    if os.environ.get(FIGURES_ENV):
        return Path(os.environ[FIGURES_ENV])
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        return root / "figures"
    return Path.cwd() / "figures"


def save(fig, name: str) -> Path:
    """Write `fig` to figures/<name>.png and return the path.

    PNG written without the matplotlib version in its metadata, so that re-running a notebook
    reproduces the file byte for byte and `make figures` leaves git clean."""
    if not _NAME.fullmatch(name) or name.endswith(".png"):
        raise ValueError(f"figure name {name!r} must be a plain file stem such as "
                         "'01_prenorm_gradients' (letters, digits, _ . -; no extension)")
    folder = figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, format="png", bbox_inches="tight", metadata={"Software": None})
    return path


def plot_curves(curves: Mapping[str, Sequence | tuple[Sequence, Sequence]], *, ax=None,
                xlabel: str = "", ylabel: str = "", title: str = "", logx: bool = False,
                logy: bool = False, marker: str | None = None):
    """One line per entry of `curves`: `{label: y}` (x = 0, 1, ...) or `{label: (x, y)}`.
    Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    for label, values in curves.items():
        if isinstance(values, tuple) and len(values) == 2:
            x, y = np.asarray(values[0]), np.asarray(values[1])
        else:
            y = np.asarray(values)
            x = np.arange(len(y))
        if x.shape != y.shape:
            raise ValueError(f"curve {label!r}: x has shape {x.shape} but y has {y.shape}")
        ax.plot(x, y, label=label, marker=marker)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if len(curves) > 1:
        ax.legend()
    return ax


def heatmap(matrix, *, ax=None, title: str = "", xlabel: str = "", ylabel: str = "",
            cmap: str | None = None, colorbar: bool = True, vmin: float | None = None,
            vmax: float | None = None):
    """Show a 2-D array (an attention map, a table of angles). Non-finite entries, such as the
    -inf of a causal mask, are left blank. Returns the image."""
    import matplotlib.pyplot as plt

    values = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix,
                        dtype=float)
    if values.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array, got shape {values.shape}")
    if ax is None:
        _, ax = plt.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax,
                      aspect="auto", interpolation="nearest")
    ax.grid(False)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax)
    return image
