"""Liu et al.'s toy model of grokking ("Towards Understanding Grokking: An Effective Theory of
Representation Learning", 2022): learnable symbol embeddings, a hard-coded combine, an MLP
decoder.

    (a, b) -> Dec(E_a + E_b)        combine="sum":     E [p, d]
    (a, b) -> Dec(vec(E_a @ E_b))   combine="product": E [p, k, k] (groups; Appendix H)

Defaults follow the paper and its public code (grokking-squared, toy/train_add.py): 1-D
embeddings drawn uniformly from [-init_scale/2, init_scale/2] (product mode: normal with
standard deviation init_scale, as the code's permutation run), a decoder MLP with two hidden
layers of 200 tanh units and 30 outputs (the 1-200-200-30 of Appendix G), its Linear layers
initialised as torch's defaults (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases)
times ``decoder_init_scale``. Two heads:

- ``mode="regression"`` (the paper's default): the decoder outputs ``out_dim`` numbers and is
  trained by mean squared error onto fixed random targets Y_c ~ N(0, 1) [num_results, out_dim]
  (``targets``, a buffer, one per result class); the prediction is the nearest target.
- ``mode="classification"``: the decoder outputs ``num_results`` logits (cross-entropy); the
  prediction is the argmax (``targets`` then holds the one-hot vectors).

Every random draw (embeddings, decoder, targets) comes from ``generator`` on the CPU, so a
seed gives the same model on every device and leaves the global RNG alone.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

COMBINES = ("sum", "product")
MODES = ("regression", "classification")
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU,
               "sigmoid": nn.Sigmoid}
EMBED_INITS = ("uniform", "normal")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _positive_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


class ToyModel(nn.Module):
    """Embeddings of ``p`` symbols combined by sum or matrix product, decoded by an MLP.

    p: number of symbols. embed_dim: d (sum: E [p, d]) or k (product: E [p, k, k]; the decoder
    reads the k*k entries of E_a @ E_b). num_results: number of result classes (targets in
    regression, logits in classification). hidden: widths of the decoder's hidden layers
    (default (200, 200)). out_dim: regression output width (default 30; classification always
    outputs num_results logits). activation: one of ACTIVATIONS (default "tanh", as the paper's
    code). init_scale: embedding scale s (uniform [-s/2, s/2] or normal(0, s), embed_init
    default "uniform" for sum and "normal" for product). decoder_init_scale multiplies the
    decoder's default initialisation. target_scale multiplies the random targets.
    """

    def __init__(self, p: int, embed_dim: int = 1, num_results: Optional[int] = None, *,
                 combine: str = "sum", mode: str = "regression",
                 hidden: Sequence[int] = (200, 200), out_dim: int = 30,
                 activation: str = "tanh", init_scale: float = 1.0,
                 embed_init: Optional[str] = None, decoder_init_scale: float = 1.0,
                 target_scale: float = 1.0, generator: Optional[torch.Generator] = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.p = _positive_int("p", p)
        self.embed_dim = _positive_int("embed_dim", embed_dim)
        self.num_results = _positive_int("num_results",
                                         2 * p - 1 if num_results is None else num_results)
        self.combine = _choice("combine", combine, COMBINES)
        self.mode = _choice("mode", mode, MODES)
        if isinstance(hidden, int) or not all(
                not isinstance(h, bool) and isinstance(h, int) and h >= 1 for h in hidden):
            raise ValueError(f"hidden: expected a sequence of positive integers (hidden layer "
                             f"widths), got {hidden!r}")
        self.hidden = tuple(int(h) for h in hidden)
        self.out_dim = _positive_int("out_dim", out_dim)
        self.activation = _choice("activation", activation, tuple(ACTIVATIONS))
        self.init_scale = _positive_real("init_scale", init_scale)
        if embed_init is None:
            embed_init = "uniform" if combine == "sum" else "normal"
        self.embed_init = _choice("embed_init", embed_init, EMBED_INITS)
        self.decoder_init_scale = _positive_real("decoder_init_scale", decoder_init_scale)
        self.target_scale = _positive_real("target_scale", target_scale)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got "
                            f"{type(generator).__name__}")
        factory = {"device": torch.device("cpu") if device is None else device, "dtype": dtype}
        k = self.embed_dim
        shape = (self.p, k) if self.combine == "sum" else (self.p, k, k)
        self.embedding = nn.Parameter(torch.empty(shape, **factory))
        widths = [self.input_dim, *self.hidden, self.output_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            # skip_init: no draw from the global RNG; reset_parameters draws from `generator`
            layers.append(nn.utils.skip_init(nn.Linear, a, b, **factory))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[self.activation]())
        self.decoder = nn.Sequential(*layers)
        self.register_buffer("targets", torch.empty(self.num_results, self.output_dim, **factory))
        self.reset_parameters(generator)

    # ------------------------------------------------------------------------------------------

    @property
    def input_dim(self) -> int:
        """Width of the decoder's input: d (sum) or k*k (product)."""
        return self.embed_dim if self.combine == "sum" else self.embed_dim ** 2

    @property
    def output_dim(self) -> int:
        """Width of the decoder's output: out_dim (regression) or num_results (logits)."""
        return self.out_dim if self.mode == "regression" else self.num_results

    def extra_repr(self) -> str:
        return (f"p={self.p}, embed_dim={self.embed_dim}, combine={self.combine}, "
                f"mode={self.mode}, num_results={self.num_results}")

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Draw embeddings, decoder and targets (in that order) from ``generator`` on the CPU."""
        def draw(t: Tensor, fn) -> None:
            cpu = torch.empty(t.shape, dtype=t.dtype)
            fn(cpu)
            t.copy_(cpu)

        s = self.init_scale
        with torch.no_grad():
            if self.embed_init == "uniform":
                draw(self.embedding, lambda c: c.uniform_(-0.5 * s, 0.5 * s, generator=generator))
            else:
                draw(self.embedding, lambda c: c.normal_(0.0, s, generator=generator))
            for layer in self.decoder:
                if isinstance(layer, nn.Linear):
                    bound = self.decoder_init_scale / math.sqrt(layer.in_features)
                    for t in (layer.weight, layer.bias):
                        draw(t, lambda c: c.uniform_(-bound, bound, generator=generator))
            if self.mode == "regression":
                draw(self.targets, lambda c: c.normal_(0.0, self.target_scale,
                                                       generator=generator))
            else:  # the one-hot targets of classification (the loss uses the class indices)
                self.targets.copy_(torch.eye(self.num_results))

    def embeddings(self) -> Tensor:
        """A detached copy of the embeddings: [p, d] (sum) or [p, k, k] (product)."""
        return self.embedding.detach().clone()

    def decoder_parameters(self) -> list[nn.Parameter]:
        return list(self.decoder.parameters())

    # ------------------------------------------------------------------------------------------

    def _check_samples(self, samples) -> Tensor:
        if not isinstance(samples, Tensor):
            raise TypeError(f"samples: expected an int64 tensor [N, 2], got "
                            f"{type(samples).__name__}")
        if samples.dtype != torch.int64 or samples.ndim != 2 or samples.shape[1] != 2:
            raise ValueError(f"samples: expected an int64 tensor of shape [N, 2] (rows (a, b)), "
                             f"got {samples.dtype} {tuple(samples.shape)}")
        if samples.numel() and (int(samples.min()) < 0 or int(samples.max()) >= self.p):
            raise ValueError(f"samples: symbols must lie in 0..{self.p - 1}, got "
                             f"{int(samples.min())}..{int(samples.max())}")
        return samples.to(self.embedding.device)

    def combined(self, samples: Tensor, *, check: bool = True) -> Tensor:
        """The decoder's inputs [N, input_dim]: E_a + E_b, or E_a @ E_b flattened."""
        if check:
            samples = self._check_samples(samples)
        ea, eb = self.embedding[samples[:, 0]], self.embedding[samples[:, 1]]
        if self.combine == "sum":
            return ea + eb
        return torch.bmm(ea, eb).reshape(samples.shape[0], -1)

    def forward(self, samples: Tensor, *, check: bool = True) -> Tensor:
        """Decoder outputs [N, output_dim] for samples (int64 [N, 2] rows (a, b))."""
        return self.decoder(self.combined(samples, check=check))

    def loss(self, outputs: Tensor, results: Tensor) -> Tensor:
        """Mean squared error onto targets[results] (mean over every element, as nn.MSELoss)
        or cross-entropy (mean over samples)."""
        if self.mode == "regression":
            return F.mse_loss(outputs, self.targets[results])
        return F.cross_entropy(outputs, results)

    def classify(self, outputs: Tensor) -> Tensor:
        """Predicted result classes [N] of decoder outputs: nearest target (Euclidean) or argmax
        of the logits."""
        if self.mode == "classification":
            return outputs.argmax(-1)
        y = self.targets
        # |o - y|^2 - |o|^2 = |y|^2 - 2 o.y: one GEMM, no [N, C, out] temporary
        return torch.addmm((y * y).sum(1)[None, :], outputs, y.t(), alpha=-2.0).argmin(-1)

    @torch.no_grad()
    def predict(self, samples: Tensor) -> Tensor:
        """Predicted result classes (int64 [N]) of samples (int64 [N, 2])."""
        return self.classify(self(samples))
