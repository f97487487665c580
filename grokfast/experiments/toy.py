"""The toy model of grokking (Liu et al. 2022, "Towards Understanding Grokking: An Effective
Theory of Representation Learning", Sections 2-4, Appendices A, G, H): learnable embeddings of
the p symbols combined by a hard-coded sum (or matrix product for groups) and decoded by an
MLP, trained full batch on a binary operation while the representation quality (RQI) and the
predicted accuracy of the embeddings are tracked every logged step.

Protocol and defaults (each a ToyConfig field and a CLI flag); the paper's public code is
github.com/ejmichaud/grokking-squared, toy/train_add.py, whose defaults made Figures 3-5:

- task (``--op``): ``add`` = non-modular addition of {0..p-1} with unordered samples a <= b
  (Section 2 "Dataset"; p = 10: 55 samples, 19 results); the modular operations of Power et
  al. (``x+y``, ``x-y``, ``x*y``, ``x/y``, ...; all ordered samples); ``perm`` = the symmetric
  group S_n (Appendix H). The train/validation split draws round(train_frac * N) samples with
  the split seed (default: the seed); train_frac 0.8 gives the paper's 44/11 (45/10 in the
  paper: 0.82) for add with p = 10.
- model (grokfast.models.ToyModel): 1-D embeddings (``--embed-dim``; matrices k x k for
  ``perm``, default k = n) uniform in [-s/2, s/2] with s = ``--init-scale`` 1 (train_add.py;
  normal(0, s) for matrices as the code's permutation run); combine by sum (product for perm);
  decoder MLP 1-200-200-30 with tanh (Appendix G "an MLP with size 1-200-200-30"; tanh is the
  activation of train_add.py's NET); regression (``--loss mse``, the paper's default) onto
  fixed random targets Y_c ~ N(0, 1) of dimension 30, nearest target as the prediction, or
  classification (``--loss ce``: 2p-1 logits for add, cross-entropy).
- optimisation: two AdamW optimizers (betas 0.9, 0.999), one for the embeddings and one for
  the decoder (Section 4 "We update the representation and the decoder with different
  optimizers"). Embedding lr 1e-3 and weight decay 0 (Section 4, Appendix G: "The learning rate
  of the representation is 1e-3 ... zero weight decay of representation"; Figure 5's eta);
  decoder lr 1e-4 and weight decay 0 (train_add.py's eta_dec and weight_decay_dec defaults, the
  settings of Figures 3-4; Appendix G sweeps it over [1e-4, 1e-2] and Figure 6 over
  [1e-5, 1e-2]). Full batch (Appendix G "By default, we use full batch size"), ``--steps``
  5000 (train_add.py's default; Figure 4 used 1e4).
- measures (grokfast.representation): RQI with the public code's convention by default for
  vector embeddings (``--rqi-metric mean_sq``: embeddings standardized per dimension, a pair is
  a parallelogram when the mean squared difference <= δ = 0.01; Appendix E "We choose δ = 0.01
  to compute RQI"), ``norm`` with δ = 0.1 for matrices (Appendix H's ||E_a E_b - E_c E_d||_F^2
  <= δ with δ = 0.01); the predicted accuracy Acc-hat (Appendix D, Eq. 12-13, over the whole
  data set) with the same δ; the phase (Appendix A, Table 1: accuracies > 90% within 10^5
  steps, generalization delay < 10^3 steps) by ``classify_history`` — for a run shorter than
  10^5 steps, memorization and confusion are provisional.

A logged step s describes the model after s updates (step 0: the initialisation). Its train
loss and accuracy come from the forward pass that also computes update s + 1; validation loss
and accuracy, RQI and Acc-hat are measured at the same parameters. The seed fixes the
initialisation (embeddings, decoder and targets, from one generator) and, unless
``--split-seed`` is given, the split; nothing else is random, so on the CPU a seed gives
identical metrics run after run, and a resumed run equals an uninterrupted one.

Run directory::

    config.json     the ToyConfig (plus "experiment" and the grokfast version)
    metrics.jsonl   one line per logged step (every log_every steps, at every embed step, at 0
                    and at the last): step, train_loss, train_accuracy, val_loss,
                    val_accuracy (null without a validation set), rqi, predicted_accuracy,
                    wall_seconds; at the embed steps also "embeddings" (nested lists, [p, d]
                    or [p, k, k])
    checkpoints/    step_NNNNNN.pt every checkpoint_every steps, at 0 and at the last (model,
                    both optimizers, wall time); final.pt (the last state)
    summary.json    steps_to_rqi (first logged step with RQI > 0.95), steps_to_train_acc and
                    steps_to_val_acc (first logged step with accuracy > 0.9), the final
                    metrics, phase (and phase_train_step, phase_val_step, phase_delay),
                    rqi_metric, rqi_delta, wall_seconds, ...
    figures/        accuracy.png (train, validation, predicted accuracy), rqi.png, loss.png
                    against step; embeddings.png (1-D and 2-D embeddings directly, PCA of the
                    flattened embeddings otherwise) at the embed steps

Speed: a step is one forward/backward pass over the training set and two fused AdamW updates
(about 0.9 ms for add with p = 10 on one core of a small CPU); a logged step adds a forward pass
over the validation set and the RQI and Acc-hat kernels (about 1 ms more), hence the default
``--log-every 10`` (steps_to_* are then multiples of 10; ``--log-every 1`` for exact step
counts, as the public code, at about twice the time). Small problems run on one CPU thread
(``--threads``, default automatic). Metrics lines are buffered and appended in blocks (at every
checkpoint, at least every two seconds and at the end), not one fsync per line; a resumed run
drops the lines after its checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from grokfast.experiments.rundir import (add_run_dir_arguments, check_device, config_from_dict,
                                         flag, fresh_run_dir, int_list, is_int, is_real,
                                         open_run_dir, read_config, run_command, save_figure)
from grokfast.models.toy import ACTIVATIONS, ToyModel
from grokfast.representation.measures import METRICS, classify_history, predicted_accuracy, rqi
from grokfast.tasks.algebra import (MAX_PERMUTATION_DEGREE, Addition, AlgebraTask, ModularOp,
                                    PermutationGroup)
from grokfast.train import (MetricsWriter, atomic_write_text, count_parameters, load_checkpoint,
                            make_generator, read_metrics, save_checkpoint)

PathLike = Union[str, os.PathLike]
OPS = ("add", *ModularOp.EXPRESSIONS, "perm")
LOSSES = ("mse", "ce")
COMBINES = ("sum", "product")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Embedding snapshots by default: these steps up to --steps, and the last step.
DEFAULT_EMBED_STEPS = (0, 100, 300, 1000, 3000, 10000, 30000, 100000)
RQI_THRESHOLD = 0.95   # steps_to_rqi: first logged step with RQI > 0.95 (Section 3.2, Fig. 5)
ACC_THRESHOLD = 0.9    # steps_to_*_acc: first logged step with accuracy > 90% (Table 1)
MAX_P = 5000
# What a resumed run may change: none of these alters the trajectory on the CPU.
RESUMABLE = ("steps", "device", "checkpoint_every")
METRIC_KEYS = ("step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "rqi",
               "predicted_accuracy", "wall_seconds")
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
_FLUSH_SECONDS = 2.0
SMALL_WORK = 1 << 16  # training samples x widest layer below which a CPU run uses 1 thread


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, math.isqrt(n) + 1))


@dataclass
class ToyConfig:
    """Every setting of a toy-model run; defaults follow the paper and its public code (module
    docstring). Each field is the command-line flag of the same name (``flag(name)``);
    ``validate`` raises ValueError naming the flag. None means "resolved from the task":
    embed_dim (1, or n for perm), combine (sum, or product for perm), split_seed (the seed),
    rqi_metric and rqi_delta (mean_sq and 0.01 for sum, norm and 0.1 for product)."""

    op: str = "add"
    p: int = 10                       # symbols of add and the modular ops
    n: int = 3                        # degree of the symmetric group of perm
    train_frac: float = 0.8
    steps: int = 5000
    seed: int = 0
    split_seed: Optional[int] = None
    embed_dim: Optional[int] = None
    combine: Optional[str] = None
    hidden: tuple[int, ...] = (200, 200)
    out_dim: int = 30                 # regression targets' dimension (ce: num_results logits)
    activation: str = "tanh"
    loss: str = "mse"                 # mse onto random targets, or ce
    init_scale: float = 1.0           # embedding scale s
    decoder_init_scale: float = 1.0   # multiplies torch's default Linear initialisation
    embed_lr: float = 1e-3
    decoder_lr: float = 1e-4
    embed_wd: float = 0.0
    decoder_wd: float = 0.0
    rqi_metric: Optional[str] = None
    rqi_delta: Optional[float] = None
    log_every: int = 10               # 1 doubles the time of a p = 10 run
    embed_steps: Optional[tuple[int, ...]] = None   # None: DEFAULT_EMBED_STEPS <= steps
    checkpoint_every: int = 1000
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 0                  # CPU threads; 0: auto (1 for small problems)

    def __post_init__(self) -> None:
        for name in ("hidden", "embed_steps"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))

    # -- resolved settings -------------------------------------------------------------------

    @property
    def resolved_combine(self) -> str:
        return self.combine or ("product" if self.op == "perm" else "sum")

    @property
    def resolved_embed_dim(self) -> int:
        if self.embed_dim is not None:
            return self.embed_dim
        return self.n if self.op == "perm" else 1

    @property
    def resolved_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def resolved_rqi_metric(self) -> str:
        if self.rqi_metric is not None:
            return self.rqi_metric
        return "mean_sq" if self.resolved_combine == "sum" else "norm"

    @property
    def resolved_rqi_delta(self) -> float:
        if self.rqi_delta is not None:
            return float(self.rqi_delta)
        return 0.01 if self.resolved_rqi_metric == "mean_sq" else 0.1

    @property
    def resolved_embed_steps(self) -> tuple[int, ...]:
        """The embed steps of this run (sorted, those <= steps; the last step is added when
        snapshots are drawn, see ``_Run.embed_step``)."""
        if self.embed_steps is None:
            return tuple(s for s in DEFAULT_EMBED_STEPS if s <= self.steps)
        return tuple(sorted(set(self.embed_steps)))

    # -- validation --------------------------------------------------------------------------

    def validate(self) -> "ToyConfig":
        """Raise ValueError (naming the flag) for any bad setting; returns self."""
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"{flag(name)}: expected {expected}, got {getattr(self, name)!r}")

        if self.op not in OPS:
            raise bad("op", "one of " + ", ".join(OPS))
        if not is_int(self.threads) or self.threads < 0:
            raise bad("threads", "an integer >= 0 (0: automatic)")
        for name in ("steps", "out_dim", "log_every", "checkpoint_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        if not is_int(self.p) or not 2 <= self.p <= MAX_P:
            raise bad("p", f"an integer in 2..{MAX_P} (the number of symbols)")
        if self.op == "x/y" and not _is_prime(self.p):
            raise bad("p", "a prime for --op x/y (division needs inverses mod p)")
        if not is_int(self.n) or not 2 <= self.n <= MAX_PERMUTATION_DEGREE:
            raise bad("n", f"an integer in 2..{MAX_PERMUTATION_DEGREE} (the degree of S_n)")
        if not is_real(self.train_frac) or not 0 < self.train_frac <= 1:
            raise bad("train_frac", "a fraction in (0, 1]")
        for name in ("seed", "split_seed"):
            v = getattr(self, name)
            if (v is not None or name == "seed") and (not is_int(v) or v < 0):
                raise bad(name, "a non-negative integer")
        if self.embed_dim is not None and (not is_int(self.embed_dim) or self.embed_dim < 1):
            raise bad("embed_dim", "a positive integer")
        if self.combine is not None and self.combine not in COMBINES:
            raise bad("combine", "one of " + ", ".join(COMBINES))
        h = self.hidden
        if not isinstance(h, tuple) or not all(is_int(w) and w >= 1 for w in h):
            raise bad("hidden", "one or more positive layer widths (none: a linear decoder is "
                                "not supported; give e.g. --hidden 200 200)")
        if not h:
            raise bad("hidden", "one or more positive layer widths")
        for name, choices in (("activation", tuple(ACTIVATIONS)), ("loss", LOSSES),
                              ("dtype", tuple(DTYPES))):
            if getattr(self, name) not in choices:
                raise bad(name, "one of " + ", ".join(choices))
        for name in ("init_scale", "decoder_init_scale", "embed_lr", "decoder_lr"):
            if not is_real(getattr(self, name)) or getattr(self, name) <= 0:
                raise bad(name, "a positive number")
        for name in ("embed_wd", "decoder_wd"):
            if not is_real(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "a non-negative number")
        if self.rqi_metric is not None and self.rqi_metric not in METRICS:
            raise bad("rqi_metric", "one of " + ", ".join(METRICS))
        if self.resolved_rqi_metric == "mean_sq" and self.resolved_combine == "product":
            raise ValueError(f"{flag('rqi_metric')}: mean_sq is defined for vector embeddings "
                             f"only; use norm with --combine product")
        if self.rqi_delta is not None and (not is_real(self.rqi_delta) or self.rqi_delta < 0):
            raise bad("rqi_delta", "a number >= 0")
        if self.embed_steps is not None:
            if not isinstance(self.embed_steps, tuple):
                raise bad("embed_steps", "a list of steps")
            for s in self.embed_steps:
                if not is_int(s) or s < 0:
                    raise ValueError(f"{flag('embed_steps')}: steps must be integers >= 0, "
                                     f"got {s!r}")
                if s > self.steps:
                    raise ValueError(f"{flag('embed_steps')}: step {s} is beyond --steps "
                                     f"{self.steps}")
        self._validate_device()
        return self

    def _validate_device(self) -> None:
        check_device(self.device, flag('device'))

    # -- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["embed_steps"] = None if self.embed_steps is None else list(self.embed_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ToyConfig":
        """Inverse of to_dict; ignores the metadata keys of config.json, rejects others."""
        return config_from_dict(cls, d)


# --------------------------------------------------------------------------------------------
# Task, model, run directory


def make_task(config: ToyConfig) -> AlgebraTask:
    """The task of a (validated) config."""
    if config.op == "add":
        return Addition(config.p)
    if config.op == "perm":
        return PermutationGroup(config.n)
    return ModularOp(config.p, config.op)


def make_model(config: ToyConfig, task: AlgebraTask, generator: Optional[torch.Generator] = None,
               device=None) -> ToyModel:
    """The ToyModel of a config for its task (initialised from ``generator``)."""
    return ToyModel(task.p, config.resolved_embed_dim, task.num_results,
                    combine=config.resolved_combine,
                    mode="regression" if config.loss == "mse" else "classification",
                    hidden=config.hidden, out_dim=config.out_dim, activation=config.activation,
                    init_scale=config.init_scale, decoder_init_scale=config.decoder_init_scale,
                    generator=generator, device=device, dtype=DTYPES[config.dtype])


def default_out(seed: int, root: PathLike = "runs") -> Path:
    """A fresh folder name under ``root``: toy-<date>-<time>-seed<seed>."""
    return fresh_run_dir("toy", seed, root)


def load_config(out: PathLike) -> ToyConfig:
    """The config of the run in ``out`` (its config.json)."""
    return read_config(out, ToyConfig)


def step_checkpoint_path(directory: PathLike, step: int) -> Path:
    """checkpoints/step_000123.pt: zero-padded so names sort by step."""
    return Path(directory) / f"step_{step:06d}.pt"


def list_step_checkpoints(directory: PathLike) -> dict[int, Path]:
    """Step checkpoints in ``directory`` by step, ascending."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    found = {int(m.group(1)): p for p in directory.iterdir()
             if (m := _STEP_FILE.match(p.name))}
    return dict(sorted(found.items()))


