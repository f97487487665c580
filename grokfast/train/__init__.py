"""Training-loop pieces: epochs and evaluation, checkpoints, metrics files, RNG state."""

from grokfast.train.checkpoint import (atomic_write_bytes, atomic_write_text,
                                       epoch_checkpoint_path, latest_checkpoint,
                                       list_checkpoints, load_checkpoint, save_checkpoint)
from grokfast.train.loop import (LOSS_ON, LOSSES, count_parameters, evaluate, sequence_loss,
                                 train_epoch)
from grokfast.train.metrics import MetricsWriter, read_metrics
from grokfast.train.rng import capture_rng_state, derive_seed, make_generator, restore_rng_state

__all__ = ["LOSSES", "LOSS_ON", "MetricsWriter", "atomic_write_bytes", "atomic_write_text",
           "capture_rng_state", "count_parameters", "derive_seed", "epoch_checkpoint_path",
           "evaluate", "latest_checkpoint", "list_checkpoints", "load_checkpoint",
           "make_generator", "read_metrics", "restore_rng_state", "save_checkpoint",
           "sequence_loss", "train_epoch"]
