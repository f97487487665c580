"""The streaming-parity experiment (van Rossem & Saxe, 2025): an Elman RNN trained on every
binary sequence up to length 10 and evaluated on random sequences up to length 10,000.

Protocol (defaults of the paper's public code, each a ParityConfig field and a CLI flag): one-hot
input over {0, 1} read as token ids; ReLU Elman RNN, 100 units, linear readout to 2 outputs;
weight_ih, weight_hh and readout weight xavier-normal with gain 0.1, zero biases, h0 = ones; MSE
on one-hot targets at the last step of each sequence; plain SGD, lr 0.02 (the recurrent bias at
lr x 2, as nn.RNN's b_ih + b_hh move), batches of 128 from one shuffled pass per length,
lengths ascending, 1000 epochs. Every epoch: loss (the training loss, over every step) and
accuracy (argmax of the readout equals the target, over every step of every sequence) on 10
random sequences at each of 25 ... 10,000 steps, fixed for the run, evaluated without
materialising hidden states. The run "generalized" at the first epoch whose accuracy is 1.0 at
every evaluation length. The seed fixes the initial weights, the batch order, the training
subset (train_fraction < 1) and the evaluation sequences; on the CPU a seed gives identical
metrics run after run.

Automaton extraction (extract_every, default every epoch; 0 disables): after the epoch's
training step the Moore machine the network implements is extracted on the prefix tree of the
training set (every prefix of every training sequence, the empty one included; all 2047
prefixes up to length 10 by default) by clustering the hidden states within eps (extract_eps
absolute, or extract_eps_rel times the states' spread, default 0.1; extract_method components
or leader), and compared with the parity machine. Its numbers, the merger statistics
(grokfast.automata.dynamics.merger_stats) and the training phase (random, tree fitting,
merging, finite automaton: dynamics.PhaseTracker) go into the epoch's metrics line.
Extraction reads the model only and draws no random numbers, so a run with it trains exactly
as one without, and resumes bit-identically.

Run directory::

    config.json     the ParityConfig (plus "experiment" and the grokfast version)
    metrics.jsonl   one line per epoch: train loss/accuracy, loss and accuracy per evaluation
                    length (keys are lengths as strings), epoch and cumulative wall seconds;
                    on extracted epochs also EXTRACTION_KEYS (num_states, phase, ...)
    checkpoints/    epoch_NNNNNN.pt every checkpoint_every epochs, at epoch 0 and at the end;
                    final.pt (the last state)
    summary.json    epochs, generalized_epoch, accuracy/loss per length at the end, wall_seconds;
                    final_num_states, final_num_states_minimized, final_equals_target,
                    final_phase, finite_automaton_epoch (first epoch in that phase)
    automaton.json  the machine extracted at the last epoch (MooreMachine.load / from_json;
    automaton.dot   raw: one state per cluster, .minimize() reduces it), and its Graphviz source
    figures/        loss.png and accuracy.png against epoch, one curve per evaluation length;
                    states.png (raw and minimized state counts under the train loss, phases as
                    coloured bands); automaton.png when Graphviz's dot is on PATH

``extract_run`` (``grokfast extract --run DIR``) extracts from a saved checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import shutil
import subprocess
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from grokfast.experiments.rundir import (check_device, config_from_dict, flag, fresh_run_dir,
                                         is_int, is_real, open_run_dir, read_config, save_figure)
from grokfast.automata.dynamics import (FINITE_AUTOMATON, PHASES, PhaseTracker,
                                        first_epoch_in_phase, merger_stats, phase_of)
from grokfast.automata.extract import (DEFAULT_EPS_REL, METHODS, Extraction, PrefixTree,
                                       extract_from_states, tree_states)
from grokfast.automata.moore import MooreMachine
from grokfast.models import SequenceRNN
from grokfast.ops.rnn import ACTIVATIONS, MAX_HIDDEN_GPU
from grokfast.tasks import StreamingParity
from grokfast.train import (LOSS_ON, LOSSES, MetricsWriter, atomic_write_text,
                            capture_rng_state, count_parameters, epoch_checkpoint_path, evaluate,
                            list_checkpoints, load_checkpoint, make_generator, restore_rng_state,
                            save_checkpoint, train_epoch)

PathLike = Union[str, os.PathLike]
DEFAULT_EVAL_LENGTHS = (25, 50, 100, 250, 1000, 2500, 10000)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# What a resumed run may change: none of these alters the trajectory on the CPU.
RESUMABLE = ("epochs", "device", "checkpoint_every")
# The keys an extracted epoch adds to its metrics line.
EXTRACTION_KEYS = ("num_states", "num_states_minimized", "equals_target", "phase",
                   "output_accuracy", "transition_conflicts", "output_conflicts",
                   "undefined_transitions", "extract_eps", "pairs_within_eps", "merged_pairs",
                   "merged_agreeing_pairs", "merged_agreeing_fraction", "agreeing_pairs",
                   "agreeing_unmerged_by_length")
MAX_EXTRACT_LENGTH = 20


@dataclass
class ParityConfig:
    """Every setting of a streaming-parity run; defaults follow the paper's public code.

    Each field is the command-line flag of the same name (``flag(name)``); ``validate``
    raises ValueError naming the flag.
    """

    epochs: int = 1000
    seed: int = 0
    max_length: int = 10          # train on every sequence of lengths 1..max_length
    train_fraction: float = 1.0   # per length, keep a Binomial(2^len, f) subset (at least 1)
    hidden: int = 100
    activation: str = "relu"
    init_scale: float = 0.1       # xavier-normal gain G of weight_ih, weight_hh, readout
    learn_h0: bool = False        # h0 = ones, fixed unless learnt
    loss: str = "mse"             # mse on one-hot targets, or ce
    loss_on: str = "last"         # last step of each sequence, or all steps
    lr: float = 0.02              # plain SGD
    bias_lr_scale: float = 2.0    # recurrent bias lr multiplier: 2 = nn.RNN's b_ih + b_hh
    batch_size: int = 128
    eval_every: int = 1
    eval_lengths: tuple[int, ...] = DEFAULT_EVAL_LENGTHS
    eval_count: int = 10          # random sequences per evaluation length
    checkpoint_every: int = 100
    device: str = "cpu"
    dtype: str = "float32"
    extract_every: int = 1        # extract the automaton every N epochs and at the last; 0: never
    extract_eps: Optional[float] = None      # absolute clustering radius, or
    extract_eps_rel: Optional[float] = None  # radius / spread of the states (None: 0.1)
    extract_method: str = "components"       # or "leader" (the paper code's greedy pass)

    def __post_init__(self) -> None:
        if isinstance(self.eval_lengths, list):
            self.eval_lengths = tuple(self.eval_lengths)

    def validate(self) -> "ParityConfig":
        """Raise ValueError (naming the flag) for any bad setting; returns self."""
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"{flag(name)}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("epochs", "hidden", "batch_size", "eval_every", "eval_count",
                     "checkpoint_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        if not is_int(self.max_length) or self.max_length < 1:
            raise bad("max_length", "a sequence length >= 1")
        if self.max_length > 20:
            raise bad("max_length", "at most 20 (2^L sequences of every length are enumerated)")
        if not is_int(self.seed) or self.seed < 0:
            raise bad("seed", "a non-negative integer")
        if not is_real(self.train_fraction) or not 0 < self.train_fraction <= 1:
            raise bad("train_fraction", "a fraction in (0, 1]")
        for name in ("init_scale", "lr"):
            if not is_real(getattr(self, name)) or getattr(self, name) <= 0:
                raise bad(name, "a positive number")
        if not is_real(self.bias_lr_scale) or self.bias_lr_scale < 0:
            raise bad("bias_lr_scale", "a non-negative number")
        if not isinstance(self.learn_h0, bool):
            raise bad("learn_h0", "True or False")
        for name, choices in (("activation", ACTIVATIONS), ("loss", LOSSES),
                              ("loss_on", LOSS_ON), ("dtype", tuple(DTYPES))):
            if getattr(self, name) not in choices:
                raise bad(name, "one of " + ", ".join(choices))
        lengths = self.eval_lengths
        if not isinstance(lengths, tuple) or not lengths:
            raise bad("eval_lengths", "one or more sequence lengths")
        for n in lengths:
            if not is_int(n) or n < 1:
                raise ValueError(f"{flag('eval_lengths')}: sequence lengths must be integers "
                                 f">= 1, got {n!r}")
        if len(set(lengths)) != len(lengths):
            raise bad("eval_lengths", "distinct lengths")
        if not is_int(self.extract_every) or self.extract_every < 0:
            raise bad("extract_every", "an integer >= 0 (0 disables extraction)")
        for name in ("extract_eps", "extract_eps_rel"):
            v = getattr(self, name)
            if v is not None and (not is_real(v) or v < 0):
                raise bad(name, "a number >= 0")
        if self.extract_eps is not None and self.extract_eps_rel is not None:
            raise ValueError(f"{flag('extract_eps')}: give either {flag('extract_eps')} "
                             f"(absolute) or {flag('extract_eps_rel')} (relative), not both")
        if self.extract_method not in METHODS:
            raise bad("extract_method", "one of " + ", ".join(METHODS))
        self._validate_device()
        return self

    def _validate_device(self) -> None:
        check_device(self.device, flag('device'))
        if torch.device(self.device).type == "cuda":
            if self.dtype != "float32":
                raise ValueError(f"{flag('dtype')}: the CUDA kernels are float32 only, got "
                                 f"{self.dtype!r} with --device {self.device}")
            if self.hidden > MAX_HIDDEN_GPU:
                raise ValueError(f"{flag('hidden')}: at most {MAX_HIDDEN_GPU} on CUDA, "
                                 f"got {self.hidden}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["eval_lengths"] = list(self.eval_lengths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ParityConfig":
        """Inverse of to_dict; ignores the metadata keys of config.json, rejects others."""
        return config_from_dict(cls, d)


def default_out(seed: int, root: PathLike = "runs") -> Path:
    """A fresh folder name under ``root``: parity-<date>-<time>-seed<seed>."""
    return fresh_run_dir("parity", seed, root)


def load_config(out: PathLike) -> ParityConfig:
    """The config of the run in ``out`` (its config.json)."""
    return read_config(out, ParityConfig)


def _check_resume(stored: ParityConfig, given: ParityConfig) -> None:
    for f in fields(ParityConfig):
        a, b = getattr(stored, f.name), getattr(given, f.name)
        if a != b and f.name not in RESUMABLE:
            raise ValueError(f"{flag(f.name)}: a resumed run keeps the setting in its "
                             f"config.json ({a!r}); got {b!r}. Only "
                             f"{', '.join(flag(n) for n in RESUMABLE)} may change")


def _generalized_epoch(records: list[dict]) -> Optional[int]:
    """First epoch whose evaluation has accuracy 1.0 at every length."""
    for r in records:
        acc = r.get("accuracy")
        if acc and all(a == 1.0 for a in acc.values()):
            return int(r["epoch"])
    return None


def _version() -> str:
    from grokfast import __version__
    return __version__


def extraction_tree(task: StreamingParity) -> PrefixTree:
    """The prefix tree runs extract on: every prefix of every training sequence (all sequences
    up to max_length when train_fraction is 1)."""
    if task.train_fraction == 1.0:
        return PrefixTree.full(task.num_symbols, task.max_length)
    rows = [row for d in task.train_set.values() for row in d.inputs.cpu().numpy()]
    return PrefixTree.from_sequences(rows, task.num_symbols)


def extraction_record(extraction: Extraction, target: MooreMachine,
                      tracker: PhaseTracker) -> dict[str, Any]:
    """The EXTRACTION_KEYS of one extracted epoch (advances ``tracker``)."""
    s = extraction.summary()
    record = {k: s[k] for k in ("num_states", "num_states_minimized", "equals_target")}
    record["phase"] = phase_of(extraction, tracker)
    for k in ("output_accuracy", "transition_conflicts", "output_conflicts",
              "undefined_transitions"):
        record[k] = s[k]
    record["extract_eps"] = extraction.eps
    record.update(merger_stats(extraction, target))
    return record


def _extracted(record: dict[str, Any]) -> bool:
    return record.get("num_states") is not None


class _Run:
    """The state of one run: task, model, optimizer and shuffle generator."""

    def __init__(self, config: ParityConfig) -> None:
        c = config
        self.config = c
        self.device = torch.device(c.device)
        dtype = DTYPES[c.dtype]
        self.task = StreamingParity(c.max_length, train_fraction=c.train_fraction, seed=c.seed)
        self.train_data = {n: d.to(self.device) for n, d in self.task.train_set.items()}
        self.eval_data = self.task.eval_data(c.eval_lengths, c.eval_count, c.seed,
                                             device=self.device)
        self.model = SequenceRNN(2, 2, c.hidden, activation=c.activation,
                                 init_scale=c.init_scale, learn_h0=c.learn_h0,
                                 generator=make_generator(c.seed, "init"),
                                 device=self.device, dtype=dtype)
        self.optimizer = torch.optim.SGD(self.model.param_groups(c.lr, c.bias_lr_scale), lr=c.lr)
        self.shuffle = make_generator(c.seed, "shuffle")
        self.tree = extraction_tree(self.task) if c.extract_every else None

    def extract(self) -> Extraction:
        """The automaton of the model as it is now (reads the model, draws no random numbers)."""
        c = self.config
        ts = tree_states(self.model, self.tree)
        return extract_from_states(self.tree, ts.states, ts.outputs, eps=c.extract_eps,
                                   eps_rel=c.extract_eps_rel, method=c.extract_method,
                                   target=self.task.machine)

    def state(self, epoch: int, wall_seconds: float) -> dict[str, Any]:
        return {"epoch": epoch, "wall_seconds": wall_seconds,
                "config": self.config.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": capture_rng_state({"shuffle": self.shuffle})}

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"], {"shuffle": self.shuffle})


def run_parity(config: ParityConfig, out: Optional[PathLike] = None, *, resume: bool = False,
               progress: bool = True,
               on_epoch: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Train and evaluate one streaming-parity run, writing the run directory ``out``
    (default: a fresh folder under runs/). Returns the summary (also in summary.json).

    resume=True continues the run in ``out`` from its latest checkpoint (or extends a finished
    run to ``config.epochs``); ``config`` must equal the stored one except for epochs, device
    and checkpoint_every. On the CPU the result equals that of an uninterrupted run (metrics
    equal except wall times). on_epoch(record) is called after each epoch's metrics line.
    """
    config.validate()
    out = open_run_dir(out, resume, default=lambda: default_out(config.seed),
                       check_resume=lambda d: _check_resume(load_config(d), config))
    ckpt_dir = out / "checkpoints"
    found = list_checkpoints(ckpt_dir) if resume else {}
    if found and max(found) > config.epochs:
        raise ValueError(f"--epochs: the run already reached epoch {max(found)}; "
                         f"got {config.epochs}")
    run = _Run(config)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    meta = {"experiment": "parity", "grokfast_version": _version()}
    atomic_write_text(out / "config.json",
                      json.dumps({**meta, **config.to_dict()}, indent=2) + "\n")

    start_epoch, wall_before = 0, 0.0
    if resume:
        if found:
            state = load_checkpoint(found[max(found)], map_location=run.device)
            run.load(state)
            start_epoch, wall_before = int(state["epoch"]), float(state["wall_seconds"])
        if start_epoch < config.epochs and (out / "summary.json").exists():
            (out / "summary.json").unlink()  # describes the shorter run this one extends

    def keep(record: dict) -> bool:
        if record.get("epoch", math.inf) > start_epoch:
            return False
        if record["epoch"] % config.eval_every:  # the extra evaluation of an earlier last epoch
            record.pop("loss", None)
            record.pop("accuracy", None)
        if not config.extract_every or record["epoch"] % config.extract_every:
            for k in EXTRACTION_KEYS:  # likewise the extra extraction
                record.pop(k, None)
        return True

    writer = MetricsWriter(out / "metrics.jsonl", keep=keep)
    tracker = PhaseTracker()
    for r in writer.records:  # a resumed run replays the phases so far
        tracker.update_record(r)
    last_extraction: Optional[Extraction] = None
    if start_epoch == 0:
        save_checkpoint(epoch_checkpoint_path(ckpt_dir, 0), run.state(0, 0.0))

    longest = str(max(config.eval_lengths))
    bar = _progress_bar(config.epochs, start_epoch, progress)
    wall_start = time.perf_counter()
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            t0 = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch}
            record.update(train_epoch(run.model, run.optimizer, run.train_data,
                                      batch_size=config.batch_size, generator=run.shuffle,
                                      loss=config.loss, loss_on=config.loss_on))
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                record.update(evaluate(run.model, run.eval_data, loss=config.loss))
            if config.extract_every and (epoch % config.extract_every == 0
                                         or epoch == config.epochs):
                last_extraction = run.extract()
                record.update(extraction_record(last_extraction, run.task.machine, tracker))
            now = time.perf_counter()
            record["epoch_seconds"] = now - t0
            record["wall_seconds"] = wall_before + now - wall_start
            writer.write(record)
            if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
                save_checkpoint(epoch_checkpoint_path(ckpt_dir, epoch),
                                run.state(epoch, record["wall_seconds"]))
            if bar is not None:
                postfix = {"loss": f"{record['train_loss']:.3g}"}
                if "accuracy" in record:
                    postfix[f"acc@{longest}"] = f"{record['accuracy'][longest]:.3f}"
                if _extracted(record):
                    postfix["states"] = f"{record['num_states']}/{record['num_states_minimized']}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
            if on_epoch is not None:
                on_epoch(record)
    finally:
        if bar is not None:
            bar.close()

    wall = wall_before + time.perf_counter() - wall_start
    records = writer.records
    final_state = load_checkpoint(epoch_checkpoint_path(ckpt_dir, config.epochs),
                                  map_location="cpu")
    if start_epoch == config.epochs:
        wall = float(final_state["wall_seconds"])
    save_checkpoint(ckpt_dir / "final.pt", final_state)
    last = records[-1] if records else {}
    extracted = [r for r in records if _extracted(r)]
    final_ext = extracted[-1] if extracted else {}
    summary = {
        "experiment": "parity",
        "epochs": config.epochs,
        "generalized_epoch": _generalized_epoch(records),
        "accuracy": last.get("accuracy", {}),
        "loss": last.get("loss", {}),
        "train_loss": last.get("train_loss"),
        "train_accuracy": last.get("train_accuracy"),
        "wall_seconds": wall,
        "seed": config.seed,
        "device": config.device,
        "num_train": run.task.num_train,
        "parameters": count_parameters(run.model),
        "grokfast_version": _version(),
        "final_num_states": final_ext.get("num_states"),
        "final_num_states_minimized": final_ext.get("num_states_minimized"),
        "final_equals_target": final_ext.get("equals_target"),
        "final_phase": final_ext.get("phase"),
        "finite_automaton_epoch": first_epoch_in_phase(records, FINITE_AUTOMATON),
    }
    if config.extract_every:
        if last_extraction is None:  # resuming a finished run: the model is the final one
            last_extraction = run.extract()
        write_automaton(out, last_extraction.machine)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    plot_run(out)
    summary["run_dir"] = str(out)
    return summary