def _check_resume(stored: ToyConfig, given: ToyConfig) -> None:
    for f in fields(ToyConfig):
        a, b = getattr(stored, f.name), getattr(given, f.name)
        if a != b and f.name not in RESUMABLE:
            raise ValueError(f"{flag(f.name)}: a resumed run keeps the setting in its "
                             f"config.json ({a!r}); got {b!r}. Only "
                             f"{', '.join(flag(n) for n in RESUMABLE)} may change")


def _version() -> str:
    from grokfast import __version__
    return __version__


class _BufferedMetrics(MetricsWriter):
    """A MetricsWriter whose records are queued and appended in blocks (one write and fsync per
    block): ``add`` queues, ``flush`` appends the queue."""

    def __init__(self, path: PathLike, keep: Optional[Callable[[dict], bool]] = None) -> None:
        super().__init__(path, keep=keep)
        self.pending: list[dict[str, Any]] = []
        self.flushed_at = time.perf_counter()

    def add(self, record: dict[str, Any]) -> None:
        self.pending.append(record)

    def flush(self) -> None:
        self.flushed_at = time.perf_counter()
        if not self.pending:
            return
        lines = [self._line(r) for r in self.pending]
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        self.records.extend(json.loads(line) for line in lines)
        self.pending = []


# --------------------------------------------------------------------------------------------
# One run


