"""Attack and baseline-defense settings: closed pydantic schemas with defaults.

They are the recipe's ``attack:`` and ``defenses:`` sections (and ``attack``
also reads a stand-alone YAML file). Like the recipe they build on
:mod:`patrol_compress.config.base` alone, so :mod:`.recipe` embeds them
without an import cycle and ``validate`` stays torch-free.

The defaults are sized so that, on the quickstart data (64 px, ~1k training
images), the black-box attacker on an undefended split-1 edge gives visibly
faithful reconstructions in ~8 minutes on one CPU thread: a defense is only
as well measured as its attacker is trained (``docs/measurements.md``, "The
premise holds"), so the defaults err on the strong side and a weak attacker
has to be asked for explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from patrol_compress.config.base import StrictModel, read_yaml, validate

DecoderFamily = Literal["mirror", "upsample", "lift"]
DecoderLoss = Literal["mse", "mix"]


def _all_families() -> list[DecoderFamily]:
    return ["mirror", "upsample", "lift"]


class BlackboxConfig(StrictModel):
    """Learned inversion (He et al.'s black-box attacker), trained until it stops improving.

    Strength is set here, never by the victim: ``families`` are the decoder
    families trained (:mod:`patrol_compress.attacks.decoders`), and the
    one with the highest PSNR on the attacker's own validation images is
    reported (the evaluation images only score). ``upsample`` and ``lift``
    have ``base_width`` channels at the feature map's resolution whatever the
    edge's (pruned) width; ``mirror`` follows the edge's shapes, capped by
    ``max_width`` and floored by ``min_width``.

    Data and convergence: by default the attacker trains on every
    training-distribution image the data source has (``max_images: 0``; for
    Fashion-MNIST that is the whole 60,000-image training file, not the
    recipe's training cap), holds out ``val_fraction`` of them (at most
    ``max_val_images``) and trains each family until the validation PSNR has
    not improved by ``min_delta_db`` for ``patience`` epochs (at most
    ``epochs``), halving the learning rate after ``patience // 2`` such epochs;
    the best epoch's weights are kept. A fixed epoch count either wastes time
    or, worse, stops an attacker that was still learning and reports its
    failure as privacy.

    ``loss``: what the decoders minimise. ``mse`` (default) is the per-pixel
    error PSNR is a log of. An MSE decoder that cannot tell classes apart
    predicts a blur of them, which can score below the label-only SSIM floor
    while the features still carry structure; ``mix`` is the attacker who
    trains for structure too: ``0.84 * (1 - SSIM) + 0.16 * L1``, the fixed mix
    of Zhao et al. (2017, "Loss functions for image restoration with neural
    networks"), not tuned here. Epochs and families are still chosen by
    validation PSNR, so attacks stay comparable by the suite's one rule.
    """

    families: list[DecoderFamily] = Field(default_factory=_all_families, min_length=1)
    loss: DecoderLoss = "mse"
    base_width: Annotated[int, Field(ge=4, le=2048)] = 128
    lift_max_side: Annotated[int, Field(ge=1, le=64)] = 4
    lift_side: Annotated[int, Field(ge=1, le=64)] = 4
    max_width: Annotated[int, Field(ge=4, le=1024)] = 256
    min_width: Annotated[int, Field(ge=4, le=1024)] = 32
    refine: Annotated[int, Field(ge=0, le=8)] = 1
    epochs: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=60, description="maximum epochs per family (training stops earlier on a plateau)"
    )
    patience: Annotated[int, Field(ge=1, le=1000)] = 5
    min_delta_db: Annotated[float, Field(ge=0.0, le=10.0)] = 0.05
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    max_val_images: Annotated[int, Field(ge=1)] = 1000
    batch_size: Annotated[int, Field(ge=2, le=4096)] = 64
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 2e-3
    max_images: Annotated[int, Field(ge=0)] = Field(
        default=0, description="cap on attacker images, validation included (0 = all)"
    )
    feature_cache_mb: Annotated[int, Field(ge=0)] = Field(
        default=4096,
        description="features of a deterministic edge are computed once and kept in memory up "
        "to this size; above it (or for a randomised edge) they are recomputed per batch",
    )

    @model_validator(mode="after")
    def _unique_families(self) -> BlackboxConfig:
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"blackbox.families lists a family twice: {self.families}")
        return self


WhiteboxInit = Literal["gray", "mean", "decoder"]


def _default_inits() -> list[WhiteboxInit]:
    return ["gray", "decoder"]


class WhiteboxConfig(StrictModel):
    """rMLE: optimise an image so the edge's features match, with a TV prior.

    ``tv_weight`` multiplies the mean absolute difference of neighbouring
    pixels, while the feature term is the squared error normalised by the
    features' energy, so the weight does not depend on the edge's feature
    scale (which pruning and BN folding change); ``docs/measurements.md``
    records how it was chosen.

    ``inits`` are the starting points tried: ``gray`` uses no data (the pure
    white-box threat model), ``mean`` the attacker data's mean image, and
    ``decoder`` the chosen black-box decoder's reconstruction (the attacker
    knows the weights *and* has data), once per ``prior_weights`` entry: the
    weight of a squared pull back towards that reconstruction (0: none).

    Every candidate runs on ``val_images`` of the attacker's validation
    images, scored every ``check_every`` steps and stopped after ``patience``
    checks without improvement; the best candidate and step count (0, the
    start itself, included) are then run on every evaluation image. Nothing
    is chosen on the evaluation images.
    """

    steps: Annotated[int, Field(ge=0, le=100_000)] = 600
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 0.05
    tv_weight: Annotated[float, Field(ge=0.0)] = 0.5
    parametrization: Literal["sigmoid", "clamp"] = "sigmoid"
    inits: list[WhiteboxInit] = Field(default_factory=_default_inits, min_length=1)
    prior_weights: list[Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=lambda: [0.0, 1.0],
        min_length=1,
        description="decoder-prior weights tried with the decoder start (0: no prior)",
    )
    val_images: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=32, description="attacker validation images the start and step count are chosen on"
    )
    check_every: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=25, description="steps between validation scores"
    )
    patience: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=4, description="validation checks without improvement before a candidate stops"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        """Older resolved recipes still load and get today's strength.

        ``init: X`` reads as ``inits: [X, decoder]``. ``max_images`` (the white-box
        once inverted only the first N evaluation images) is dropped: every
        attack now scores every evaluation image, so a suite compares like with
        like (``AttackConfig.max_eval_images`` sets how many for all of them).
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "init" in data and "inits" not in data:
            first = data.pop("init")
            data["inits"] = [first] if first == "decoder" else [first, "decoder"]
        data.pop("max_images", None)
        return data

    @model_validator(mode="after")
    def _unique(self) -> WhiteboxConfig:
        if len(set(self.inits)) != len(self.inits):
            raise ValueError(f"whitebox.inits lists a start twice: {self.inits}")
        if len(set(self.prior_weights)) != len(self.prior_weights):
            raise ValueError(f"whitebox.prior_weights lists a weight twice: {self.prior_weights}")
        return self


class AdaptiveConfig(BlackboxConfig):
    """The black-box attacker fed by the exported edge artifact (ONNX Runtime)."""

    artifact: Path | None = Field(
        default=None, description="export folder; default RUN/export/onnx-split<K>-fp32"
    )
    export_if_missing: bool = Field(
        default=True, description="export the run's edge first when the artifact folder is absent"
    )
    threads: Annotated[int, Field(ge=0)] = Field(
        default=1, description="ONNX Runtime intra-op threads (0 = ORT default)"
    )


class RecogniserConfig(StrictModel):
    """The small CNN behind attack accuracy (see patrol_compress.metrics.image)."""

    steps: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    width: Annotated[int, Field(ge=4, le=256)] = 16
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 3e-3
    batch_size: Annotated[int, Field(ge=2)] = 64
    max_images: Annotated[int, Field(ge=0)] = Field(
        default=5000, description="cap on clean training images for classification (0 = all)"
    )


class RegionConfig(StrictModel):
    """The private region scored on its own: PSNR/SSIM of the plate, say.

    With ``per_image`` (default) the dataset's own per-image boxes are used
    where it records them: the generated vehicles store the exact box of every
    pasted plate. Elsewhere, and with ``per_image: false``, the fixed ``box``
    (fractions x0, y0, x1, y1 of width/height) applies to every image; its
    default is the lower-centre band where the generated cameras put the plate.
    """

    name: str = "plate"
    per_image: bool = True
    box: tuple[float, float, float, float] = (0.2, 0.6, 0.8, 0.9)

    @model_validator(mode="after")
    def _inside_image(self) -> RegionConfig:
        x0, y0, x1, y1 = self.box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(
                f"region.box must be fractions with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, "
                f"found {list(self.box)}"
            )
        return self


class AttackConfig(StrictModel):
    """Everything ``patrol-compress attack`` needs beyond the run directory."""

    attacker_data: Literal["train", "auxiliary"] = "train"
    auxiliary_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    max_eval_images: Annotated[int, Field(ge=1)] = 256
    grid_images: Annotated[int, Field(ge=1, le=64)] = 8
    seed: int = 0
    blackbox: BlackboxConfig = Field(default_factory=BlackboxConfig)
    whitebox: WhiteboxConfig = Field(default_factory=WhiteboxConfig)
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig)
    recogniser: RecogniserConfig = Field(default_factory=RecogniserConfig)
    region: RegionConfig | None = Field(default_factory=RegionConfig)


