"""The ``sscase`` model: SS_CASE_UNet for 2-D ultrasound. Every ``--conf`` option of the app is parsed here."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import strtobool

import lib.infers
import lib.scoring
import lib.trainers
from lib.activelearning import HighestScore
from sscase_monai.active_learning import FEATURE_KINDS, SCORED_STRATEGIES, STRATEGY_REGISTRY, ActiveLearningStrategy
from sscase_monai.biometry import HEAD_LABELS, parse_label_names
from sscase_monai.method import BATCH_SIZE, PSEUDO_LABELS
from sscase_monai.model_files import DEFAULT_LABELS, ModelSpec, read_spec
from sscase_monai.training.schedules import default_schedule
from sscase_monai.transforms import DEFAULT_INPUT_SIZE, InputSize, parse_input_size

logger = logging.getLogger(__name__)

APP_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
STARTER_MODELS: dict[str, str] = {
    '{"cerebellum": 1}': os.path.join(APP_DIR, "starter", "sscase_starter.pt"),
    '{"head": 1}': os.path.join(APP_DIR, "starter", "hc18_head.pt"),
}
"""Bundled models by the labels they serve (``--conf labels`` as JSON): the cerebellum starter trained on the
synthetic sample data, and the fetal-head model trained on HC18 (``apps/sscase/starter/README.md``)."""


def starter_model(labels: dict[str, int]) -> str | None:
    """The bundled model for exactly these labels, or ``None``."""
    return STARTER_MODELS.get(json.dumps(labels))


def default_input_size(value: str | None, starter: str | None) -> InputSize:
    """The network input a Train uses: ``--conf input_size`` when given, else the bundled starter model's (so that
    training from it keeps the input it learnt, e.g. the HC18 head model's aspect-keeping one), else the method's
    256."""
    if value:
        try:
            return parse_input_size(value)
        except ValueError as e:
            raise ValueError(f"--conf input_size: {e}") from None
    return read_spec(starter).input_size if starter else DEFAULT_INPUT_SIZE


def default_strategy(scoring: bool, stages: str) -> str:
    """Next Sample's strategy when a request names none (and Slicer's first choice), as the HC18 active-learning
    simulation at 128 px found (``bench/RESULTS.md``, "Active learning at the real operating point (issue #22)").

    With stage 3 (pseudo-labels, the default Train) in the loop no strategy beat random (hybrid+pl - random+pl:
    -0.09 ± 0.41 Dice points, better on 2 of 3 seeds), so the cheapest: ``random``. Without it, ``hybrid``
    (+0.87 ± 0.07 over random, better on 3 of 3 seeds, 99 % of the full-data Dice with half the labels).
    ``random`` when scoring is off.

    Args:
        scoring: whether the scoring methods run (``--conf scoring``).
        stages: the stages a Train runs by default (``--conf train_stages``, e.g. ``"1,2,3"``).
    """
    try:
        pseudo_labelling = 3 in lib.trainers.parse_ints(stages)  # parsed as the Train task parses it
    except ValueError as e:
        raise ValueError(f"--conf train_stages must be stage numbers like 1,2,3, got {stages!r}") from e
    return "hybrid" if scoring and not pseudo_labelling else "random"


MEASUREMENTS_SUFFIX = "_measurements"
"""The measurement model of config ``sscase`` is ``sscase_measurements``: Run on it draws the TCD / HC markups."""
MODEL_FREE_STRATEGIES: tuple[str, ...] = (*(s.name for s in STRATEGY_REGISTRY.values() if not s.needs_model), "first")
"""Strategies offered without scoring: the registry's model-free ones and MONAI Label's ``first`` (``main.py`` adds
``random`` and ``first``)."""
STRATEGY_NAMES: tuple[str, ...] = (*MODEL_FREE_STRATEGIES, *(s.name for s in SCORED_STRATEGIES))


class SSCASE(TaskConfig):
    """SS_CASE_UNet: infer, three-stage train, MC-dropout, TTA and diversity scoring, and their strategies.

    Options (``--conf KEY VALUE``; defaults in brackets, all listed in ``apps/sscase/README.md``):
        labels: JSON ``{"name": value}`` of the structures to segment [``{"cerebellum": 1}``].
        encoder: ``efficientnet-lite0`` (ImageNet weights offline) or ``efficientnet-b0`` [efficientnet-lite0].
        pretrained: start training from ImageNet encoder weights: ``true``, ``false`` or a file [true].
        input_size: network input: a side, or ``HEIGHTxWIDTH`` (``256x384`` keeps 800x540 scans' aspect), multiples
            of 32 [the bundled starter model's for the labels, else 256].
        denoise: the method's 5x5 median filter before the network [true].
        tta: test-time augmentation for infer by default (a request may override) [false].
        head_label: label name(s), comma-separated, whose head circumference a Run reports, first match wins;
            ``none``: no HC [head,fetal_head].
        markups: a Run's result JSON carries the Slicer markups document of its TCD / HC (a request may
            override; ``sscase_measurements`` returns it as the result file) [true].
        starter_model: until a model is trained, use the bundled model for the labels (``{"cerebellum": 1}``: the
            sample-data starter; ``{"head": 1}``: the HC18 fetal-head model) [true].
        epistemic_samples: MC-dropout passes per image for epistemic scoring [8].
        scoring: run the scoring methods (``epistemic``, ``tta``, ``diversity``, ``hybrid``) [true].
        strategy: Next Sample's strategy when a request names none, listed first for Slicer [random; hybrid when
            ``train_stages`` leaves out stage 3: :func:`default_strategy`].
        train_epochs: epochs of stages 1,2,3 [20,50,30 on a GPU, 3,6,3 on a CPU].  train_stages: stages to run
            [1,2,3].  train_lr: learning rates [1e-4,1e-5,5e-6 on a GPU, 0.001,0.0001,5e-05 on a CPU].
        train_batch_size [8], train_samples_per_image [32 on a GPU, 8 on a CPU], train_val_split [0.2],
        train_workers [0], train_device [auto], train_consistency_weight [0], train_pseudo_labels [true],
        train_pseudo_confidence [0.95], train_pseudo_min_fraction [0.9], train_pseudo_min_pixels [10].
    """

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = _parse_labels(conf.get("labels"))
        starter = starter_model(self.labels) if strtobool(conf.get("starter_model", "true")) else None
        self.spec = ModelSpec.for_labels(
            self.labels,
            encoder=conf.get("encoder", "efficientnet-lite0"),
            input_size=default_input_size(conf.get("input_size"), starter),
            denoise=strtobool(conf.get("denoise", "true")),
        )
        pretrained = conf.get("pretrained", "true")
        self.pretrained: bool | str = strtobool(pretrained) if pretrained.lower() in ("true", "false") else pretrained
        self.tta = strtobool(conf.get("tta", "false"))
        self.head_labels = parse_label_names(conf.get("head_label", ",".join(HEAD_LABELS)))
        self.markups = strtobool(conf.get("markups", "true"))
        self.published_path = os.path.join(model_dir, f"{name}.pt")
        # BasicInferTask convention: the last existing path wins, so a trained model replaces the starter
        self.path = [starter, self.published_path]
        self.epistemic_samples = int(conf.get("epistemic_samples", "8"))
        self.scoring = strtobool(conf.get("scoring", "true"))
        self.train_defaults = _train_defaults(conf)
        self.default_strategy = conf.get("strategy", default_strategy(self.scoring, self.train_defaults["stages"]))
        allowed = STRATEGY_NAMES if self.scoring else MODEL_FREE_STRATEGIES
        if self.default_strategy not in allowed:
            raise ValueError(f"--conf strategy must be one of {allowed}, got {self.default_strategy!r}")
        logger.info("sscase: labels %s, %s, model %s", self.labels, self.spec, self.path)

    def infer(self) -> dict[str, InferTask]:
        """The segmentation model first (Slicer's auto-run picks the first model), then its measurements as markups."""
        common = {"path": self.path, "labels": self.labels, "tta": self.tta, "head_labels": self.head_labels}
        return {
            self.name: lib.infers.SSCASEInfer(**common, markups=self.markups),
            f"{self.name}{MEASUREMENTS_SUFFIX}": lib.infers.SSCASEMeasurementsInfer(
                **common,
                description=f"TCD / HC of the {self.name} segmentation as Slicer markups, named with their values",
            ),
        }

    def trainer(self) -> TrainTask:
        return lib.trainers.SSCASETrain(
            model_dir=os.path.join(self.model_dir, self.name),
            publish_path=self.published_path,
            spec=self.spec,
            pretrained=self.pretrained,
            defaults=self.train_defaults,
            init_paths=self.path,
        )

    def strategy(self) -> dict[str, Strategy]:
        if not self.scoring:
            return {}
        return {s.name: HighestScore(s.key, s.description) for s in SCORED_STRATEGIES}

    def scoring_method(self) -> dict[str, ScoringMethod]:
        if not self.scoring:
            return {}
        return {s.name: self._scoring(s) for s in SCORED_STRATEGIES}

    def _scoring(self, strategy: ActiveLearningStrategy) -> ScoringMethod:
        if strategy.kind in FEATURE_KINDS:
            return lib.scoring.DiversityScoring(path=self.path, strategy=strategy, num_samples=self.epistemic_samples)
        return lib.scoring.UncertaintyScoring(path=self.path, strategy=strategy, num_samples=self.epistemic_samples)


def _parse_labels(value: str | None) -> dict[str, int]:
    if not value:
        return dict(DEFAULT_LABELS)
    try:
        labels = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f'--conf labels must be JSON like {{"cerebellum": 1}}, got {value!r}') from e
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f'--conf labels must be a non-empty JSON object like {{"cerebellum": 1}}, got {value!r}')
    return {str(k): int(v) for k, v in labels.items()}


