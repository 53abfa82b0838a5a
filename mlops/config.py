"""Experiment configuration: versioned YAML files validated into typed models, logged with each run."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pricing.policy import Guardrails

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Strict):
    """Time split: test from `test_start` (or the last `test_fraction` of the span); validation before it."""

    test_start: datetime | None = None
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    valid_fraction: float = Field(default=0.1, ge=0, lt=1)


class PromotionConfig(_Strict):
    """The gate a challenger must pass to become champion."""

    primary_metric_simulated: str = "profit_regret"
    primary_metric_real: str = "log_loss"
    tolerance: float = 0.005  # how much worse the other metric may get (absolute)
    min_improvement: float = 0.0
    max_price_gap: float = 0.15  # fairness: max gap of mean price/list between protected groups
    # Whether a challenger whose fairness was not evaluated (no protected-group column) is blocked.
    require_fairness: bool = False
    # A baseline of the same run beating the challenger's primary metric by more than this blocks
    # the promotion (absolute; the reason names the baseline).
    baseline_tolerance: float = 0.001
    # When a baseline blocks the candidate that way, register that baseline and put it through the
    # same gate, so the champion is the best model the run measured (false: keep the champion).
    promote_winning_baseline: bool = True

    def primary_metric(self, ground_truth: bool) -> str:
        """The metric that decides: regret where the data has ground truth, else log loss."""
        return self.primary_metric_simulated if ground_truth else self.primary_metric_real


class ValidationConfig(_Strict):
    max_bad_share: float = 0.01


class ScaleConfig(_Strict):
    """How `--engine dask` cuts the data (README, "Past one machine")."""

    offers_per_bucket: int = Field(default=250_000, gt=0)  # users are bucketed to about this size
    # Training reads the offers and events of whole user buckets up to this many training and
    # validation offers (None: all); validation, features and evaluation always see all the data.
    train_sample_offers: int | None = Field(default=1_000_000, gt=0)


class EvaluationConfig(_Strict):
    max_test_offers: int | None = (
        50_000  # policy metrics on a seeded sample when the test set is larger
    )
    calibration_bins: int = 15
    # Non-inferiority margins, declared before a run: a model is "not worse" than the best baseline
    # on a metric when its paired interval's bad end stays inside the margin (metric units).
    not_worse_margins: dict[str, float] = Field(default_factory=lambda: {"log_loss": 0.001})


class BertConfig(_Strict):
    """The BERT price-response model's settings: the experiment YAML's `bert:` block.

    One typed definition for training, saving (`bert.json` keeps it) and the network's
    hyperparameters (`ARCH`); unknown keys and wrong types fail when the config is read.
    """

    ARCH: ClassVar[tuple[str, ...]] = ("d_model", "n_layers", "n_heads", "max_len", "dropout", "head_hidden", "ff_mult", "lr", "weight_decay", "warmup_steps", "cosine", "id_dropout", "finetune_lr", "price_head")  # fmt: skip

    text_encoder: Literal["minilm", "tiny"] = "minilm"  # tiny: a random-init BERT, tests only
    text_cache_dir: str | None = None  # on-disk cache of encoded texts (hash of encoder + texts)
    d_model: int = Field(default=64, gt=0)
    n_layers: int = Field(default=2, ge=0)
    n_heads: int = Field(default=2, gt=0)
    max_len: int = Field(default=32, gt=0)  # L: most recent events per history window
    dropout: float = Field(default=0.1, ge=0, lt=1)
    # Cold start: the share of items whose id embedding is dropped per training step, so text and
    # category learn to carry an item alone (items training never showed always go without).
    id_dropout: float = Field(default=0.0, ge=0, lt=1)
    head_hidden: int = Field(default=64, gt=0)
    # The price sensitivity b of the head: "mlp" = softplus(MLP([u, i, u*i, w])), any function of
    # user and item; "user_category" = exp(c + f(u, w_user) + e[category]): a property of the
    # shopper (the user vector and the wide user features) times one of the product category, so
    # it cannot learn an item's buyers' sensitivity as the item's own (README, "Price sensitivity
    # as shopper × category").
    price_head: Literal["mlp", "user_category"] = "mlp"
    ff_mult: int = Field(default=4, gt=0)  # transformer feed-forward width, in multiples of d_model
    batch_size: int = Field(default=256, gt=0)
    eval_batch_size: int = Field(default=2048, gt=0)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_steps: int = Field(default=50, ge=0)
    cosine: bool = True
    max_epochs: int = 6
    max_steps: int = -1
    patience: int = Field(default=2, ge=0)
    num_workers: int = Field(default=0, ge=0)
    pin_memory: bool | None = None  # page-locked host batches; None = on when training on a GPU
    trim_padding: bool = False  # cut each batch to its longest true history (same outputs)
    accumulate_grad_batches: int = Field(default=1, gt=0)  # optimizer step every k batches
    # torch.compile the train/val steps: true (inductor) or a backend name ("aot_eager" checks the
    # wiring on CPU in seconds; inductor takes minutes there)
    compile: bool | str = False
    checkpoint_dir: str | None = None  # persistent checkpoints (last.ckpt, best); temp when None
    checkpoint_every_n_steps: int = Field(default=200, gt=0)  # and at every epoch end
    resume: bool = True  # continue from checkpoint_dir/last.ckpt when it exists
    log_dir: str | None = None  # a CSV logger writes here when set
    serving_gap_s: float = 30.0  # assumed seconds from a user's last event to the quote
    # Wide & deep: the baselines' tabular features (all but the price) join the price head's input
    # (`mlops.models.WideFeatures`); needs the offer feature table, as the baselines do.
    wide: bool = False
    # The hybrid (docs/model.md, "The hybrid"; `mlops.models.HybridWide`): the wide rows also carry
    # a tree's out-of-fold logit and price slope at reference prices (`tree`: none, lightgbm or
    # lightgbm_text; `tree_folds` folds of users) and/or the trees' PCA-reduced MiniLM block
    # (`wide_text`); both need `wide: true`. `tree_params`: LightGBM (and text) parameters over
    # `LGB_DEFAULTS` and `TEXT_DEFAULTS`, run untuned.
    tree: Literal["none", "lightgbm", "lightgbm_text"] = "none"
    wide_text: bool = False
    tree_folds: int = Field(default=5, ge=2)
    tree_params: dict[str, Any] = Field(default_factory=dict)
    # Temperature scaling on the validation split after training: logit = s * (a - b log(p/list)),
    # s fitted by log loss (b keeps its sign, so demand stays monotone).
    calibrate: bool = False
    # Ablations: without text (no item or query vectors: the item tower is id + category only), and
    # without the user sequence (no events reach the network: one user vector for everyone; wide
    # features, when on, still summarize the history).
    text: bool = True
    sequence: bool = True
    # Fine-tuning: MiniLM's top `finetune_layers` layers train with the network, at `finetune_lr`,
    # over cached inputs (the frozen layers below run once); 0 keeps the text vectors frozen. On
    # CPU, 1 (the last layer); more on a GPU. The trained vectors are baked into the saved model:
    # serving never runs a BERT layer for an item.
    finetune_layers: int = Field(default=0, ge=0)
    finetune_lr: float = Field(default=5e-5, gt=0)
    # Items per training step whose text runs through the fine-tuned layers (with gradient); the
    # batch's other items read their latest vectors. 0: every item of the batch (GPU).
    finetune_items: int = Field(default=64, ge=0)
    # Lightning Trainer settings (accelerator, devices, strategy, precision, ...)
    trainer: dict[str, Any] = Field(default_factory=dict)

    def arch(self) -> dict[str, Any]:
        """The network's hyperparameters (what `PriceResponseModule` is built from)."""
        return {k: getattr(self, k) for k in self.ARCH}

    @property
    def hybrid(self) -> bool:
        """Whether the wide rows carry the hybrid's tree or text columns."""
        return self.tree != "none" or self.wide_text

    @model_validator(mode="after")
    def _hybrid_is_wide(self) -> BertConfig:
        if self.hybrid and not self.wide:
            raise ValueError("`tree` and `wide_text` add wide columns: set `wide: true` too")
        if "tune" in self.tree_params:
            raise ValueError("the hybrid's trees run untuned: drop `tune` from `tree_params`")
        return self


