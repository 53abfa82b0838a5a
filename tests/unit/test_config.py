"""The experiment config: one guardrails class, one exploration default, variants written once."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mlops.config import CONFIG_DIR, ConfigError, ExperimentConfig, load_config, read_config
from pricing.policy import DEFAULT_EXPLORATION, Guardrails

# --- guardrails -----------------------------------------------------------------------------------


def test_the_configs_guardrails_are_the_policys_with_every_key() -> None:
    assert ExperimentConfig().guardrails == Guardrails()
    every = {
        "band_low": 0.8,
        "band_high": 1.2,
        "min_margin": 0.05,
        "ladder": "99",
        "grid_size": 11,
        "max_session_change": 0.2,
        "objective": "revenue",
        "exploration": 0.1,
        "max_dispersion": 0.12,
    }
    assert set(every) == {f.name for f in fields(Guardrails)}  # the YAML keys are its fields
    g = ExperimentConfig.model_validate({"guardrails": every}).guardrails
    assert isinstance(g, Guardrails) and g == Guardrails(**every)
    assert (
        ExperimentConfig.model_validate({"guardrails": every}).model_dump()["guardrails"] == every
    )


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ({"bandlow": 0.5}, "bandlow"),  # a typo fails, never falls back to the default
        ({"band_low": 0.0}, "band_low"),
        ({"band_low": 1.2, "band_high": 1.1}, "band_high"),
        ({"ladder": "0.95"}, "ladder"),
        ({"grid_size": 2.5}, "grid_size"),
        ({"exploration": 1.5}, "exploration"),
        ({"max_dispersion": -0.1}, "max_dispersion"),
        ({"objective": "volume"}, "objective"),
    ],
)
def test_bad_guardrails_fail_when_the_config_is_read_naming_the_key(
    block: dict, named: str
) -> None:
    with pytest.raises(ValidationError, match=named):
        ExperimentConfig.model_validate({"guardrails": block})


def test_one_exploration_default_everywhere() -> None:
    from flows.cli import build_parser
    from flows.loop import loop
    from scorer.serving import serving_guardrails

    assert 0 < DEFAULT_EXPLORATION < 1
    assert Guardrails().exploration == DEFAULT_EXPLORATION
    assert ExperimentConfig().guardrails.exploration == DEFAULT_EXPLORATION
    assert load_config(CONFIG_DIR / "default.yaml").guardrails.exploration == DEFAULT_EXPLORATION
    assert serving_guardrails(None, None)[0].exploration == DEFAULT_EXPLORATION  # no guardrails
    flow_default = inspect.signature(loop.fn).parameters["exploration"].default
    cli = build_parser().parse_args(["loop", "--out", "x"])
    assert flow_default == cli.exploration == DEFAULT_EXPLORATION


# --- includes: the variants, once ---------------------------------------------------------------


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_variants_are_written_once_and_shared_by_the_configs() -> None:
    shared = yaml.safe_load((CONFIG_DIR / "variants.yaml").read_text())["variants"]
    assert "bert_wide" in shared
    including = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if path.name == "variants.yaml":
            continue
        # a config may adjust a shared variant, never define one of its own
        assert set(raw.get("variants") or {}) <= set(shared), path.name
        include = raw.get("include") or []
        if "variants.yaml" in ([include] if isinstance(include, str) else include):
            including.append(path.stem)
            cfg = load_config(path)
            assert set(cfg.variants) == set(shared)
            for name in cfg.variants:
                assert cfg.base_model(name) == "bert"
                cfg.model_block(name)  # every variant builds on this config's `bert:` block
    assert {"default", "completejourney", "tafeng", "bert-full"} <= set(including)
    default, full = (
        load_config(CONFIG_DIR / "default.yaml"),
        load_config(CONFIG_DIR / "bert-full.yaml"),
    )
    assert default.variants["bert_wide_finetune"].set == {"wide": True, "finetune_layers": 1}
    # bert-full changes two keys of one shared variant and keeps the rest
    assert full.variants["bert_wide_finetune"].set == {
        "wide": True,
        "finetune_layers": 2,
        "finetune_items": 0,
    }
    assert full.variants["bert_wide"] == default.variants["bert_wide"]


def test_an_include_is_laid_under_the_config_mappings_merged_recursively(tmp_path: Path) -> None:
    _write(
        tmp_path / "shared.yaml",
        {"variants": {"v": {"model": "bert", "set": {"wide": True, "d_model": 32}}}, "seed": 1},
    )
    cfg_path = _write(
        tmp_path / "exp.yaml",
        {"include": "shared.yaml", "seed": 7, "variants": {"v": {"set": {"d_model": 16}}}},
    )
    raw = read_config(cfg_path)
    assert "include" not in raw and raw["seed"] == 7  # the including file wins
    assert raw["variants"]["v"] == {"model": "bert", "set": {"wide": True, "d_model": 16}}
    cfg = load_config(cfg_path, {"seed": 3})  # flat overrides still come last
    assert cfg.seed == 3 and cfg.model_block("v").d_model == 16


def test_a_copied_config_still_finds_the_shipped_variants(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "default.yaml"
    copy.parent.mkdir()
    copy.write_text((CONFIG_DIR / "default.yaml").read_text())
    assert load_config(copy).variants == load_config(CONFIG_DIR / "default.yaml").variants


def test_bad_includes_fail_with_the_file_named(tmp_path: Path) -> None:
    missing = _write(tmp_path / "a.yaml", {"include": ["nope.yaml"]})
    with pytest.raises(ConfigError, match="'nope.yaml' not found"):
        load_config(missing)
    _write(tmp_path / "x.yaml", {"include": "y.yaml"})
    _write(tmp_path / "y.yaml", {"include": "x.yaml"})
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="file name or a list"):
        load_config(_write(tmp_path / "b.yaml", {"include": {"file": "x.yaml"}}))
    # an included file is validated like the rest: an unknown key in it still fails
    _write(tmp_path / "typo.yaml", {"variants": {"v": {"model": "bert", "set": {"wdie": True}}}})
    with pytest.raises(ValidationError, match="wdie"):
        load_config(_write(tmp_path / "c.yaml", {"include": "typo.yaml"}))