def write_automaton(out: PathLike, machine: MooreMachine, stem: str = "automaton"
                    ) -> list[Path]:
    """Write ``machine`` as <stem>.json (``MooreMachine.save``) and <stem>.dot into ``out``
    (atomic writes), and figures/<stem>.png when Graphviz's ``dot`` is on PATH (skipped
    silently otherwise, or when dot fails). Returns the paths written."""
    out = Path(out)
    json_path, dot_path = out / f"{stem}.json", out / f"{stem}.dot"
    machine.save(json_path)
    atomic_write_text(dot_path, machine.to_dot())
    paths = [json_path, dot_path]
    png = render_dot(dot_path, out / "figures" / f"{stem}.png")
    if png is not None:
        paths.append(png)
    return paths


def render_dot(dot_path: PathLike, png_path: PathLike, timeout: float = 60.0
               ) -> Optional[Path]:
    """``dot -Tpng`` of a DOT file into png_path (atomic); None when Graphviz's ``dot`` is not
    on PATH or fails."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.tmp")
    try:
        done = subprocess.run([exe, "-Tpng", str(dot_path), "-o", str(tmp)],
                              capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0 or not tmp.is_file():
            return None
        os.replace(tmp, png_path)
        return png_path
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        if tmp.exists():
            tmp.unlink()


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc="parity", unit="epoch", dynamic_ncols=True)


def plot_run(out: PathLike) -> list[Path]:
    """(Re)draw figures/loss.png and figures/accuracy.png from the run's metrics.jsonl.
    Uses matplotlib's Agg canvas directly (no pyplot, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from grokfast.train import read_metrics

    out = Path(out)
    records = read_metrics(out / "metrics.jsonl")
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    evaluated = [r for r in records if "accuracy" in r]
    lengths = sorted({int(k) for r in evaluated for k in r["accuracy"]})
    generalized = _generalized_epoch(records)
    train_label = "train"
    if (out / "config.json").is_file():
        loss_on = json.loads((out / "config.json").read_text(encoding="utf-8")).get("loss_on")
        train_label = f"train (loss on {loss_on} step{'s' if loss_on == 'all' else ''})"
    paths = []
    for name, key, ylabel in (("loss", "loss", "loss"), ("accuracy", "accuracy", "accuracy")):
        fig = Figure(figsize=(7, 4.5), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if key == "loss" and records:
            ax.plot([r["epoch"] for r in records],
                    [r["train_loss"] if r["train_loss"] is not None else math.nan
                     for r in records], color="black", lw=1.2, label=train_label, zorder=3)
        cmap = _colors(len(lengths))
        for color, n in zip(cmap, lengths):
            pts = [(r["epoch"], r[key].get(str(n))) for r in evaluated]
            pts = [(e, v if v is not None else math.nan) for e, v in pts]
            if pts:
                ax.plot(*zip(*pts), color=color, lw=1, label=f"T = {n}")
        if generalized is not None:
            ax.axvline(generalized, color="gray", ls="--", lw=1,
                       label=f"generalized (epoch {generalized})")
        if key == "loss":
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"streaming parity: {ylabel} per evaluation length")
        if records:
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        paths.append(save_figure(fig, fig_dir, name))
    if any(_extracted(r) for r in records):
        paths.append(_plot_states(records, fig_dir, train_label, generalized))
    return paths


