"""Training-loop pieces for streaming tasks: the loss, one epoch over lengths, evaluation."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("mse", "ce")
LOSS_ON = ("last", "all")


def sequence_loss(y: Tensor, targets: Tensor, loss: str = "mse") -> Tensor:
    """Loss of readouts y [..., O] against integer targets [...].

    "mse": mean squared error against one-hot targets, averaged over every element (positions
    and the O outputs, like nn.MSELoss). "ce": cross-entropy averaged over positions.
    """
    if loss == "mse":
        return F.mse_loss(y, F.one_hot(targets, y.shape[-1]).to(y.dtype))
    if loss == "ce":
        return F.cross_entropy(y.reshape(-1, y.shape[-1]), targets.reshape(-1))
    raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def train_epoch(model: Callable[..., Tensor], optimizer: torch.optim.Optimizer,
                data: Mapping[int, Sequence[Tensor]], *, batch_size: int,
                generator: torch.Generator, loss: str = "mse",
                loss_on: str = "last") -> dict[str, float]:
    """One epoch: for each length in ascending order, the sequences of that length shuffled
    with ``generator`` (a CPU torch.Generator the caller owns and checkpoints) and cut into
    batches of ``batch_size`` (the last one smaller), one optimizer step per batch.

    model(x, outputs="last"|"all") returns readouts [B, O] or [B, T, O]; data maps length to
    (inputs [N, T], targets [N, T]). loss_on: "last" step of each sequence, or "all" steps.
    Returns the epoch's mean training loss and accuracy (argmax readout == target over the
    positions the loss sees), weighted by batch size, measured during the epoch.
    """
    _check_choice("loss", loss, LOSSES)
    _check_choice("loss_on", loss_on, LOSS_ON)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    total_loss = total_correct = None
    seen = positions = 0
    for length in sorted(data):
        inputs, targets = data[length][0], data[length][1]
        n = inputs.shape[0]
        if n == 0:
            continue
        order = torch.randperm(n, generator=generator).to(inputs.device)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            x = inputs[rows]
            t = targets[rows][:, -1] if loss_on == "last" else targets[rows]
            y = model(x, outputs=loss_on)
            batch_loss = sequence_loss(y, t, loss)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            b = x.shape[0]
            with torch.no_grad():
                weighted = batch_loss.detach() * b
                correct = (y.detach().argmax(-1) == t).sum()
            total_loss = weighted if total_loss is None else total_loss + weighted
            total_correct = correct if total_correct is None else total_correct + correct
            seen += b
            positions += t.numel()
    if seen == 0:
        return {"train_loss": float("nan"), "train_accuracy": float("nan")}
    return {"train_loss": float(total_loss) / seen,
            "train_accuracy": float(total_correct) / positions}


@torch.no_grad()
def evaluate(model: Callable[..., Tensor], data: Mapping[int, Sequence[Tensor]], *,
             loss: str = "mse") -> dict[str, dict[str, float]]:
    """Loss and accuracy at each length of ``data`` (length -> (inputs, targets)).

    The model runs without autograd, so the fused kernel keeps only the current hidden state
    (O(B * H) memory at any length). Accuracy is the fraction of (sequence, step) positions
    where the argmax of the readout equals the target, over every step of every sequence;
    loss is ``sequence_loss`` over every step. Returns {"loss": {"25": ..}, "accuracy": {..}},
    keyed by length as a string (JSON object keys).
    """
    _check_choice("loss", loss, LOSSES)
    losses, accuracies = {}, {}
    for length in sorted(data):
        inputs, targets = data[length][0], data[length][1]
        y = model(inputs, outputs="all")
        if y.device.type == "cpu":
            losses[str(length)], accuracies[str(length)] = _metrics_numpy(y, targets, loss)
        else:
            losses[str(length)] = float(sequence_loss(y, targets, loss))
            accuracies[str(length)] = float((y.argmax(-1) == targets).double().mean())
    return {"loss": losses, "accuracy": accuracies}


def _metrics_numpy(y: Tensor, targets: Tensor, loss: str) -> tuple[float, float]:
    """sequence_loss and accuracy of CPU tensors, single-threaded: torch's parallel reductions
    over the long sequences would leave its OpenMP workers spinning on the cores the next fused
    forward needs (halving its speed on a 2-core machine)."""
    y64 = y.detach().numpy().astype(np.float64)
    t = targets.numpy()
    picked = np.take_along_axis(y64, t[..., None], -1)[..., 0]
    if y64.shape[-1] == 2:  # argmax of two, first index on ties, without numpy's slow argmax
        predicted = y64[..., 1] > y64[..., 0]
    else:
        predicted = y64.argmax(-1)
    accuracy = float(np.count_nonzero(predicted == t)) / t.size
    if loss == "mse":  # sum (y - onehot)^2 = sum y^2 - 2 sum y_target + positions
        total = np.square(y64).sum() - 2.0 * picked.sum() + picked.size
        return float(total / y64.size), accuracy
    top = y64.max(-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(y64 - top).sum(-1))
    return float((lse - picked).mean()), accuracy


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
