"""Models as flat parameter vectors.

Every model is an ``nn.Module`` used only as a *template*: its parameters live
in one flat vector ``theta`` of length d and are passed in with
``torch.func.functional_call``, so per-worker gradients can be taken with
``vmap`` and algorithms see plain ``[d]`` / ``[n, d]`` tensors.

Dropout draws no random numbers itself: :class:`MaskDropout` multiplies by a
mask passed in as a buffer, drawn by the caller from each worker's own stream
(sim/rng.py).  With no mask passed it is the identity (evaluation mode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .registry import Registry

MODELS: Registry = Registry("model")  # kind -> pydantic config class with .build()


class MaskDropout(nn.Module):
    """Inverted dropout whose mask comes from outside (a buffer named ``mask``).

    The stored buffer is a scalar 1 (identity); training passes
    ``{"<name>.mask": keep / (1 - p)}`` of the activation's shape.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.register_buffer("mask", torch.ones(()), persistent=False)
        self.feature_shape: tuple[int, ...] | None = None  # set by FlatModel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


@MODELS.register("logreg")
class LogRegConfig(_Config):
    """Multinomial logistic regression (one linear layer on flattened input)."""

    kind: Literal["logreg"] = "logreg"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        d_in = int(torch.tensor(input_shape).prod())
        return nn.Sequential(nn.Flatten(), nn.Linear(d_in, num_classes))


@MODELS.register("mlp")
class MlpConfig(_Config):
    """Fully connected network; ``hidden: [512]`` on MNIST is the 784-512-10
    network of sasg.txt Sec. VI-A (d = 407,050)."""

    kind: Literal["mlp"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [512], description="hidden layer widths")
    activation: Literal["relu", "tanh"] = "relu"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[self.activation]
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(torch.tensor(input_shape).prod())
        for h in self.hidden:
            if h < 1:
                raise ValueError("hidden widths must be >= 1")
            layers += [nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)


@MODELS.register("cnn_mnist")
class CnnMnistConfig(_Config):
    """The MNIST CNN of comp-ams.txt Sec. 5.1 / Appendix B: "two convolutional
    layers followed by two fully connected layers with ReLU activation.
    Dropout is applied after the max-pooled convolutional layer with rate 0.5."
    The appendix figure with the exact widths is not in our copy of the paper;
    we take the widths of the Keras/PyTorch MNIST example the description
    matches: conv 3x3x32, conv 3x3x64, 2x2 max-pool, dropout, FC 128, FC 10
    (d = 1,199,882 on 28x28 input)."""

    kind: Literal["cnn_mnist"] = "cnn_mnist"
    dropout: float = Field(0.5, ge=0.0, lt=1.0)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = _image_shape(input_shape)
        flat = 64 * ((h - 4) // 2) * ((w - 4) // 2)
        return nn.Sequential(
            nn.Conv2d(c, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            MaskDropout(self.dropout),
            nn.Flatten(),
            nn.Linear(flat, 128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"this model needs image input (C, H, W), got shape {input_shape}")
    return input_shape  # type: ignore[return-value]


@dataclass(frozen=True)
class Block:
    """A contiguous slice of theta holding one parameter tensor (a "layer" for
    per-layer compressors such as Block-Sign, comp-ams.txt Definition 2)."""

    name: str
    start: int
    stop: int
    shape: tuple[int, ...]


class FlatModel:
    """A module template plus the layout of its flat parameter vector."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
        self.module = module
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        blocks, start = [], 0
        for name, p in module.named_parameters():
            blocks.append(Block(name, start, start + p.numel(), tuple(p.shape)))
            start += p.numel()
        self.blocks: tuple[Block, ...] = tuple(blocks)
        self.d = start
        self.dropouts: dict[str, MaskDropout] = {
            name: m for name, m in module.named_modules() if isinstance(m, MaskDropout)}
        self._record_dropout_shapes()

    def _record_dropout_shapes(self) -> None:
        if not self.dropouts:
            return
        hooks = [m.register_forward_hook(lambda m, inp, out: setattr(m, "feature_shape", tuple(out.shape[1:])))
                 for m in self.dropouts.values()]
        with torch.no_grad():
            self.module(torch.zeros(1, *self.input_shape))
        for h in hooks:
            h.remove()

    def init_params(self, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """theta_0 [d]: PyTorch's default initialisation, seeded; the global RNG
        is forked and restored, so nothing outside sees the draw."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in self.module.modules():
                if hasattr(m, "reset_parameters") and m is not self.module:
                    m.reset_parameters()
            theta = torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])
        return theta.to(device=device, dtype=torch.float32)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {b.name: theta[b.start:b.stop].view(b.shape) for b in self.blocks}

    def forward(self, theta: torch.Tensor, x: torch.Tensor,
                masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """logits [b, C] for input x [b, *input_shape]; ``masks`` maps a
        dropout module's name to its mask [b, *feature_shape]."""
        tensors = self.unflatten(theta)
        if masks:
            tensors.update({f"{name}.mask": m for name, m in masks.items()})
        return torch.func.functional_call(self.module, tensors, (x,))

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean cross-entropy over the minibatch (a scalar)."""
        return nn.functional.cross_entropy(self.forward(theta, x, masks), y)

    def to(self, device: torch.device | str) -> "FlatModel":
        self.module.to(device)
        return self


def build_model(cfg: BaseModel, input_shape: tuple[int, ...], num_classes: int) -> FlatModel:
    return FlatModel(cfg.build(tuple(input_shape), num_classes), tuple(input_shape), num_classes)  # type: ignore[attr-defined]
