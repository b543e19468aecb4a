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
