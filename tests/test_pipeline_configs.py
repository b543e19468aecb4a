"""Every shipped pipeline config (`distilswap run --config`) is made of command lines distilswap accepts, and the
files its stages name exist: a typo must not surface an hour into a run."""
from pathlib import Path

import pytest
import yaml

import distilswap

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if "stages" in (yaml.safe_load(p.read_text()) or {}))


def test_pipelines_are_found():
    assert {"demo.yaml", "evidence_synthetic.yaml"} <= set(PIPELINES)


@pytest.mark.parametrize("name", PIPELINES)
def test_every_stage_parses_and_names_existing_configs(name, tmp_path):
    stages = yaml.safe_load((ROOT / "configs" / name).read_text())["stages"]
    parser = distilswap.build_parser()
    for stage, argv in stages.items():
        argv = [str(a).format(out=tmp_path) for a in argv]
        assert all(isinstance(a, str) and a not in ("True", "False") for a in argv), stage  # YAML off/on
        parser.parse_args(argv)
        for flag, value in zip(argv, argv[1:]):
            if flag == "--config":
                assert (ROOT / value).is_file(), f"{name}: stage {stage} names missing {value}"
        for value in argv:
            if value.startswith("models/"):  # the shipped teacher and experts
                assert list(ROOT.glob(value)), f"{name}: stage {stage} names missing shipped {value}"



def test_run_caches_finished_stages_and_reruns_edited_ones(tmp_path, capsys):
    """`distilswap run`: a rerun skips finished stages; editing a YAML file a stage names, or --from-stage,
    reruns that stage and the ones after it; a failing stage says why and which stage, one line each."""
    from tests.test_compare import write_run

    run = write_run(tmp_path / "rw", "product", 0.04)
    settings = tmp_path / "experts.yaml"
    settings.write_text("seed: 0\n")
    stages = {
        "first": ["compare", str(run), "--out", "{out}/first"],
        "experts": ["experts", "train", "--world", "synthetic", "--preset", "tiny", "--only", "parser",
                    "--config", str(settings), "--out", "{out}/experts", "--quiet"],
        "last": ["compare", str(run), "--out", "{out}/last"],
    }
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    out = tmp_path / "out"
    args = ["run", "--config", str(pipeline), "--out", str(out)]
    assert distilswap.main(args) == 0
    assert (out / "first" / "compare.md").is_file() and (out / "experts" / "parser.safetensors").is_file()
    capsys.readouterr()
    assert distilswap.main(args) == 0
    assert capsys.readouterr().out.count(": cached") == 3
    settings.write_text("seed: 1\n")
    assert distilswap.main(args) == 0
    printed = capsys.readouterr().out
    assert "first: cached" in printed and "experts: cached" not in printed and "last: cached" not in printed
    assert distilswap.main([*args, "--from-stage", "last"]) == 0
    assert capsys.readouterr().out.count(": cached") == 2
    import shutil

    shutil.rmtree(out / "experts")  # a cached stage whose output is gone runs again
    assert distilswap.main(args) == 0
    printed = capsys.readouterr().out
    assert "first: cached" in printed and "experts: cached" not in printed
    assert (out / "experts" / "parser.safetensors").is_file()
    stages["last"] = ["compare", str(tmp_path / "missing"), "--out", "{out}/last"]
    pipeline.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    assert distilswap.main(args) == 2
    problem, stage = capsys.readouterr().err.strip().splitlines()  # the stage's own reason, then which stage
    assert problem.startswith("distilswap: error:") and "no eval.json" in problem
    assert stage.startswith("distilswap: error: stage last failed")
