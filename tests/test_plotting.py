import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from conftest import ROOT

from llama2_edu import plotting as P


@pytest.fixture
def figures(tmp_path, monkeypatch):
    monkeypatch.setenv(P.FIGURES_ENV, str(tmp_path / "figs"))
    yield tmp_path / "figs"
    plt.close("all")


def test_figures_go_to_the_repository_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv(P.FIGURES_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # the notebooks run in notebooks/: cwd must not matter
    assert P.figures_dir() == ROOT / "figures"


def test_save_writes_a_reproducible_png(figures):
    P.use_style()
    fig, ax = plt.subplots()
    P.plot_curves({"a": [1, 2, 3], "b": ([1, 2, 4], [3, 2, 1])}, ax=ax, logy=True)
    path = P.save(fig, "99_test")
    assert path == figures / "99_test.png"
    first = path.read_bytes()
    assert first.startswith(b"\x89PNG")
    assert b"Matplotlib version" not in first
    P.save(fig, "99_test")
    assert path.read_bytes() == first  # byte-identical: `make figures` keeps git clean


@pytest.mark.parametrize("name", ["x.png", "../escape", "", "a/b"])
def test_save_refuses_names_that_are_not_plain_stems(figures, name):
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="plain file stem"):
        P.save(fig, name)


def test_plot_curves_labels_and_checks_shapes(figures):
    ax = P.plot_curves({"pre": [1.0, 2.0], "post": [2.0, 1.0]}, xlabel="layer", ylabel="norm")
    assert [line.get_label() for line in ax.get_lines()] == ["pre", "post"]
    assert ax.get_xlabel() == "layer" and ax.get_legend() is not None
    with pytest.raises(ValueError, match="curve 'bad'"):
        P.plot_curves({"bad": ([1, 2, 3], [1, 2])})


def test_heatmap_blanks_the_masked_entries(figures):
    scores = torch.zeros(4, 4).masked_fill(torch.ones(4, 4).triu(1).bool(), float("-inf"))
    image = P.heatmap(scores, title="causal")
    data = image.get_array()
    assert data.mask.sum() == 6 and np.all(data[~data.mask] == 0)
    with pytest.raises(ValueError, match="2-D"):
        P.heatmap(np.zeros(3))
