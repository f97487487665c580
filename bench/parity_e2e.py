"""End-to-end streaming-parity protocol, grokfast against plain PyTorch, in one run.

The protocol of `grokfast parity` for a number of epochs: each epoch trains on every binary
sequence of lengths 1..10 (per length ascending, shuffled batches of 128, SGD lr 0.02, MSE on the
last step, ReLU RNN with 100 units, h0 = ones), then evaluates loss and accuracy on 10 random
sequences at each of the lengths 25, 50, 100, 250, 1000, 2500, 10000.

    python bench/parity_e2e.py                  # 20 epochs
    python bench/parity_e2e.py --epochs 5       # smoke run
    python bench/parity_e2e.py --device cuda    # GPU: against cuDNN
    python bench/parity_e2e.py --isa avx2       # grokfast's AVX2 kernels, torch capped alike

PyTorch side: what a user writes: torch.nn.RNN + nn.Linear with autograd on one-hot inputs
(encoded once, outside the timing), evaluation with nn.RNN under no_grad. grokfast side: the
functions `grokfast parity` runs (grokfast.train.train_epoch / evaluate on a
grokfast.models.SequenceRNN). Both start from the same weights and draw the same batches, so
the check before timing compares their first-epoch losses and metrics.
"""

from __future__ import annotations

import _machine  # first: caps the peers' instruction sets (--isa) before torch loads

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

import grokfast
from grokfast.experiments import ParityConfig, run_parity
from grokfast.models import SequenceRNN
from grokfast.tasks import StreamingParity
from grokfast.train import evaluate, sequence_loss, train_epoch


class TorchParityRNN(nn.Module):
    """nn.RNN + nn.Linear with the weights of a SequenceRNN; reads one-hot floats."""

    def __init__(self, ours: SequenceRNN) -> None:
        super().__init__()
        r = ours.rnn
        H = ours.hidden_size
        dev = r.weight_hh.device
        self.rnn = nn.RNN(ours.num_symbols, H, nonlinearity=r.activation, batch_first=True,
                          device=dev)
        self.readout = nn.Linear(H, ours.num_outputs, device=dev)
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(r.weight_ih)
            self.rnn.weight_hh_l0.copy_(r.weight_hh)
            self.rnn.bias_ih_l0.copy_(r.bias)
            self.rnn.bias_hh_l0.zero_()
            self.readout.weight.copy_(r.readout.weight)
            self.readout.bias.copy_(r.readout.bias)
        self.register_buffer("h0", ours.h0.detach().clone())

    def forward(self, x: torch.Tensor, outputs: str = "all") -> torch.Tensor:
        h0 = self.h0.expand(1, x.shape[0], -1).contiguous()
        h, h_n = self.rnn(x, h0)
        return self.readout(h_n[0] if outputs == "last" else h)


def torch_train_epoch(model, optimizer, data, batch_size, generator) -> dict:
    """The same batches as grokfast.train.train_epoch (same generator calls)."""
    total, seen, correct = 0.0, 0, 0
    for length in sorted(data):
        x_all, t_all = data[length]
        order = torch.randperm(x_all.shape[0], generator=generator).to(x_all.device)
        for start in range(0, x_all.shape[0], batch_size):
            rows = order[start:start + batch_size]
            y = model(x_all[rows], outputs="last")
            t = t_all[rows][:, -1]
            loss = F.mse_loss(y, F.one_hot(t, 2).to(y.dtype))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
            correct += int((y.detach().argmax(-1) == t).sum())
            seen += len(rows)
    return {"train_loss": total / seen, "train_accuracy": correct / seen}


