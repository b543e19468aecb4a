"""`distilswap compare`: runs side by side with the reference rows; runs judged differently are refused."""
import json

import pytest

import distilswap


def write_run(path, reweight, l1, judge="judge.safetensors", pairs=10):
    path.mkdir(parents=True)
    result = {"student": {"truth_l1": l1, "id_sim_source": 0.5}, "teacher": {"truth_l1": 0.01},
              "target (no swap)": {"truth_l1": 0.09}, "ground truth": {"id_sim_source": 0.8},
              "pairs": pairs, "identities": pairs, "identity_judge": judge,
              "run": {"reweight": reweight, "steps": 100}}
    (path / "eval.json").write_text(json.dumps(result))
    return path


def test_runs_side_by_side_with_floor_and_ceiling(tmp_path, capsys):
    a = write_run(tmp_path / "rw_product", "product", 0.04)
    b = write_run(tmp_path / "rw_off", "off", 0.05)
    assert distilswap.main(["compare", str(a), str(b), "--out", str(tmp_path / "ab")]) == 0
    table = (tmp_path / "ab" / "compare.md").read_text()
    assert "| rw_product (reweight product, 100 steps) | 0.04 |" in table
    assert "| rw_off (reweight off, 100 steps) | 0.05 |" in table
    assert "| target (no swap) | 0.09 |" in table and "judged by judge.safetensors" in table
    assert (tmp_path / "ab" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert table in capsys.readouterr().out


@pytest.mark.parametrize("change", [{"judge": "other.onnx"}, {"pairs": 11}])
def test_refuses_runs_that_are_not_comparable(tmp_path, capsys, change):
    a = write_run(tmp_path / "a", "product", 0.04)
    b = write_run(tmp_path / "b", "off", 0.05, **change)
    assert distilswap.main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distilswap: error:") and "compare runs of the same pairs" in err and "\n" not in err
    assert distilswap.main(["compare", str(tmp_path / "missing")]) == 2
    assert "no eval.json" in capsys.readouterr().err