PHASE_COLORS = {"random": "#bdbdbd", "tree fitting": "#fdae6b", "merging": "#9ecae1",
                "finite automaton": "#a1d99b"}


def _phase_spans(records: list[dict]) -> list[tuple[str, float, float]]:
    """(phase, start, end) of each run of extracted epochs in one phase; an epoch e covers
    [e - 1, e] (its training), so consecutive runs meet."""
    spans: list[list] = []
    prev = 0.0
    for r in records:
        if not _extracted(r) or r.get("phase") not in PHASES:
            continue
        e = float(r["epoch"])
        if spans and spans[-1][0] == r["phase"]:
            spans[-1][2] = e
        else:
            spans.append([r["phase"], prev, e])
        prev = e
    return [tuple(x) for x in spans]


def _plot_states(records: list[dict], fig_dir: Path, train_label: str,
                 generalized: Optional[int]) -> Path:
    """figures/states.png: the train loss above the raw and minimized state counts, sharing
    the epoch axis, with the phases as coloured bands."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    fig = Figure(figsize=(7, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax_loss, ax_states = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.4]})
    ax_loss.plot([r["epoch"] for r in records],
                 [r["train_loss"] if r.get("train_loss") is not None else math.nan
                  for r in records], color="black", lw=1.2, label=train_label)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("train loss")
    ext = [r for r in records if _extracted(r)]
    epochs = [r["epoch"] for r in ext]
    ax_states.plot(epochs, [r["num_states"] for r in ext], color="tab:red", lw=1.2,
                   label="extracted (raw)")
    ax_states.plot(epochs, [r["num_states_minimized"] for r in ext], color="tab:blue", lw=1.2,
                   label="minimized")
    if max(max(r["num_states"] for r in ext), 1) > 60:  # a lazy run's tree: thousands
        ax_states.set_yscale("log")
        ax_states.yaxis.set_major_formatter(ScalarFormatter())
    else:
        ax_states.set_ylim(0, None)
        ax_states.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_states.set_ylabel("automaton states")
    ax_states.set_xlabel("epoch")
    seen = []
    for phase, lo, hi in _phase_spans(records):
        for ax in (ax_loss, ax_states):
            ax.axvspan(lo, hi, color=PHASE_COLORS[phase], alpha=0.45, lw=0, zorder=0)
        if phase not in seen:
            seen.append(phase)
    if generalized is not None:
        for ax in (ax_loss, ax_states):
            ax.axvline(generalized, color="gray", ls="--", lw=1)
    handles, _ = ax_states.get_legend_handles_labels()
    handles += [Patch(color=PHASE_COLORS[p], alpha=0.45, label=p)
                for p in PHASES if p in seen]
    ax_states.legend(handles=handles, fontsize=8, loc="best")
    ax_loss.legend(fontsize=8, loc="best")
    ax_loss.set_title("streaming parity: train loss and extracted automaton size")
    fig.tight_layout()
    return save_figure(fig, fig_dir, "states")


def _colors(n: int) -> list:
    from matplotlib import colormaps
    cmap = colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    g = summary.get("generalized_epoch")
    acc = summary.get("accuracy") or {}
    lines = [
        f"run:          {summary.get('run_dir', '')}",
        f"epochs:       {summary['epochs']}  ({summary['wall_seconds']:.1f} s)",
        "generalized:  " + (f"epoch {g}" if g is not None else "no (not every evaluation "
                            "length reached accuracy 1.0)"),
    ]
    if summary.get("train_loss") is not None:
        lines.append(f"train loss:   {summary['train_loss']:.3g}")
    if acc:
        lines.append("accuracy:     " + "  ".join(f"T={k}: {v:.3f}" for k, v in acc.items()))
    if summary.get("final_num_states") is not None:
        fa = summary.get("finite_automaton_epoch")
        lines.append(f"automaton:    {summary['final_num_states']} states "
                     f"({summary['final_num_states_minimized']} minimized), phase "
                     f"{summary['final_phase']}"
                     + (f"; finite automaton from epoch {fa}" if fa is not None else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Extraction from a saved run (grokfast extract)


def _checkpoint_for(run_dir: Path, epoch: Optional[int]) -> tuple[Path, Optional[str]]:
    ckpt_dir = run_dir / "checkpoints"
    found = list_checkpoints(ckpt_dir)
    if epoch is None:
        if (ckpt_dir / "final.pt").is_file():
            return ckpt_dir / "final.pt", None
        if not found:
            raise ValueError(f"--run: {run_dir} has no checkpoints (no checkpoints/final.pt "
                             "or checkpoints/epoch_NNNNNN.pt)")
        return found[max(found)], None
    if not is_int(epoch) or epoch < 0:
        raise ValueError(f"--epoch: expected an epoch >= 0, got {epoch!r}")
    if epoch not in found:
        have = ", ".join(str(e) for e in found) if found else "none"
        raise ValueError(f"--epoch: {run_dir} has no checkpoint for epoch {epoch} "
                         f"(checkpoints/epoch_{epoch:06d}.pt); available epochs: {have}")
    return found[epoch], f"automaton_epoch_{epoch:06d}"


def extract_run(run_dir: PathLike, epoch: Optional[int] = None, *,
                eps: Optional[float] = None, eps_rel: Optional[float] = None,
                method: Optional[str] = None, max_length: Optional[int] = None,
                write: bool = True) -> dict[str, Any]:
    """Extract the automaton of a saved parity run's checkpoint and write it into the run.

    run_dir: a run directory (config.json, checkpoints/). epoch: the checkpoint
    checkpoints/epoch_{epoch:06d}.pt; default the final one (checkpoints/final.pt, else the
    latest epoch checkpoint). eps / eps_rel / method: as ``extract`` (default: the run's
    extract_eps / extract_eps_rel / extract_method, so the result equals the one the run
    logged for that epoch). max_length: extract on every sequence up to this length instead
    of the training set's prefix tree (the default, as during training).

    write: write automaton.json and automaton.dot (atomic; figures/automaton.png when dot is
    on PATH) into run_dir, named automaton_epoch_NNNNNN.* when ``epoch`` is given so the end
    of run automaton is not overwritten. The machine written is the raw extracted one
    (``MooreMachine.load(path).minimize()`` reduces it).
    Returns {"extraction", "epoch", "checkpoint", "paths", "config", "tree"}.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"--run: {run_dir} is not a directory")
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"--run: {run_dir} holds no run (no config.json)")
    if eps is not None and eps_rel is not None:
        raise ValueError("--eps: give either --eps (absolute) or --eps-rel (relative), not both")
    for name, v in (("eps", eps), ("eps_rel", eps_rel)):
        if v is not None and (not is_real(v) or v < 0):
            raise ValueError(f"{flag(name)}: expected a number >= 0, got {v!r}")
    if method is not None and method not in METHODS:
        raise ValueError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if max_length is not None and (not is_int(max_length)
                                   or not 1 <= max_length <= MAX_EXTRACT_LENGTH):
        raise ValueError(f"--max-length: expected a sequence length in 1..{MAX_EXTRACT_LENGTH}, "
                         f"got {max_length!r}")
    config = ParityConfig.from_dict(json.loads((run_dir / "config.json").read_text("utf-8")))
    path, stem = _checkpoint_for(run_dir, epoch)
    try:
        state = load_checkpoint(path, map_location="cpu")
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"--run: {path} is not a readable checkpoint ({exc})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"--run: {path} is not a parity checkpoint (no model state)")
    model = SequenceRNN(2, 2, config.hidden, activation=config.activation,
                        init_scale=config.init_scale, learn_h0=config.learn_h0,
                        generator=torch.Generator().manual_seed(0),  # overwritten below
                        dtype=DTYPES[config.dtype])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"--run: {path} does not fit the model of config.json: {exc}") from None
    task = StreamingParity(config.max_length, train_fraction=config.train_fraction,
                           seed=config.seed)
    tree = extraction_tree(task) if max_length is None else PrefixTree.full(2, max_length)
    if eps is None and eps_rel is None:
        eps, eps_rel = config.extract_eps, config.extract_eps_rel
    if eps is None and eps_rel is None:
        eps_rel = DEFAULT_EPS_REL
    ts = tree_states(model, tree)
    extraction = extract_from_states(tree, ts.states, ts.outputs, eps=eps, eps_rel=eps_rel,
                                     method=method or config.extract_method,
                                     target=task.machine)
    paths = write_automaton(run_dir, extraction.machine, stem or "automaton") if write else []
    return {"extraction": extraction, "epoch": state.get("epoch"), "checkpoint": path,
            "paths": paths, "config": config, "eps_rel": eps_rel,
            "tree": "training set" if max_length is None
            else f"every sequence up to length {max_length}"}


