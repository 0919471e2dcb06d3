"""Training and evaluation: the metrics every model and benchmark shares (AUC, GAUC, log loss), the typed
training config, the training loop, checkpoints and evaluation by user-activity group."""

from twinv2.train.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from twinv2.train.config import TrainConfig, apply_overrides, load_config
from twinv2.train.evaluate import activity_groups, evaluate_checkpoint, export_embeddings
from twinv2.train.loop import TrainResult, run_training, train_model
from twinv2.train.metrics import (
    GaucResult,
    MetricInputError,
    PerUserAuc,
    UndefinedMetricWarning,
    auc,
    evaluate_predictions,
    gauc,
    log_loss,
    per_user_auc,
)

__all__ = [
    "CheckpointInfo",
    "GaucResult",
    "MetricInputError",
    "PerUserAuc",
    "TrainConfig",
    "TrainResult",
    "UndefinedMetricWarning",
    "activity_groups",
    "apply_overrides",
    "auc",
    "evaluate_checkpoint",
    "evaluate_predictions",
    "export_embeddings",
    "gauc",
    "load_checkpoint",
    "load_config",
    "log_loss",
    "per_user_auc",
    "run_training",
    "save_checkpoint",
    "train_model",
]
