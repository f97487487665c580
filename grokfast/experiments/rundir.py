"""What every experiment's run directory and command share: fresh directory names, the
resume/new-run checks, config.json in and out, figure files, integer-list options, and the CLI
handler around a run function."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

PathLike = Union[str, Path]

# Keys config.json holds besides the config's fields.
META_KEYS = ("experiment", "grokfast_version")


def flag(name: str) -> str:
    """The command-line flag of a config field (hidden -> --hidden, loss_on -> --loss-on)."""
    return "--" + name.replace("_", "-")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def add_run_dir_arguments(parser: argparse.ArgumentParser, *, length_flag: str,
                          checkpoint_every: int) -> None:
    """The "run directory" flags every experiment shares; length_flag is the one --resume can
    raise to extend a finished run (--epochs, --steps)."""
    g = parser.add_argument_group("run directory")
    g.add_argument("--out", metavar="DIR",
                   help="run directory (default: a fresh folder under runs/)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (or extend it "
                        f"with a larger {length_flag}); other settings come from its config.json")
    g.add_argument("--checkpoint-every", type=int, metavar="N",
                   help=f"(default {checkpoint_every})")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_device(dev: Any, flag_text: str = "--device") -> None:
    """A run's device flag: 'cpu', 'cuda' or 'cuda:N', and usable here."""
    import torch

    from grokfast._ext import backends
    try:
        parsed = torch.device(dev) if isinstance(dev, str) else None
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda") or dev.startswith("cpu:"):
        raise ValueError(f"{flag_text}: expected 'cpu', 'cuda' or 'cuda:N', got {dev!r}")
    if parsed.type == "cuda" and not (backends()["cuda"] and torch.cuda.is_available()):
        raise ValueError(f"{flag_text}: {dev!r} is not usable here (no GPU visible, or grokfast "
                         "was built without CUDA kernels); use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None \
            and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"{flag_text}: {dev!r} does not exist "
                         f"({torch.cuda.device_count()} GPU(s) visible)")


def fresh_run_dir(prefix: str, seed: int, root: PathLike = "runs") -> Path:
    """A folder name under ``root`` that does not exist yet: <prefix>-<date>-<time>-seed<seed>."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{prefix}-{stamp}-seed{seed}"
    out, i = base, 1
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


def config_from_dict(config_cls, d: dict[str, Any]):
    """A config dataclass from its to_dict(); ignores the metadata keys of config.json, rejects
    others."""
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(d) - known - set(META_KEYS))
    if unknown:
        raise ValueError(f"config: unknown setting(s) {unknown}")
    return config_cls(**{k: v for k, v in d.items() if k in known})


def int_list(text: str) -> list[int]:
    """Option type: '25,50' or '25' -> [25, 50]; with nargs="+" the option also takes several
    space-separated values."""
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas or spaces, "
                                         f"got {text!r}") from None


def save_figure(fig, fig_dir: Path, name: str) -> Path:
    """fig as fig_dir/name.png, written to a temporary name first so no reader sees half a file."""
    path = fig_dir / f"{name}.png"
    tmp = fig_dir / f".{name}.tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in ("config.json", "metrics.jsonl", "checkpoints"))


def read_config(out: PathLike, config_cls):
    """The config of the run in ``out`` (its config.json), as ``config_cls``."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise ValueError(f"--out: {out} holds no run to resume (no config.json)")
    return config_cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def open_run_dir(out: Optional[PathLike], resume: bool, *, default: Callable[[], Path],
                 check_resume: Callable[[Path], None]) -> Path:
    """The directory a run writes: with ``resume`` the given one (``check_resume(out)`` raises
    when its stored config does not match); else ``out`` or ``default()``, which must not hold
    a run already."""
    if resume:
        if out is None:
            raise ValueError("--resume: needs --out DIR, the run directory to continue")
        out = Path(out)
        check_resume(out)
        return out
    out = Path(out) if out is not None else default()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} exists and is not a directory")
    if holds_run(out):
        raise ValueError(f"--out: {out} already holds a run; pass --resume to continue it "
                         "or choose another directory")
    return out


def run_command(args: argparse.Namespace, *, command: str, config_cls,
                load_config: Callable[[PathLike], Any], default_out: Callable[[int], Path],
                run: Callable[..., dict], format_summary: Callable[[dict], str],
                tuple_fields: Sequence[str] = ()) -> int:
    """The CLI handler of an experiment: flags -> validated config (merged into the stored one
    with --resume), run, summary; argparse errors for bad values, exit 130 on Ctrl-C with the
    command that continues the run."""
    parser: argparse.ArgumentParser = args.parser
    given = {f.name: getattr(args, f.name) for f in fields(config_cls) if hasattr(args, f.name)}
    for name in tuple_fields:  # flags given several times as lists of lists
        if name in given:
            given[name] = tuple(n for group in given[name] for n in group)
    resume = getattr(args, "resume", False)
    out = getattr(args, "out", None)
    try:
        if resume:
            if out is None:
                parser.error("--resume: needs --out DIR, the run directory to continue")
            base = load_config(out).to_dict()
            base.update(given)
            config = config_cls.from_dict(base)
        else:
            config = config_cls(**given)
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    if out is None:
        out = default_out(config.seed)
    print(f"run directory: {out}", file=sys.stderr)
    try:
        summary = run(config, out, resume=resume,
                      progress=not getattr(args, "no_progress", False))
    except ValueError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: grokfast {command} --resume --out {out}",
              file=sys.stderr)
        return 130
    print(format_summary(summary))
    return 0