def load_attack_config(path: Path | str | None) -> AttackConfig:
    """Defaults when ``path`` is None; otherwise the validated YAML file (empty: defaults)."""
    if path is None:
        return AttackConfig()
    p = Path(path)
    data = read_yaml(p, "attack config")
    return validate(AttackConfig, {} if data is None else data, str(p))


AttackName = Literal["blackbox", "whitebox", "adaptive", "informed"]
DefenseName = Literal["noise", "dropout", "skip", "app"]

DEFAULT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "noise": (0.1, 0.5, 1.0, 2.0),
    "dropout": (0.2, 0.5, 0.8, 0.95),
    "skip": (0.01, 0.03, 0.1, 0.3),
    "app": (0.1, 0.5, 2.0),
}
"""Sweeps chosen to run from "barely perturbed" to "accuracy collapses" on the
quickstart target, so each baseline draws a curve across the privacy-utility
plane rather than a point (the paper's Fig. 5 shape). Skip is the most
destructive per unit of strength: measured on the quickstart target at split 2,
p = 0.1 already drops rank-1 from 90.6% to 25.6%, hence its small values."""


class DefenseSweep(StrictModel):
    """One baseline defense and the strengths it is evaluated at.

    Strength means: ``noise`` sigma relative to the per-image RMS of the edge
    output; ``dropout`` the fraction of edge-output elements dropped;
    ``skip`` the fraction of (output, input) channel connections of every
    edge convolution skipped per forward pass; ``app`` the weight of the
    adversarial reconstruction term. ``epochs`` fine-tunes the defended model
    with the defense active (APP needs at least one; the perturbation defenses
    default to none: He et al. apply them at inference to the trained model).
    """

    name: DefenseName
    strengths: list[Annotated[float, Field(ge=0.0)]] = Field(default_factory=list, max_length=32)
    epochs: Annotated[int, Field(ge=0, le=1000)] | None = None
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-4

    @model_validator(mode="after")
    def _defaults(self) -> DefenseSweep:
        if not self.strengths:
            self.strengths = list(DEFAULT_STRENGTHS[self.name])
        if self.epochs is None:
            self.epochs = 4 if self.name == "app" else 0
        if self.name == "app" and self.epochs < 1:
            raise ValueError("defenses.sweeps: 'app' trains the model, epochs must be >= 1")
        if self.name in ("dropout", "skip") and any(s >= 1.0 for s in self.strengths):
            raise ValueError(
                f"defenses.sweeps: '{self.name}' strengths are fractions below 1, "
                f"found {self.strengths}"
            )
        return self


