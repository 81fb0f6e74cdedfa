"""`make student`: the edition is valid, holds no solution, and every exercise check fails on
the stub and passes on the solution. Exercise cells are run with `exec`, in-process: they are
self-contained by convention (their own imports), which this test also enforces."""

from __future__ import annotations

import nbformat
import pytest
from conftest import ROOT

from llama2_edu.exercises._harness import ExerciseFailed
from llama2_edu.tools import student

BOOK = ROOT / "notebooks"
NOTEBOOKS = sorted(p for p in BOOK.glob("*.ipynb") if student.NOTEBOOK.fullmatch(p.name))


def _exercises():
    """(notebook name, cell index, source) of every cell tagged `exercise`, found afresh."""
    found = []
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        found += [(path.name, i, cell.source) for i, cell in enumerate(nb.cells)
                  if student.is_exercise(cell)]
    return found


EXERCISES = _exercises()


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    if not NOTEBOOKS:
        pytest.skip("no notebooks yet")
    out = tmp_path_factory.mktemp("student")
    written = student.build(BOOK, out)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    return {p.name: nbformat.read(p, as_version=4) for p in written}


def test_the_edition_is_valid_and_clean(edition):
    for name, nb in edition.items():
        nbformat.validate(nb)
        assert nb.cells[0].cell_type == "markdown" and "Student edition" in nb.cells[0].source
        for cell in nb.cells:
            assert student.BEGIN not in cell.source and student.END not in cell.source, name
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, name


def test_no_solution_text_survives(edition):
    for name, index, source in EXERCISES:
        stripped, solutions = student.strip_solutions(source)
        assert solutions, f"{name} cell {index} is tagged exercise but has no solution markers"
        student_cell = edition[name].cells[index + 1]  # +1: the banner
        assert student_cell.source == stripped
        for block in solutions:
            for line in filter(None, (line.strip() for line in block.splitlines())):
                if not line.startswith("#"):
                    assert line not in student_cell.source, (name, index, line)


def test_every_notebook_with_exercises_is_found():
    # Chapters end with exercises (DESIGN.md): a notebook without any is a slip, not a choice.
    with_exercises = {name for name, _, _ in EXERCISES}
    missing = [p.name for p in NOTEBOOKS if p.name not in with_exercises]
    assert not missing, f"notebooks without a cell tagged 'exercise': {missing}"


def _run(source: str, label: str) -> None:
    # The book's own cells, run as the notebook would run them (in-process: seconds, not a kernel).
    exec(compile(source, label, "exec"), {"__name__": "__main__"})  # noqa: S102


@pytest.mark.parametrize("name, index, source", EXERCISES,
                         ids=[f"{n.split('_')[0]}-cell{i}" for n, i, _ in EXERCISES])
def test_solution_passes_and_stub_fails(name, index, source, capsys):
    assert "%" not in "".join(line.lstrip()[:1] for line in source.splitlines()), \
        f"{name} cell {index}: an exercise cell must be plain Python (no magics)"
    _run(source, f"<{name} cell {index}: solution>")
    assert "✓" in capsys.readouterr().out, f"{name} cell {index}: the check printed no tick"
    stub, _ = student.strip_solutions(source)
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        _run(stub, f"<{name} cell {index}: student>")


# ---- the transformation itself -------------------------------------------------------------
def test_strip_keeps_the_indentation_and_everything_outside():
    source = ("import torch\n\ndef f(x):\n    y = 1\n    # BEGIN SOLUTION\n    return x + y\n"
              "    # END SOLUTION\n\nclass A:\n    def g(self):\n        # BEGIN SOLUTION\n"
              "        pass\n        # END SOLUTION\n\ncheck(f)")
    stripped, removed = student.strip_solutions(source)
    assert stripped == ("import torch\n\ndef f(x):\n    y = 1\n    " + student.STUB + "\n\n"
                        "class A:\n    def g(self):\n        " + student.STUB + "\n\ncheck(f)")
    assert removed == ["    return x + y\n", "        pass\n"]


@pytest.mark.parametrize("source, message", [
    ("# BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n# END SOLUTION\n", "without"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n", "inside another"),
])
def test_unbalanced_markers_are_refused(source, message):
    with pytest.raises(student.SolutionMarkerError, match=message):
        student.strip_solutions(source)


def test_build_is_reproducible_and_prunes_stale_copies(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("def f():\n    # BEGIN SOLUTION\n    return 1\n"
                                     "    # END SOLUTION\n", id="ex")
    cell.metadata["tags"] = ["exercise"]
    cell.outputs = [nbformat.v4.new_output("stream", text="✓\n")]
    cell.execution_count = 3
    nb.cells = [nbformat.v4.new_markdown_cell("# Title", id="title"), cell]
    nbformat.write(nb, book / "07_demo.ipynb")
    (book / "scratch.ipynb").write_text((book / "07_demo.ipynb").read_text())  # not NN_*
    out = tmp_path / "student"
    out.mkdir()
    (out / "06_removed.ipynb").write_text("{}")
    assert student.main([str(book), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["07_demo.ipynb"]
    first = (out / "07_demo.ipynb").read_text()
    student.build(book, out)
    assert (out / "07_demo.ipynb").read_text() == first
    copy = nbformat.reads(first, as_version=4)
    assert copy.cells[2].outputs == [] and copy.cells[2].execution_count is None
    assert "return 1" not in first and student.STUB in copy.cells[2].source
    assert "return 1" in (book / "07_demo.ipynb").read_text()  # the book is untouched


def test_missing_book_is_a_clear_error(tmp_path, capsys):
    assert student.main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    assert "no notebooks" in capsys.readouterr().err
