"""`make figures`: re-execute every notebook of the book so that each writes its figures into
`figures/`, then list the figure files that were written.

    python -m llama2_edu.tools.figures                 # every notebooks/NN_*.ipynb
    python -m llama2_edu.tools.figures 01 02           # only the chapters whose names start so

The notebooks run in a fresh kernel with `notebooks/` as the working directory, exactly as in
JupyterLab; the notebooks themselves are not modified (their committed outputs stay as they
are). Figures are PNGs written by `llama2_edu.plotting.save`, byte-identical from run to run,
so `git status` afterwards shows only figures that really changed; the one exception is
03_kv_cache_decode.png, which plots decode times measured on the machine that runs it. Each
notebook writes into a fresh folder of its own (through $LLAMA2_EDU_FIGURES), so the list says
exactly which notebook wrote which figure, even while something else writes to figures/ at the
same time.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from ..plotting import FIGURES_ENV, figures_dir
from .student import NOTEBOOK

ROOT = Path(__file__).resolve().parents[2]


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
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failed: list[str] = []
    previous = os.environ.get(FIGURES_ENV)
    for path in notebooks:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="figures-") as scratch:
            os.environ[FIGURES_ENV] = scratch  # the kernel inherits it: plotting.save writes here
            try:
                run_notebook(path, timeout=args.timeout)
            except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
                # report every broken notebook, not only the first
                failed.append(path.name)
                print(f"{path.name}: FAILED ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200]})")
                continue
            finally:
                if previous is None:
                    os.environ.pop(FIGURES_ENV, None)
                else:
                    os.environ[FIGURES_ENV] = previous
            new = sorted(Path(scratch).iterdir())
            print(f"{path.name}: {len(new)} figure(s) in {time.perf_counter() - start:.0f} s")
            for figure in new:
                target = folder / figure.name
                state = ("unchanged" if target.exists() and filecmp.cmp(figure, target, shallow=False)
                         else "updated" if target.exists() else "new")
                if state != "unchanged":  # leave identical files alone, mtime included
                    shutil.copyfile(figure, target)
                written.append(target)
                print(f"  {folder.name}/{figure.name}  ({state})")
    print(f"{len(written)} figure file(s) written to {folder}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
