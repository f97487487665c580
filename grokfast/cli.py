"""The ``grokfast`` command: one subcommand per experiment (``grokfast parity ...``) and per
analysis of a saved run (``grokfast extract --run DIR``)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from grokfast.experiments.rundir import add_run_dir_arguments, int_list, run_command
from grokfast.experiments.toy import add_parser as _add_toy
from grokfast.experiments.parity import (DEFAULT_EVAL_LENGTHS, MAX_EXTRACT_LENGTH,
                                         ParityConfig, default_out, extract_run,
                                         format_extraction, format_summary, load_config,
                                         run_parity)

_METHODS = ("components", "leader")


def _add_parity(sub: argparse._SubParsersAction) -> None:
    d = ParityConfig()
    p = sub.add_parser(
        "parity", help="train an Elman RNN on streaming parity, evaluate up to length 10,000",
        description="Train an Elman RNN on every binary sequence of lengths 1..max-length "
                    "(streaming parity: output the XOR of the bits so far) and evaluate it on "
                    "random sequences up to length 10,000 every epoch. Writes a run directory: "
                    "config.json, metrics.jsonl, checkpoints/, summary.json, figures/.",
        argument_default=argparse.SUPPRESS)  # only flags given on the command line are set
    g = p.add_argument_group("task")
    g.add_argument("--max-length", type=int, metavar="L",
                   help=f"train on every sequence of lengths 1..L (default {d.max_length})")
    g.add_argument("--train-fraction", type=float, metavar="F",
                   help="per length, keep a Binomial(2^len, F) random subset, at least one "
                        f"sequence; F in (0, 1] (default {d.train_fraction})")
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=int, metavar="H", help=f"hidden units (default {d.hidden})")
    g.add_argument("--activation", choices=("relu", "tanh"),
                   help=f"(default {d.activation})")
    g.add_argument("--init-scale", type=float, metavar="G",
                   help="xavier-normal gain of every weight matrix, readout included "
                        f"(default {d.init_scale})")
    g.add_argument("--learn-h0", action="store_true",
                   help="learn the initial hidden state (default: fixed, all ones)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, metavar="N", help=f"(default {d.epochs})")
    g.add_argument("--seed", type=int, metavar="S",
                   help=f"seeds init, shuffling, data subset and evaluation set (default {d.seed})")
    g.add_argument("--lr", type=float, help=f"SGD learning rate (default {d.lr})")
    g.add_argument("--bias-lr-scale", type=float, metavar="K",
                   help="learning-rate multiplier of the recurrent bias; 2 matches torch.nn.RNN, "
                        "whose two biases b_ih and b_hh each take a full step "
                        f"(default {d.bias_lr_scale})")
    g.add_argument("--batch-size", type=int, metavar="B", help=f"(default {d.batch_size})")
    g.add_argument("--loss", choices=("mse", "ce"),
                   help=f"mse on one-hot targets or cross-entropy (default {d.loss})")
    g.add_argument("--loss-on", choices=("last", "all"),
                   help=f"steps of each training sequence the loss sees (default {d.loss_on})")
    g.add_argument("--device", metavar="DEV", help=f"cpu, cuda or cuda:N (default {d.device})")
    g.add_argument("--dtype", choices=("float32", "float64"), help=f"(default {d.dtype})")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-every", type=int, metavar="N",
                   help=f"evaluate every N epochs and at the last (default {d.eval_every})")
    g.add_argument("--eval-lengths", type=int_list, nargs="+", metavar="T",
                   help="evaluation lengths (default "
                        f"{' '.join(map(str, DEFAULT_EVAL_LENGTHS))})")
    g.add_argument("--eval-count", type=int, metavar="N",
                   help=f"random sequences per evaluation length (default {d.eval_count})")
    g = p.add_argument_group(
        "automaton extraction",
        "Cluster the hidden states of every prefix of the training set within eps and log the "
        "extracted Moore machine, merger statistics and the training phase (random, tree "
        "fitting, merging, finite automaton) in metrics.jsonl; the last epoch's machine goes "
        "to automaton.json / automaton.dot.")
    g.add_argument("--extract-every", type=int, metavar="K",
                   help=f"extract every K epochs and at the last; 0 disables "
                        f"(default {d.extract_every})")
    g.add_argument("--extract-eps-rel", type=float, metavar="X",
                   help="clustering radius relative to the norm of the per-unit standard "
                        "deviation of the states (default 0.1)")
    g.add_argument("--extract-eps", type=float, metavar="X",
                   help="absolute clustering radius (instead of --extract-eps-rel)")
    g.add_argument("--extract-method", choices=_METHODS,
                   help="connected components of the eps-graph (exact) or greedy leader "
                        f"clustering as in the paper's code (default {d.extract_method})")
    add_run_dir_arguments(p, length_flag="--epochs", checkpoint_every=d.checkpoint_every)
    p.set_defaults(handler=_run_parity, parser=p)


def _run_parity(args: argparse.Namespace) -> int:
    return run_command(args, command="parity", config_cls=ParityConfig, load_config=load_config,
                       default_out=default_out, run=run_parity, format_summary=format_summary,
                       tuple_fields=("eval_lengths",))


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract", help="extract the automaton of a saved parity run's checkpoint",
        description="Load a parity run's config and a checkpoint, extract the Moore machine "
                    "the network implements (clustering the hidden states of every prefix of "
                    "the training set), compare it with parity, and write automaton.json and "
                    "automaton.dot into the run directory (automaton_epoch_NNNNNN.* with "
                    "--epoch). Clustering settings default to the run's --extract-* settings.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory")
    p.add_argument("--epoch", type=int, metavar="N",
                   help="use checkpoints/epoch_N (zero-padded); default the final checkpoint")
    eps = p.add_mutually_exclusive_group()
    eps.add_argument("--eps", type=float, metavar="X", help="absolute clustering radius")
    eps.add_argument("--eps-rel", type=float, metavar="X",
                     help="radius relative to the spread of the states")
    p.add_argument("--method", choices=_METHODS, help="clustering (default: the run's)")
    p.add_argument("--max-length", type=int, metavar="L",
                   help="extract on every sequence up to length L (1.."
                        f"{MAX_EXTRACT_LENGTH}) instead of the training set")
    p.set_defaults(handler=_run_extract, parser=p)


def _run_extract(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    try:
        result = extract_run(args.run, args.epoch, eps=args.eps, eps_rel=args.eps_rel,
                             method=args.method, max_length=args.max_length)
    except ValueError as exc:
        parser.error(str(exc))
    print(format_extraction(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grokfast", description="Experiments on how neural networks learn algorithms.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_parity(sub)
    _add_extract(sub)
    _add_toy(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``grokfast`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except SystemExit as exc:  # argparse errors (2) and --help (0)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