def _default_attacks() -> list[AttackName]:
    return ["blackbox"]


class DefensesConfig(StrictModel):
    """The baselines ``patrol-compress defend`` evaluates (Section IV-A of the paper)."""

    split: Annotated[int, Field(ge=1, le=8)] | None = Field(
        default=None,
        description="split the baselines defend; default: patrol.budget.fit_split, "
        "else patrol.split (the deepest split the device fits unpruned)",
    )
    attacks: list[AttackName] = Field(default_factory=_default_attacks, min_length=1)
    sweeps: list[DefenseSweep] = Field(
        default_factory=lambda: [DefenseSweep(name=n) for n in ("noise", "dropout", "skip", "app")]
    )


def _default_frontier_methods() -> list[str]:
    return ["pruning-only", "patrol"]


def _default_frontier_attacks() -> list[AttackName]:
    return ["blackbox", "whitebox"]


class FrontierConfig(StrictModel):
    """What ``patrol-compress frontier`` measures for this recipe (command-line options win).

    ``methods`` are compared with ``pruning-only`` (plain budget-steered
    pruning); ``knobs`` vary one ``patrol:`` setting per method to span
    accuracy (``[METHOD:]PATH=V1,V2,...``); every point is repeated over
    ``target_seeds`` (one trained target each) x ``seeds`` (the pruning's
    seed). ``references`` are splits of each undefended target attacked the
    same way (default: the budget's ``fit_split`` and the pruned split).
    """

    methods: list[str] = Field(default_factory=_default_frontier_methods, min_length=2)
    knobs: list[str] = Field(default_factory=lambda: ["recovery_epochs=4,8,12"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    target_seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    references: list[Annotated[int, Field(ge=1, le=8)]] | None = None
    attacks: list[AttackName] = Field(default_factory=_default_frontier_attacks, min_length=1)
    bootstrap: Annotated[int, Field(ge=0, le=100_000)] = 1000