def format_extraction(result: dict[str, Any]) -> str:
    """The short report ``grokfast extract`` prints."""
    e: Extraction = result["extraction"]
    epoch = result.get("epoch")
    eps_rel = result.get("eps_rel")
    lines = [
        f"checkpoint:      {result['checkpoint']}"
        + (f" (epoch {epoch})" if epoch is not None else ""),
        f"tree:            {e.tree.num_nodes} prefixes ({result['tree']}, lengths 0.."
        f"{e.tree.max_depth})",
        f"clustering:      {e.method}, eps {e.eps:.4g}"
        + (f" ({eps_rel:g} x the states' spread)" if eps_rel is not None else ""),
        f"states:          {e.num_states} raw, {e.num_states_minimized} minimized",
        f"conflicts:       {e.transition_conflicts} transition, {e.output_conflicts} output; "
        f"{e.undefined_transitions} undefined transition(s)",
    ]
    if e.output_accuracy is not None:
        lines.append(f"tree accuracy:   {e.output_accuracy:.4f}")
    if e.equals_target is not None:
        lines.append("equals parity:   " + ("yes" if e.equals_target else "no"))
    if e.counterexample is not None:
        w = e.counterexample
        word = "".join(str(int(a)) for a in w)
        lines.append(f"counterexample:  {word} (parity outputs {int(e.target.run(w)[-1])}"
                     + _machine_output(e.machine, w) + ")")
    for p in result.get("paths", []):
        lines.append(f"wrote:           {p}")
    return "\n".join(lines)


def _machine_output(machine: MooreMachine, word) -> str:
    try:
        return f", the extracted machine {int(machine.run(word)[-1])}"
    except ValueError:
        return ", the extracted machine has no transition there"
