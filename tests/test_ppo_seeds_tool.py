"""The seed-check tool must run what chapters 12 and 13 run: its settings are the notebooks'."""
import ast
import json
from pathlib import Path

import pytest

from llama2_edu.tools import ppo_seeds

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _literal_dict(node: ast.Call) -> dict:
    """A `dict(a=1, b=dict(...))` call node as a dict of literals."""
    return {k.arg: _literal_dict(k.value) if isinstance(k.value, ast.Call)
            else ast.literal_eval(k.value) for k in node.keywords}


def _toy_sizes(notebook: str) -> dict:
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    source = next("".join(c["source"]) for c in cells
                  if c["cell_type"] == "code" and "sizes = pick(" in "".join(c["source"]))
    call = ast.parse(source[source.index("sizes = pick("):]).body[0].value
    return _literal_dict(next(k.value for k in call.keywords if k.arg == "toy"))


def test_tool_settings_are_the_notebooks():
    sizes = _toy_sizes("12_rlhf_ppo.ipynb")
    expected = {**sizes["round2"], "minibatch": sizes["minibatch"],
                "max_gen_len": sizes["max_gen_len"], "n_test": sizes["n_test"],
                "n_red_test": sizes["n_red_test"]}
    assert ppo_seeds.ROUND2 == expected
    # Chapter 13 (sections 4 and 6) reruns the same PPO run; its prose quotes this tool's seeds.
    sizes13 = _toy_sizes("13_rejection_sampling_and_dpo.ipynb")
    r = ppo_seeds.ROUND2
    assert (sizes13["ppo_batch"], sizes13["ppo_iterations"], sizes13["ppo_warmup"],
            sizes13["max_gen_len"], sizes13["n_test"]) == \
        (r["batch"], r["iterations"], r["warmup"], r["max_gen_len"], r["n_test"])


def test_unknown_judge_is_named():
    with pytest.raises(ValueError, match="'oracle'"):
        ppo_seeds.run(0, helpfulness="oracle")
