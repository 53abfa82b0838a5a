"""Model variants in the experiment YAML: a base model's block with some keys set (ablations)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lightning_modules.demand import BertDemand
from mlops.config import BertConfig, ExperimentConfig, load_config
from mlops.models import LightGBMDemand
from tasks.training import make_model, model_params


def _cfg(**variants: dict) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "bert": {"d_model": 32, "max_epochs": 3},
            "lightgbm": {"num_leaves": 15},
            "variants": variants,
        }
    )


def test_a_variant_builds_its_base_model_with_the_keys_it_sets() -> None:
    cfg = _cfg(
        bert_wide={"model": "bert", "set": {"wide": True}},
        lgb_big={"model": "lightgbm", "set": {"num_leaves": 63}},
    )
    model = make_model("bert_wide", cfg)
    assert isinstance(model, BertDemand)
    assert model.config.wide is True and model.config.d_model == 32  # the rest is the base block
    assert make_model("bert", cfg).config.wide is False  # the base model is unchanged
    lgb = make_model("lgb_big", cfg)
    assert isinstance(lgb, LightGBMDemand)
    assert cfg.model_block("lgb_big") == {"num_leaves": 63} and cfg.lightgbm == {"num_leaves": 15}
    params = model_params("bert_wide", cfg)
    assert params["model"] == "bert_wide" and params["variant_of"] == "bert"
    assert params["bert.wide"] is True and params["bert.d_model"] == 32
    assert "variant_of" not in model_params("bert", cfg)


def test_bad_variants_fail_when_the_config_is_read() -> None:
    with pytest.raises(ValidationError, match="no_such_key"):
        _cfg(v={"model": "bert", "set": {"no_such_key": 1}})
    with pytest.raises(ValidationError, match="hide the model"):
        _cfg(bert={"model": "bert", "set": {"wide": True}})
    with pytest.raises(ValidationError):
        _cfg(v={"model": "xgboost", "set": {}})
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        _cfg().model_block("nope")


def test_the_shipped_configs_variants_are_valid() -> None:
    for name in ("default", "completejourney", "tafeng"):
        cfg = load_config(f"configs/{name}.yaml")
        for variant in cfg.variants:
            assert isinstance(cfg.model_block(variant), BertConfig | dict)


def test_the_configs_model_kinds_are_the_registrys() -> None:
    from mlops.config import BASE_MODELS
    from mlops.models import MODELS

    assert set(BASE_MODELS) == set(MODELS)