BASE_MODELS = ("logistic", "uniform", "lightgbm", "lightgbm_text", "bert")


class VariantConfig(_Strict):
    """A named variant of a model: its config block with some keys set (ablations, `pricing compare`).

    In YAML: `variants: {bert_wide: {model: bert, set: {wide: true}}}`; `bert_wide` is then a model
    name like any other (`--models bert_wide,bert,lightgbm`, `model: bert_wide`).
    """

    model: str  # one of BASE_MODELS (checked with the rest of the experiment config)
    set: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(_Strict):
    """Everything that defines one training run. Unknown keys are errors, so typos fail loudly."""

    name: str = "default"
    model: str = "lightgbm"
    baselines: list[str] = Field(default_factory=lambda: ["logistic", "lightgbm"])
    seed: int = 0
    registered_model: str | None = None  # default: settings.registered_model
    split: SplitConfig = Field(default_factory=SplitConfig)
    # `pricing.policy.Guardrails` itself: its fields, defaults and checks; unknown keys fail.
    guardrails: Guardrails = Field(default_factory=Guardrails)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    # LightGBM parameters over `mlops.models.LGB_DEFAULTS`, plus `tune: {n_trials}`: the
    # seeded Optuna budget on the validation split (`TUNE_DEFAULTS`: no tuning).
    lightgbm: dict[str, Any] = Field(default_factory=dict)
    # The same for LightGBM with the frozen MiniLM vectors, plus `mlops.models.TEXT_DEFAULTS`' keys.
    lightgbm_text: dict[str, Any] = Field(default_factory=dict)
    logistic: dict[str, Any] = Field(default_factory=lambda: {"l2": 1.0})
    # The non-personalized baseline (`mlops.models.UniformDemand`): `shrinkage` of each item's
    # curve toward its category's (absent: chosen on the validation split).
    uniform: dict[str, Any] = Field(default_factory=dict)
    bert: BertConfig = Field(default_factory=BertConfig)
    simulate: dict[str, Any] = Field(default_factory=dict)  # SimConfig overrides for --simulate
    variants: dict[str, VariantConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _variants_are_valid(self) -> ExperimentConfig:
        for name in self.variants:
            if name in BASE_MODELS:
                raise ValueError(f"variant {name!r} would hide the model of that name")
            self.model_block(name)  # a wrong key or type fails when the config is read
        return self

    def base_model(self, name: str) -> str:
        """The model kind behind `name`: itself, or the model a variant changes."""
        return self.variants[name].model if name in self.variants else name

    def model_block(self, name: str) -> Any:
        """The config block model `name` is built from: `bert` is typed (`BertConfig`), the rest
        are dicts; a variant's block is its base model's with the variant's keys set."""
        base = self.base_model(name)
        if base not in BASE_MODELS:
            raise ValueError(
                f"unknown model {name!r}: choose {', '.join(BASE_MODELS)} or a variant"
            )
        block = getattr(self, base)
        if name not in self.variants:
            return block
        changes = self.variants[name].set
        if isinstance(block, BertConfig):
            return BertConfig.model_validate({**block.model_dump(), **changes})
        return {**block, **changes}


INCLUDE = "include"  # the key naming the files a config is laid over (`read_config`)


class ConfigError(ValueError):
    """A config file that cannot be read: not a mapping, or a bad, missing or circular include."""


def read_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a mapping, laid over the files its `include:` names (a name or a list).

    What several configs share lives once in its own file (`configs/variants.yaml`: the model
    variants). An included name is looked up next to the including file, then in `configs/`, so a
    copy of a shipped config elsewhere still finds it. Mappings merge key by key, recursively, the
    including file's values winning (a config can change one variant's keys); any other value it
    sets replaces the included one. Included files may include others; a cycle is an error.
    """
    path = Path(path)
    here = path.resolve()
    if here in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, here))
        raise ConfigError(f"config include cycle: {chain}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a YAML mapping, got {type(raw).__name__}")
    names = raw.pop(INCLUDE, None) or []
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path}: `{INCLUDE}` is a file name or a list of them, got {names!r}")
    merged: dict[str, Any] = {}
    for name in names:
        candidates = [path.parent / name, CONFIG_DIR / name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(
                f"{path}: included file {name!r} not found (looked in {path.parent} and "
                f"{CONFIG_DIR})"
            )
        merged = _merge(merged, read_config(found, (*_seen, here)))
    return _merge(merged, raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: mappings merge recursively, other values of `over` replace."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Read a YAML config (default: configs/default.yaml) with its includes (`read_config`),
    apply flat overrides, and validate it."""
    raw = read_config(Path(path) if path else CONFIG_DIR / "default.yaml")
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    return ExperimentConfig.model_validate(raw)