@torch.no_grad()
def torch_evaluate(model, data) -> dict:
    losses, accs = {}, {}
    for length in sorted(data):
        x, t = data[length]
        y = model(x)
        losses[str(length)] = float(sequence_loss(y, t))
        accs[str(length)] = float((y.argmax(-1) == t).double().mean())
    return {"loss": losses, "accuracy": accs}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-run", action="store_true",
                    help="skip timing the full run_parity (run directory, checkpoints, figures)")
    _machine.add_isa_argument(ap)
    args = ap.parse_args()
    _machine.select_isa(args)
    if args.epochs < 1:
        ap.error("--epochs: expected a positive integer")
    device = torch.device(args.device)
    if device.type == "cuda" and not grokfast.backends()["cuda"]:
        ap.error("--device cuda: CUDA is not usable here")

    cfg = ParityConfig(epochs=args.epochs, hidden=args.hidden, seed=args.seed,
                       device=args.device)
    task = StreamingParity(cfg.max_length)
    train_ids = {n: d.to(device) for n, d in task.train_set.items()}
    eval_ids = task.eval_data(cfg.eval_lengths, cfg.eval_count, cfg.seed, device=device)
    one_hot = lambda d: (F.one_hot(d.inputs, 2).float(), d.targets)  # noqa: E731
    train_hot = {n: one_hot(d) for n, d in train_ids.items()}
    eval_hot = {n: one_hot(d) for n, d in eval_ids.items()}

    def fresh():
        ours = SequenceRNN(2, 2, cfg.hidden, init_scale=cfg.init_scale,
                           generator=torch.Generator().manual_seed(cfg.seed), device=device)
        return ours, TorchParityRNN(ours)

    print(_machine.machine_line(args.device))
    print(f"Protocol: {task.num_train} training sequences (lengths 1..{cfg.max_length}, batch "
          f"{cfg.batch_size}), H = {cfg.hidden}, evaluation {cfg.eval_count} x "
          f"{list(cfg.eval_lengths)} every epoch, {args.epochs} epochs, device {device}")

    # Correctness first: one epoch each from the same weights and the same batches.
    ours, base = fresh()
    opt_o = torch.optim.SGD(ours.param_groups(cfg.lr, cfg.bias_lr_scale), lr=cfg.lr)
    opt_b = torch.optim.SGD(base.parameters(), lr=cfg.lr)
    so = train_epoch(ours, opt_o, train_ids, batch_size=cfg.batch_size,
                     generator=torch.Generator().manual_seed(1))
    sb = torch_train_epoch(base, opt_b, train_hot, cfg.batch_size, torch.Generator().manual_seed(1))
    eo, eb = evaluate(ours, eval_ids), torch_evaluate(base, eval_hot)
    rel = abs(so["train_loss"] - sb["train_loss"]) / abs(sb["train_loss"])
    worst_eval = max(abs(eo["loss"][k] - eb["loss"][k]) / abs(eb["loss"][k]) for k in eb["loss"])
    w_diff = (ours.rnn.weight_hh - base.rnn.weight_hh_l0).abs().max().item()
    print(f"Check after 1 epoch: train loss {so['train_loss']:.6f} vs {sb['train_loss']:.6f} "
          f"(rel diff {rel:.1e}); eval loss max rel diff {worst_eval:.1e}; "
          f"max |dW_hh| {w_diff:.1e}")
    if rel > 1e-4 or worst_eval > 1e-3:
        raise SystemExit("correctness check failed: grokfast and PyTorch disagree")

    def timed(train_fn, eval_fn):
        t_train = t_eval = 0.0
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            train_fn()
            sync(device)
            t1 = time.perf_counter()
            eval_fn()
            sync(device)
            t2 = time.perf_counter()
            t_train += t1 - t0
            t_eval += t2 - t1
        return t_train, t_eval

    ours, base = fresh()
    opt_o = torch.optim.SGD(ours.param_groups(cfg.lr, cfg.bias_lr_scale), lr=cfg.lr)
    opt_b = torch.optim.SGD(base.parameters(), lr=cfg.lr)
    g_o, g_b = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    gf = timed(lambda: train_epoch(ours, opt_o, train_ids, batch_size=cfg.batch_size,
                                   generator=g_o),
               lambda: evaluate(ours, eval_ids))
    pt = timed(lambda: torch_train_epoch(base, opt_b, train_hot, cfg.batch_size, g_b),
               lambda: torch_evaluate(base, eval_hot))
    E = args.epochs
    rows = [("PyTorch (nn.RNN + autograd)", pt), ("grokfast (fused kernels)", gf)]
    print(f"\n{'':30s} {'train s/epoch':>14s} {'eval s/epoch':>13s} {'total s':>9s}")
    for name, (tr, ev) in rows:
        print(f"{name:30s} {tr / E:14.4f} {ev / E:13.4f} {tr + ev:9.2f}")
    print(f"{'speed-up (PyTorch / grokfast)':30s} {pt[0] / gf[0]:13.1f}x {pt[1] / gf[1]:12.1f}x "
          f"{sum(pt) / sum(gf):8.1f}x")
    if not args.skip_run:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_parity(cfg, os.path.join(tmp, "run"), progress=False)
            whole = time.perf_counter() - t0
        print(f"\n`grokfast parity --epochs {E}` end to end (setup, metrics, checkpoints, "
              f"figures): {whole:.2f} s, {sum(pt) / whole:.1f}x faster than the PyTorch "
              "protocol alone")


if __name__ == "__main__":
    main()
