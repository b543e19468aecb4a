"""`distilswap compare`: runs side by side with the reference rows; several seeds summarised per setting;
runs judged differently are refused."""
import json

import pytest

import distilswap


def write_run(path, reweight, l1, judge="judge.safetensors", held_out="split0", seed=0, lr=1e-3, identity=0.5):
    path.mkdir(parents=True)
    config = {"reweight": reweight, "lr": lr, "seed": seed, "steps": 100, "log_every": 10}
    result = {"student": {"truth_l1": l1, "id_sim_source": identity}, "teacher": {"truth_l1": 0.01},
              "target (no swap)": {"truth_l1": 0.09}, "ground truth": {"id_sim_source": 0.8},
              "pairs": 10, "identities": 10, "held_out": held_out, "identity_judge": judge,
              "run": {"reweight": reweight, "steps": 100, "seed": seed, "config": config}}
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


def test_seeds_are_summarised_per_setting_with_wins(tmp_path):
    """Three seeds x two settings: one summary row per setting (mean ± sd over the held-out sets, and in how
    many sets it was best), then each set's own table."""
    runs = []
    for seed, (product, off) in enumerate([(0.04, 0.05), (0.03, 0.06), (0.08, 0.07)]):
        runs.append(write_run(tmp_path / f"p{seed}", "product", product, held_out=f"s{seed}", seed=seed))
        runs.append(write_run(tmp_path / f"o{seed}", "off", off, held_out=f"s{seed}", seed=seed, identity=0.6))
    assert distilswap.main(["compare", *map(str, runs), "--out", str(tmp_path / "c")]) == 0
    table = (tmp_path / "c" / "compare.md").read_text()
    assert "Across 3 held-out sets" in table
    assert "| reweight product | 0.05 ± 0.026 (2/3) |" in table  # mean 0.05, best L1 in seeds 0 and 1
    assert "| reweight off | 0.06 ± 0.01 (1/3) |" in table
    assert "| 0.6 ± 0 (3/3) |" in table  # off has the higher identity in every set
    assert "| teacher | 0.01 ± 0 |" in table
    assert table.count("Held-out set") == 3 and "| p2 (reweight product, 100 steps) | 0.08 |" in table


def test_settings_that_differ_beyond_reweighting_are_named(tmp_path):
    runs = [write_run(tmp_path / f"r{seed}{lr}", "off", 0.05, held_out=f"s{seed}", seed=seed, lr=lr)
            for seed in (0, 1) for lr in (1e-3, 2e-3)]
    assert distilswap.main(["compare", *map(str, runs), "--out", str(tmp_path / "c")]) == 0
    table = (tmp_path / "c" / "compare.md").read_text()
    assert "| reweight off, lr 0.001 |" in table and "| reweight off, lr 0.002 |" in table


@pytest.mark.parametrize("change, message", [({"judge": "other.onnx"}, "judged by the same model"),
                                             ({"reweight": "product"}, "same settings on one held-out set")])
def test_refuses_runs_that_are_not_comparable(tmp_path, capsys, change, message):
    a = write_run(tmp_path / "a", "product", 0.04)
    b = write_run(tmp_path / "b", **{"reweight": "off", "l1": 0.05, **change})
    c = write_run(tmp_path / "c", "off", 0.05, held_out="split1")
    assert distilswap.main(["compare", str(a), str(b), str(c)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distilswap: error:") and message in err and "\n" not in err


def test_missing_and_old_evaluations_are_named(tmp_path, capsys):
    assert distilswap.main(["compare", str(tmp_path / "missing")]) == 2
    assert "no eval.json" in capsys.readouterr().err
    old = write_run(tmp_path / "old", "off", 0.05)
    result = json.loads((old / "eval.json").read_text())
    del result["held_out"]
    (old / "eval.json").write_text(json.dumps(result))
    assert distilswap.main(["compare", str(old)]) == 2
    assert "rerun the same `distilswap distill` command" in capsys.readouterr().err
