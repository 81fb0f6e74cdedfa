"""The install routes agree with each other."""

import re
import tomllib

from conftest import ROOT


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_lists_what_pyproject_requires():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    # The pip section is the items indented under "- pip:" (parsed by hand: no yaml dependency).
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:") + 1
    pip_section = [line.strip()[2:] for line in lines[start:] if line.startswith("      - ")]
    listed = {_name(r): r for r in pip_section if not r.startswith("-")}
    assert listed.keys() == wanted.keys()
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for name, requirement in listed.items():
        expected = f"{name}=={pins[name]}" if name in pins else wanted[name]
        assert requirement == expected, f"environment.yml has {requirement!r}, expected {expected!r}"
    assert "-e ." in pip_section


def test_torch_is_a_range_in_pyproject_and_pinned_in_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in project["dependencies"] if _name(r) == "torch")
    assert ">=" in torch_req and "==" not in torch_req
    assert "torch==" in (ROOT / "constraints.txt").read_text()