class _Run:
    """The state of one run: task, split, model and the two optimizers."""

    def __init__(self, config: ToyConfig) -> None:
        c = config
        self.config = c
        self.device = torch.device(c.device)
        self.task = make_task(c)
        self.train_mask = self.task.split(c.train_frac, c.resolved_split_seed)
        mask = self.train_mask.to(self.device)
        samples = self.task.samples.to(self.device)
        results = self.task.results.to(self.device)
        self.train_x, self.train_y = samples[mask], results[mask]
        self.val_x, self.val_y = samples[~mask], results[~mask]
        self.model = make_model(c, self.task, make_generator(c.seed, "init"), self.device)
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        self.opt_embed = torch.optim.AdamW([self.model.embedding], lr=c.embed_lr,
                                           weight_decay=c.embed_wd, betas=(0.9, 0.999), **fused)
        self.opt_decoder = torch.optim.AdamW(self.model.decoder_parameters(), lr=c.decoder_lr,
                                             weight_decay=c.decoder_wd, betas=(0.9, 0.999),
                                             **fused)
        self.metric = c.resolved_rqi_metric
        self.delta = c.resolved_rqi_delta
        # Measures run on the model's device when the CUDA kernels are built, else on the CPU.
        from grokfast._ext import backends
        self.measure_device = (self.device if self.device.type == "cpu" or backends()["cuda"]
                               else torch.device("cpu"))
        self.embed_steps = set(c.resolved_embed_steps) | {c.steps}

    def logged(self, step: int) -> bool:
        c = self.config
        return step % c.log_every == 0 or step == c.steps or step in self.embed_steps

    def measures(self) -> tuple[Optional[float], Optional[float]]:
        """(RQI, Acc-hat) of the embeddings now; None when they are not finite (or, for
        mean_sq, a dimension is constant)."""
        E = self.model.embedding.detach()
        if not bool(torch.isfinite(E).all()):
            return None, None
        E = E.to(self.measure_device)
        try:
            q = rqi(E, self.task, self.delta, metric=self.metric)
            acc = predicted_accuracy(E, self.task, self.train_mask, self.delta,
                                     metric=self.metric)
        except ValueError:  # a constant dimension (mean_sq), or sums overflowing float32
            return None, None
        return (None if math.isnan(q) else q), acc

    def record(self, step: int, train_out: torch.Tensor, train_loss: torch.Tensor
               ) -> dict[str, Any]:
        m = self.model
        rec: dict[str, Any] = {"step": step, "train_loss": float(train_loss)}
        with torch.no_grad():
            rec["train_accuracy"] = float((m.classify(train_out) == self.train_y).double().mean())
            if self.val_x.shape[0]:
                out = m(self.val_x, check=False)
                rec["val_loss"] = float(m.loss(out, self.val_y))
                rec["val_accuracy"] = float((m.classify(out) == self.val_y).double().mean())
            else:
                rec["val_loss"] = rec["val_accuracy"] = None
        rec["rqi"], rec["predicted_accuracy"] = self.measures()
        if step in self.embed_steps:
            rec["embeddings"] = m.embeddings().cpu().double().tolist()
        return rec

    def state(self, step: int, wall_seconds: float) -> dict[str, Any]:
        return {"step": step, "wall_seconds": wall_seconds, "config": self.config.to_dict(),
                "model": self.model.state_dict(), "opt_embed": self.opt_embed.state_dict(),
                "opt_decoder": self.opt_decoder.state_dict()}

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt_embed.load_state_dict(state["opt_embed"])
        self.opt_decoder.load_state_dict(state["opt_decoder"])


