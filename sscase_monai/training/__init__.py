"""Three-stage semi-supervised training of SS_CASE_UNet, shared by ``sscase-monai train`` and the MONAI Label app.

Typical use::

    from sscase_monai.model_files import ModelSpec
    from sscase_monai.training import SemiSupervisedTrainer, TrainingConfig

    config = TrainingConfig(spec=ModelSpec(input_size=256)).with_stage_settings(epochs=(20, 50, 30))
    trainer = SemiSupervisedTrainer(config, train_items, val_items, unlabeled_items, out_dir="runs/a")
    result = trainer.run()          # result.model_path, result.metrics_table(), result.stages[2].metrics
"""

from sscase_monai.training.callbacks import CallbackList, EpochSummary, TrainingCallback
from sscase_monai.training.checkpoints import checkpoint_path, load_checkpoint, save_checkpoint
from sscase_monai.training.config import (
    DEFAULT_STAGES,
    STAGE_NAMES,
    PseudoLabelConfig,
    StageConfig,
    TrainingConfig,
)
from sscase_monai.training.distributed import DistributedContext, setup_distributed
from sscase_monai.training.pseudo_label_files import PSEUDO_LABEL_CSV, PSEUDO_LABEL_DIR, PseudoLabelRecord
from sscase_monai.training.results import (
    HISTORY_COLUMNS,
    StageResult,
    TrainingPlan,
    TrainingResult,
    write_history_csv,
)
from sscase_monai.training.run_log import HISTORY_FILE
from sscase_monai.training.schedule import EarlyStopping, plateau_scheduler
from sscase_monai.training.stage_loop import StagePlan, StagePlanner
from sscase_monai.training.trainer import METRICS_FILE, MODEL_FILE, SemiSupervisedTrainer, stage_model_path

__all__ = [
    "DEFAULT_STAGES",
    "HISTORY_COLUMNS",
    "HISTORY_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "PSEUDO_LABEL_CSV",
    "PSEUDO_LABEL_DIR",
    "STAGE_NAMES",
    "CallbackList",
    "DistributedContext",
    "EarlyStopping",
    "EpochSummary",
    "PseudoLabelConfig",
    "PseudoLabelRecord",
    "SemiSupervisedTrainer",
    "StageConfig",
    "StagePlan",
    "StagePlanner",
    "StageResult",
    "TrainingCallback",
    "TrainingConfig",
    "TrainingPlan",
    "TrainingResult",
    "checkpoint_path",
    "load_checkpoint",
    "plateau_scheduler",
    "save_checkpoint",
    "setup_distributed",
    "stage_model_path",
    "write_history_csv",
]
