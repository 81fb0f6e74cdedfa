"""`make figures`: re-execute every notebook of the book so that each writes its figures into
`figures/`, then list the figure files that were written.

    python -m llama2_edu.tools.figures                 # every notebooks/NN_*.ipynb
    python -m llama2_edu.tools.figures 01 02           # only the chapters whose names start so

The notebooks run in a fresh kernel with `notebooks/` as the working directory, exactly as in
JupyterLab; the notebooks themselves are not modified (their committed outputs stay as they
are). Figures are PNGs written by `llama2_edu.plotting.save`, byte-identical from run to run,
so `git status` afterwards shows only figures that really changed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from ..plotting import figures_dir
from .student import NOTEBOOK

ROOT = Path(__file__).resolve().parents[2]


def _snapshot(folder: Path) -> dict[Path, int]:
    if not folder.is_dir():
        return {}
    return {p: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def run_notebook(path: Path, timeout: int = 1200) -> None:
    """Execute `path` in a fresh kernel, in its own folder, without saving it."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*",
                        help="prefixes of notebook names to run (default: all)")
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = parser.parse_args(argv)

    notebooks = sorted(p for p in args.notebooks.glob("*.ipynb") if NOTEBOOK.fullmatch(p.name))
    if args.chapters:
        notebooks = [p for p in notebooks if p.name.startswith(tuple(args.chapters))]
    if not notebooks:
        print(f"error: no notebooks to run in {args.notebooks}", file=sys.stderr)
        return 1

    folder = figures_dir()
    written: list[Path] = []
    failed: list[str] = []
    for path in notebooks:
        before = _snapshot(folder)
        start = time.perf_counter()
        try:
            run_notebook(path, timeout=args.timeout)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
            # report every broken notebook, not only the first
            failed.append(path.name)
            print(f"{path.name}: FAILED ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            continue
        after = _snapshot(folder)
        new = sorted(p for p, mtime in after.items() if before.get(p) != mtime)
        written += new
        print(f"{path.name}: {len(new)} figure(s) in {time.perf_counter() - start:.0f} s")
        for p in new:
            print(f"  {p.relative_to(folder.parent) if folder.parent in p.parents else p}")
    print(f"{len(written)} figure file(s) written to {folder}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