def _first_step(records: list[dict], key: str, threshold: float) -> Optional[int]:
    for r in records:
        v = r.get(key)
        if v is not None and v > threshold:
            return int(r["step"])
    return None


def run_toy(config: ToyConfig, out: Optional[PathLike] = None, *, resume: bool = False,
            progress: bool = True,
            on_step: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Train one toy-model run, writing the run directory ``out`` (default: a fresh folder
    under runs/). Returns the summary (also in summary.json, plus "run_dir").

    resume=True continues the run in ``out`` from its latest checkpoint (or extends a finished
    run to ``config.steps``); ``config`` must equal the stored one except for steps, device and
    checkpoint_every. On the CPU the result equals that of an uninterrupted run (metrics equal
    except wall times). on_step(record) is called after each logged step's record is made.
    """
    config.validate()
    out = open_run_dir(out, resume, default=lambda: default_out(config.seed),
                       check_resume=lambda d: _check_resume(load_config(d), config))
    ckpt_dir = out / "checkpoints"
    found = list_step_checkpoints(ckpt_dir) if resume else {}
    if found and max(found) > config.steps:
        raise ValueError(f"--steps: the run already reached step {max(found)}; "
                         f"got {config.steps}")
    threads_before = torch.get_num_threads()
    try:
        threads = _threads(config)
        if threads != threads_before:
            torch.set_num_threads(threads)
        return _run(config, out, resume, found, progress, on_step)
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)


def _threads(config: ToyConfig) -> int:
    """The CPU threads of a run: config.threads, or (0) one thread when the training batch is
    small (samples x widest layer <= SMALL_WORK): the ops are then too small to parallelise
    and idle OpenMP threads spinning cost CPU time (and wall time when runs share the cores, as
    in a sweep); otherwise torch's current setting."""
    if config.threads:
        return config.threads
    if config.device != "cpu":
        return torch.get_num_threads()
    n = len(make_task(config))
    width = max(*config.hidden, config.out_dim)
    return 1 if math.ceil(n * config.train_frac) * width <= SMALL_WORK \
        else torch.get_num_threads()


def _run(config: ToyConfig, out: Path, resume: bool, found: dict[int, Path], progress: bool,
         on_step: Optional[Callable[[dict[str, Any]], None]]) -> dict[str, Any]:
    ckpt_dir = out / "checkpoints"
    run = _Run(config)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    meta = {"experiment": "toy", "grokfast_version": _version()}
    atomic_write_text(out / "config.json",
                      json.dumps({**meta, **config.to_dict()}, indent=2) + "\n")

    start, wall_before = 0, 0.0
    if resume and found:
        state = load_checkpoint(found[max(found)], map_location=run.device)
        run.load(state)
        start, wall_before = int(state["step"]), float(state["wall_seconds"])
    if resume and (out / "summary.json").exists():
        (out / "summary.json").unlink()  # rewritten at the end

    def keep(record: dict) -> bool:
        # Lines from the checkpoint's step on are recomputed; an earlier run's last step
        # off the logging schedule (and its snapshot) was an extra the longer run lacks.
        step = record.get("step", math.inf)
        if step >= start or not run.logged(step):
            return False
        if step not in run.embed_steps:
            record.pop("embeddings", None)
        return True

    writer = _BufferedMetrics(out / "metrics.jsonl", keep=keep)
    bar = _progress_bar(config.steps, start, progress)
    model, c = run.model, config
    wall_start = time.perf_counter()
    try:
        step = start
        while True:
            out_train = model(run.train_x, check=False)  # the model after `step` updates
            loss = model.loss(out_train, run.train_y)
            if run.logged(step):
                record = run.record(step, out_train.detach(), loss.detach())
                record["wall_seconds"] = wall_before + time.perf_counter() - wall_start
                writer.add(record)
                if on_step is not None:
                    on_step(record)
            if step % c.checkpoint_every == 0 or step == c.steps:
                writer.flush()  # metrics up to the checkpoint reach the disk first
                save_checkpoint(step_checkpoint_path(ckpt_dir, step),
                                run.state(step, wall_before + time.perf_counter() - wall_start))
            elif time.perf_counter() - writer.flushed_at > _FLUSH_SECONDS:
                writer.flush()
            if bar is not None and (step % 100 == 0 or step == c.steps):
                bar.update(step - bar.n)
                r = writer.pending[-1] if writer.pending else (writer.records or [None])[-1]
                if r is not None:
                    bar.set_postfix(_postfix(r), refresh=False)
            if step == c.steps:
                break
            run.opt_embed.zero_grad(set_to_none=True)
            run.opt_decoder.zero_grad(set_to_none=True)
            loss.backward()
            run.opt_embed.step()
            run.opt_decoder.step()
            step += 1
    finally:
        writer.flush()
        if bar is not None:
            bar.close()

    records = writer.records
    final_state = load_checkpoint(step_checkpoint_path(ckpt_dir, c.steps), map_location="cpu")
    save_checkpoint(ckpt_dir / "final.pt", final_state)
    wall = float(final_state["wall_seconds"])
    summary = make_summary(config, records, run, wall)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    plot_run(out)
    summary["run_dir"] = str(out)
    return summary


def make_summary(config: ToyConfig, records: list[dict], run: "_Run", wall: float
                 ) -> dict[str, Any]:
    last = records[-1] if records else {}
    has_val = bool(run.val_x.shape[0])
    phase = classify_history(records, val_key="val_accuracy") if has_val else None
    return {
        "experiment": "toy",
        "op": config.op,
        "task": run.task.name,
        "p": run.task.p,
        "steps": config.steps,
        "steps_to_rqi": _first_step(records, "rqi", RQI_THRESHOLD),
        "steps_to_train_acc": _first_step(records, "train_accuracy", ACC_THRESHOLD),
        "steps_to_val_acc": _first_step(records, "val_accuracy", ACC_THRESHOLD),
        "train_accuracy": last.get("train_accuracy"),
        "val_accuracy": last.get("val_accuracy"),
        "train_loss": last.get("train_loss"),
        "val_loss": last.get("val_loss"),
        "rqi": last.get("rqi"),
        "predicted_accuracy": last.get("predicted_accuracy"),
        "phase": phase.phase if phase else None,
        "phase_train_step": phase.train_step if phase else None,
        "phase_val_step": phase.val_step if phase else None,
        "phase_delay": phase.delay if phase else None,
        "rqi_metric": run.metric,
        "rqi_delta": run.delta,
        "combine": config.resolved_combine,
        "embed_dim": config.resolved_embed_dim,
        "num_samples": len(run.task),
        "num_train": int(run.train_x.shape[0]),
        "num_val": int(run.val_x.shape[0]),
        "wall_seconds": wall,
        "seed": config.seed,
        "split_seed": config.resolved_split_seed,
        "device": config.device,
        "parameters": count_parameters(run.model),
        "grokfast_version": _version(),
    }


def _postfix(r: dict[str, Any]) -> dict[str, str]:
    out = {"loss": f"{r['train_loss']:.3g}", "train": f"{r['train_accuracy']:.2f}"}
    if r.get("val_accuracy") is not None:
        out["val"] = f"{r['val_accuracy']:.2f}"
    if r.get("rqi") is not None:
        out["rqi"] = f"{r['rqi']:.2f}"
    return out


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc="toy", unit="step", dynamic_ncols=True)


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    def num(v, fmt=".3f"):
        return "n/a" if v is None else format(v, fmt)

    def at(v):
        return "never" if v is None else f"step {v}"

    lines = [
        f"run:          {summary.get('run_dir', '')}",
        f"task:         {summary['task']} ({summary['num_train']} train / "
        f"{summary['num_val']} validation samples)",
        f"steps:        {summary['steps']}  ({summary['wall_seconds']:.1f} s)",
        f"accuracy:     train {num(summary['train_accuracy'])}, validation "
        f"{num(summary['val_accuracy'])}, predicted {num(summary['predicted_accuracy'])}",
        f"RQI:          {num(summary['rqi'])} ({summary['rqi_metric']}, delta "
        f"{summary['rqi_delta']:g}); > {RQI_THRESHOLD}: {at(summary['steps_to_rqi'])}",
        f"> 90% acc:    train {at(summary['steps_to_train_acc'])}, validation "
        f"{at(summary['steps_to_val_acc'])}",
        f"phase:        {summary['phase'] or 'n/a (no validation set)'}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Figures


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs = [r["step"] for r in records]
    ys = [r[key] if r.get(key) is not None else math.nan for r in records]
    return xs, ys


def _step_axis(ax, last_step: int) -> None:
    if last_step > 2000:  # log-like beyond 10, linear from step 0
        ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(0, max(last_step, 1))
    ax.set_xlabel("step")


def _pca2(x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The first two principal components of the rows of x [p, D] and their explained
    variance ratios."""
    x = x - x.mean(0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    pcs = u[:, :2] * s[:2]
    var = s ** 2
    total = float(var.sum())
    ratios = [float(v) / total if total > 0 else 0.0 for v in var[:2]]
    if pcs.shape[1] < 2:
        pcs = torch.cat([pcs, torch.zeros(pcs.shape[0], 2 - pcs.shape[1], dtype=pcs.dtype)], 1)
        ratios += [0.0] * (2 - len(ratios))
    return pcs, ratios


def plot_run(out: PathLike) -> list[Path]:
    """(Re)draw figures/accuracy.png, rqi.png, loss.png and embeddings.png from the run's
    metrics.jsonl (matplotlib's Agg canvas, no pyplot). Returns the paths written."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    records = read_metrics(out / "metrics.jsonl")
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    if (out / "summary.json").is_file():
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    title = summary.get("task", "toy model")
    last = records[-1]["step"] if records else 0
    paths = []

    def new(size=(7, 4.5)):
        fig = Figure(figsize=size, dpi=120)
        FigureCanvasAgg(fig)
        return fig

    def marks(ax, with_rqi: bool) -> None:
        for key, color, label in (("steps_to_train_acc", "tab:blue", "train > 90%"),
                                  ("steps_to_val_acc", "tab:orange", "validation > 90%"),
                                  ("steps_to_rqi", "tab:green", f"RQI > {RQI_THRESHOLD}")):
            s = summary.get(key)
            if s is not None and (with_rqi or key != "steps_to_rqi"):
                ax.axvline(s, color=color, ls=":", lw=1, label=f"{label} (step {s})")

    # accuracy
    fig = new()
    ax = fig.add_subplot()
    for key, color, label in (("train_accuracy", "tab:blue", "train"),
                              ("val_accuracy", "tab:orange", "validation"),
                              ("predicted_accuracy", "tab:purple", "predicted (Acc-hat)")):
        ax.plot(*_series(records, key), color=color, lw=1.2, label=label)
    marks(ax, False)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("accuracy")
    _step_axis(ax, last)
    ax.set_title(f"{title}: accuracy")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    paths.append(save_figure(fig, fig_dir, "accuracy"))

    # RQI
    fig = new()
    ax = fig.add_subplot()
    ax.plot(*_series(records, "rqi"), color="tab:green", lw=1.2, label="RQI")
    ax.axhline(RQI_THRESHOLD, color="gray", ls="--", lw=0.8)
    marks(ax, True)
    ax.set_ylim(-0.02, 1.02)
    metric, delta = summary.get("rqi_metric"), summary.get("rqi_delta")
    ax.set_ylabel("RQI" + (f" ({metric}, δ = {delta:g})" if metric else ""))
    _step_axis(ax, last)
    ax.set_title(f"{title}: representation quality")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    paths.append(save_figure(fig, fig_dir, "rqi"))

    # loss
    fig = new()
    ax = fig.add_subplot()
    for key, color, label in (("train_loss", "tab:blue", "train"),
                              ("val_loss", "tab:orange", "validation")):
        ax.plot(*_series(records, key), color=color, lw=1.2, label=label)
    if any((r.get("train_loss") or 0) > 0 for r in records):
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    _step_axis(ax, last)
    ax.set_title(f"{title}: loss")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    paths.append(save_figure(fig, fig_dir, "loss"))

    # embeddings
    snaps = [(r["step"], torch.tensor(r["embeddings"], dtype=torch.float64))
             for r in records if r.get("embeddings") is not None]
    cmap = colormaps["viridis"]
    if snaps:
        p = snaps[0][1].shape[0]
        colors = [cmap(i / max(p - 1, 1)) for i in range(p)]
        one_d = snaps[0][1].dim() == 2 and snaps[0][1].shape[1] == 1
        if one_d:
            fig = new((7, 0.9 + 0.45 * len(snaps)))
            ax = fig.add_subplot()
            for row, (step, e) in enumerate(snaps):
                x = e[:, 0].tolist()
                ax.scatter(x, [row] * p, c=colors, s=22, zorder=3)
                for k, v in enumerate(x):
                    ax.annotate(str(k), (v, row), textcoords="offset points", xytext=(0, 5),
                                ha="center", fontsize=6)
            ax.set_yticks(range(len(snaps)), [f"step {s}" for s, _ in snaps])
            ax.set_ylim(-0.6, len(snaps) - 0.2)
            ax.invert_yaxis()
            ax.set_xlabel("embedding")
            ax.grid(axis="x", lw=0.3)
        else:
            pca = any(e.reshape(p, -1).shape[1] != 2 for _, e in snaps)
            cols = min(3, len(snaps))
            rows = -(-len(snaps) // cols)
            fig = new((3.2 * cols, 3.0 * rows + 0.4))
            axes = fig.subplots(rows, cols, squeeze=False)
            for i, (step, e) in enumerate(snaps):
                ax = axes[i // cols][i % cols]
                flat = e.reshape(p, -1)
                if flat.shape[1] == 2:
                    xy, label = flat, ("E[0]", "E[1]")
                else:
                    xy, ratios = _pca2(flat)
                    label = (f"PC1 ({ratios[0]:.0%})", f"PC2 ({ratios[1]:.0%})")
                ax.scatter(xy[:, 0].tolist(), xy[:, 1].tolist(), c=colors, s=18, zorder=3)
                if p <= 60:
                    for k in range(p):
                        ax.annotate(str(k), (float(xy[k, 0]), float(xy[k, 1])), fontsize=6,
                                    textcoords="offset points", xytext=(3, 3))
                ax.set_title(f"step {step}", fontsize=9)
                ax.set_xlabel(label[0], fontsize=8)
                ax.set_ylabel(label[1], fontsize=8)
                ax.tick_params(labelsize=7)
            for j in range(len(snaps), rows * cols):
                axes[j // cols][j % cols].set_visible(False)
        fig.suptitle(f"{title}: embeddings" + (" (PCA of the flattened embeddings)"
                                               if not one_d and pca else ""), fontsize=10)
        fig.tight_layout()
        paths.append(save_figure(fig, fig_dir, "embeddings"))
    return paths


# --------------------------------------------------------------------------------------------
# Command line: ``grokfast toy``


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``toy`` subcommand (its handler is ``main``)."""
    d = ToyConfig()
    p = subparsers.add_parser(
        "toy", help="train Liu et al.'s toy model (embeddings + MLP decoder) on a binary "
                    "operation, tracking RQI",
        description="Train learnable symbol embeddings, combined by sum (matrix product for "
                    "groups) and decoded by an MLP, on a binary operation (Liu et al. 2022), "
                    "full batch, with separate AdamW optimizers for embeddings and decoder. "
                    "Logs train/validation loss and accuracy, RQI and predicted accuracy. "
                    "Writes a run directory: config.json, metrics.jsonl, checkpoints/, "
                    "summary.json, figures/.",
        argument_default=argparse.SUPPRESS)  # only flags given on the command line are set
    g = p.add_argument_group("task")
    g.add_argument("--op", choices=OPS, metavar="OP",
                   help="add (non-modular a+b, unordered samples a <= b), a modular operation "
                        f"({', '.join(ModularOp.EXPRESSIONS)}; mod p, ordered samples) or perm "
                        f"(the symmetric group S_n) (default {d.op})")
    g.add_argument("--p", type=int, help=f"number of symbols for add and the modular ops "
                                         f"(default {d.p})")
    g.add_argument("--n", type=int, help=f"degree of S_n for --op perm (default {d.n})")
    g.add_argument("--train-frac", type=float, metavar="F",
                   help=f"fraction of the samples in the training set, in (0, 1] "
                        f"(default {d.train_frac})")
    g.add_argument("--split-seed", type=int, metavar="S",
                   help="seed of the train/validation split (default: --seed)")
    g = p.add_argument_group("model")
    g.add_argument("--embed-dim", type=int, metavar="D",
                   help="embedding dimension d, or matrix size k with --combine product "
                        "(default 1; n for --op perm)")
    g.add_argument("--combine", choices=COMBINES,
                   help="E_a + E_b, or the matrix product E_a E_b (default sum; product for "
                        "--op perm)")
    g.add_argument("--hidden", type=int_list, nargs="+", metavar="W",
                   help="decoder hidden layer widths (default "
                        f"{' '.join(map(str, d.hidden))})")
    g.add_argument("--out-dim", type=int, metavar="K",
                   help=f"dimension of the random regression targets (default {d.out_dim}; "
                        "--loss ce outputs one logit per result)")
    g.add_argument("--activation", choices=tuple(ACTIVATIONS),
                   help=f"decoder activation (default {d.activation})")
    g.add_argument("--loss", choices=LOSSES,
                   help="mse onto fixed random targets (nearest target predicts) or ce "
                        f"(classification) (default {d.loss})")
    g.add_argument("--init-scale", type=float, metavar="S",
                   help="embedding initialisation scale: uniform in [-S/2, S/2] for vectors, "
                        f"normal(0, S) for matrices (default {d.init_scale:g})")
    g.add_argument("--decoder-init-scale", type=float, metavar="S",
                   help="multiplies the decoder's default (torch Linear) initialisation "
                        f"(default {d.decoder_init_scale:g})")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, metavar="N",
                   help=f"full-batch steps (default {d.steps})")
    g.add_argument("--seed", type=int, metavar="S",
                   help=f"seeds the initialisation (and the split) (default {d.seed})")
    g.add_argument("--embed-lr", type=float, metavar="LR",
                   help=f"AdamW learning rate of the embeddings (default {d.embed_lr:g})")
    g.add_argument("--decoder-lr", type=float, metavar="LR",
                   help=f"AdamW learning rate of the decoder (default {d.decoder_lr:g})")
    g.add_argument("--embed-wd", type=float, metavar="WD",
                   help=f"AdamW weight decay of the embeddings (default {d.embed_wd:g})")
    g.add_argument("--decoder-wd", type=float, metavar="WD",
                   help=f"AdamW weight decay of the decoder (default {d.decoder_wd:g})")
    g.add_argument("--device", metavar="DEV", help=f"cpu, cuda or cuda:N (default {d.device})")
    g.add_argument("--dtype", choices=tuple(DTYPES), help=f"(default {d.dtype})")
    g.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads of torch during the run; 0: one thread when the training "
                        "batch is small (samples x widest layer <= 65536, e.g. add with p = 10), "
                        "torch's setting otherwise (default 0)")
    g = p.add_argument_group("measurement")
    g.add_argument("--log-every", type=int, metavar="K",
                   help=f"log metrics every K steps, at every embed step and at the last "
                        f"(default {d.log_every})")
    g.add_argument("--rqi-metric", choices=METRICS,
                   help="mean_sq: the public code's standardized mean squared difference; "
                        "norm: the paper's |Z(s) - Z(t)| <= delta on the raw embeddings "
                        "(default mean_sq for sum, norm for product)")
    g.add_argument("--rqi-delta", type=float, metavar="X",
                   help="parallelogram threshold delta (default 0.01 for mean_sq, 0.1 for norm)")
    g.add_argument("--embed-steps", type=int_list, nargs="+", metavar="STEP",
                   help="steps whose embeddings are stored and drawn, besides the last (default "
                        f"{' '.join(map(str, DEFAULT_EMBED_STEPS))} up to --steps)")
    add_run_dir_arguments(p, length_flag="--steps", checkpoint_every=d.checkpoint_every)
    p.set_defaults(handler=main, parser=p)
    return p


def main(args: argparse.Namespace) -> int:
    """Handler of ``grokfast toy``: build the config from the parsed flags, run, print the
    summary. Returns the exit code (argparse errors exit with 2 through parser.error)."""
    return run_command(args, command="toy", config_cls=ToyConfig, load_config=load_config,
                       default_out=default_out, run=run_toy, format_summary=format_summary,
                       tuple_fields=("hidden", "embed_steps"))