def _train_defaults(conf: dict[str, str]) -> dict[str, Any]:
    """Training options as Slicer shows them in the Train options, from ``train_*`` conf keys and the device's
    default schedule (:func:`sscase_monai.training.schedules.default_schedule`: the method's on a GPU, a short one on
    a CPU)."""
    device = conf.get("train_device", "auto")
    schedule = default_schedule(device)
    defaults: dict[str, Any] = {
        "stages": conf.get("train_stages", "1,2,3"),
        "epochs": conf.get("train_epochs", ",".join(str(e) for e in schedule.epochs)),
        "learning_rates": conf.get("train_lr", ",".join(f"{lr:g}" for lr in schedule.lr)),
        "batch_size": int(conf.get("train_batch_size", str(BATCH_SIZE))),
        "samples_per_image": int(conf.get("train_samples_per_image", str(schedule.samples_per_image))),
        "val_split": float(conf.get("train_val_split", "0.2")),
        "num_workers": int(conf.get("train_workers", "0")),
        "device": device,
        "consistency_weight": float(conf.get("train_consistency_weight", "0")),
        "pseudo_labels": strtobool(conf.get("train_pseudo_labels", "true")),
        "pseudo_confidence": float(conf.get("train_pseudo_confidence", str(PSEUDO_LABELS.confidence))),
        "pseudo_min_fraction": float(conf.get("train_pseudo_min_fraction", str(PSEUDO_LABELS.min_confident_fraction))),
        "pseudo_min_pixels": int(conf.get("train_pseudo_min_pixels", str(PSEUDO_LABELS.min_foreground_pixels))),
        "init_from_current_model": strtobool(conf.get("train_from_current_model", "true")),
        "resume": strtobool(conf.get("train_resume", "true")),
        "seed": int(conf.get("train_seed", "0")),
    }
    return defaults
