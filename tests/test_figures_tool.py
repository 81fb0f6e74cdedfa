"""`make figures` on a two-notebook book in a temporary folder (one real kernel start)."""

import nbformat

from llama2_edu import plotting as P
from llama2_edu.tools import figures

DRAW = """\
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from llama2_edu import plotting as P
fig, ax = plt.subplots()
ax.plot([0, 1], [0, {slope}])
P.save(fig, "{name}")
"""


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s, id=f"c{i}") for i, s in enumerate(sources)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


def test_figures_are_regenerated_and_listed(tmp_path, monkeypatch, capsys):
    book, out = tmp_path / "notebooks", tmp_path / "figures"
    book.mkdir()
    _notebook(book / "01_a.ipynb", DRAW.format(slope=1, name="01_line"),
              "open('cwd_check.txt', 'w').write('ok')")  # runs in the notebook's folder
    _notebook(book / "02_b.ipynb", "raise RuntimeError('broken chapter')")
    _notebook(book / "scratch.ipynb", "raise RuntimeError('not a chapter: never run')")
    monkeypatch.setenv(P.FIGURES_ENV, str(out))

    assert figures.main(["--notebooks", str(book), "01"]) == 0
    first = (out / "01_line.png").read_bytes()
    assert first.startswith(b"\x89PNG") and (book / "cwd_check.txt").exists()
    assert "figures/01_line.png  (new)" in capsys.readouterr().out

    assert figures.main(["--notebooks", str(book)]) == 1  # 02 fails, and is reported
    report = capsys.readouterr()
    assert "figures/01_line.png  (unchanged)" in report.out
    assert "02_b.ipynb: FAILED" in report.out and "02_b.ipynb" in report.err
    assert (out / "01_line.png").read_bytes() == first
    assert P.figures_dir() == out  # the tool restored the environment
