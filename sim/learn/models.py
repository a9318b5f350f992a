"""Models as flat parameter vectors.

Every model is an ``nn.Module`` used only as a *template*: its parameters live
in one flat vector ``theta`` of length d and are passed in with
``torch.func.functional_call``, so per-worker gradients can be taken with
``vmap`` and algorithms see plain ``[d]`` / ``[n, d]`` tensors.

Dropout draws no random numbers itself: :class:`MaskDropout` multiplies by a
mask passed in as a buffer, drawn by the caller from each worker's own stream
(sim/learn/rng.py).  With no mask passed it is the identity (evaluation mode).

Batch normalisation (:class:`BatchNorm`, used by the ResNets) is functional
too.  Its running statistics are not stored in the template but passed in and
out as a dict of tensors ("buffers", see :meth:`FlatModel.buffers0`):

* training (:meth:`FlatModel.loss_and_buffers`, :meth:`FlatModel.forward_train`)
  normalises with the statistics of the minibatch it is given -- under
  ``vmap`` over the worker axis that is each worker's own minibatch -- and
  returns the updated running statistics as an output, never by mutation;
* evaluation (:meth:`FlatModel.forward`) normalises with the running
  statistics passed in.

The simulator keeps one set of running statistics at the server; each round it
becomes the mean over the workers whose update was applied of their updated
statistics (:func:`merge_buffers`).  Since every worker starts the round from
the same statistics, that is ``(1 - momentum) * old + momentum * mean_i(batch
stats of worker i)``: what averaging BatchNorm buffers gives in data-parallel
or federated training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sim.registry import Registry

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


class BatchNorm(nn.Module):
    """Batch normalisation over dim 1 of ``[b, C, ...]``, functional style.

    Same parameters (``weight``, ``bias``), buffers (``running_mean``,
    ``running_var``), defaults (eps 1e-5, momentum 0.1) and update rule as
    ``nn.BatchNorm2d`` -- running_var is updated with the unbiased batch
    variance -- but the mode is chosen by the caller, not by ``.train()``:

    * ``_sink is None`` (evaluation, the default): normalise with the running
      statistics (those passed to ``functional_call``, else the template's);
    * ``_sink`` a dict (set by :meth:`FlatModel.forward_train`): normalise with
      the batch statistics and write the updated running statistics into the
      dict instead of updating the buffers in place (in-place updates are
      impossible under ``vmap``, where the batch statistics are per worker).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self._name = ""                                   # set by FlatModel
        self._sink: dict[str, torch.Tensor] | None = None

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._sink is None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, momentum=0.0, eps=self.eps)
        y = F.batch_norm(x, None, None, self.weight, self.bias, training=True, momentum=0.0, eps=self.eps)
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x.detach(), dim=dims, correction=1)   # unbiased, as nn.BatchNorm
        m = self.momentum
        self._sink[f"{self._name}.running_mean"] = (1 - m) * self.running_mean + m * mean
        self._sink[f"{self._name}.running_var"] = (1 - m) * self.running_var + m * var
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


@MODELS.register("logreg")
class LogRegConfig(_Config):
    """Multinomial logistic regression (one linear layer on flattened input)."""

    kind: Literal["logreg"] = "logreg"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        d_in = math.prod(input_shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(d_in, num_classes))


@MODELS.register("mlp")
class MlpConfig(_Config):
    """Fully connected network; ``hidden: [512]`` on MNIST is the 784-512-10
    network of sasg.txt Sec. VI-A (d = 407,050)."""

    kind: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [512],
                                                      description="hidden layer widths (each >= 1)")
    activation: Literal["relu", "tanh"] = "relu"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[self.activation]
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
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


@MODELS.register("cnn_cifar")
class CnnCifarConfig(_Config):
    """The CIFAR-10 CNN of comp-ams.txt Sec. 5.3 / Appendix B: "a larger CNN
    model with 3 convolutional layers" (Fig. 4, middle).  The figure with the
    exact widths is not in our copy of the paper; we take the common Keras /
    PyTorch CIFAR-10 tutorial layout the description matches, in the style of
    ``cnn_mnist``: three blocks of conv 3x3 ("same" padding) + ReLU + 2x2
    max-pool with 32, 64, 128 channels, dropout, FC 128 + ReLU, FC 10.
    On 3x32x32 input: d = 356,810 (896 + 18,496 + 73,856 + 262,272 + 1,290)."""

    kind: Literal["cnn_cifar"] = "cnn_cifar"
    channels: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [32, 64, 128], min_length=1,
                                description="output channels of the conv layers (one 2x2 max-pool after each)")
    fc_hidden: int = Field(128, ge=1, description="width of the hidden fully connected layer")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout rate before the fully connected layers")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = _image_shape(input_shape)
        layers: list[nn.Module] = []
        for out in self.channels:
            if out < 1:
                raise ValueError("channels must be >= 1")
            if h < 2 or w < 2:
                raise ValueError(f"input {input_shape} is too small for {len(self.channels)} 2x2 max-pools")
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        return nn.Sequential(
            *layers,
            MaskDropout(self.dropout),
            nn.Flatten(),
            nn.Linear(c * h * w, self.fc_hidden), nn.ReLU(),
            nn.Linear(self.fc_hidden, num_classes),
        )


# --------------------------------------------------------------------------- #
# LSTM for IMDB
# --------------------------------------------------------------------------- #


class LSTMLayer(nn.Module):
    """One LSTM layer written out with matmuls; returns the last hidden state.

    Same parameters, gate order (i, f, g, o), equations and initialisation
    (U(-1/sqrt(H), 1/sqrt(H))) as a one-layer ``nn.LSTM``, so d is the same.
    Why not ``nn.LSTM``: under ``torch.func.vmap`` its fused kernel
    (``aten::mkldnn_rnn_layer`` on CPU, cuDNN on GPU) has no batching rule, so
    vmap falls back to a slow per-worker loop (with a warning); the fused
    kernels also want their weights as one contiguous chunk, which slices of
    theta are not.  Here every op is an ordinary batched one.

    ``mask`` [b, T] (bool): steps where it is False leave (h, c) unchanged, so
    padding tokens do not move the state.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, steps, _ = x.shape
        hidden = self.hidden_size
        gates_x = F.linear(x, self.weight_ih, self.bias_ih + self.bias_hh)   # [b, T, 4H], all steps at once
        h = x.new_zeros(b, hidden)
        c = x.new_zeros(b, hidden)
        masks = mask.unsqueeze(2).unbind(1) if mask is not None else [None] * steps
        # unbind, not gates_x[:, t]: the backward of T slices would build T full-size zero tensors
        for gx, keep in zip(gates_x.unbind(1), masks):
            gates = gx + F.linear(h, self.weight_hh)
            i, f, g, o = gates.chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            if keep is None:
                h, c = h_new, c_new
            else:
                h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
        return h

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class LSTMClassifier(nn.Module):
    """Token ids [b, T] (0 = padding) -> embedding -> LSTM -> last hidden
    state -> FC + ReLU -> FC -> logits [b, C]."""

    input_dtype = torch.int64

    def __init__(self, vocab: int, embed_dim: int, hidden: int, fc_hidden: int, num_classes: int,
                 mask_padding: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab + 1, embed_dim, padding_idx=0)
        self.lstm = LSTMLayer(embed_dim, hidden)
        self.fc1 = nn.Linear(hidden, fc_hidden)
        self.fc2 = nn.Linear(fc_hidden, num_classes)
        self.mask_padding = mask_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():   # e.g. the all-zeros input of the FLOP counter (sim/learn/compute.py)
            x = x.long()
        h = self.lstm(self.embedding(x), (x != 0) if self.mask_padding else None)
        return self.fc2(F.relu(self.fc1(h)))


@MODELS.register("lstm_imdb")
class LstmImdbConfig(_Config):
    """The IMDB LSTM of comp-ams.txt Sec. 5.3 / Appendix B: reviews of 300
    token ids, an embedding of the top 1000 words into 32 dimensions, 64 LSTM
    cells, "the last hidden state is connected to two fully connected layers
    before the output" (Fig. 4: "the penultimate linear layer takes the last
    hidden state (64-dim vector) as the input").  The width of the first FC
    layer is not in our copy; we take 32 (ReLU).  The embedding has
    ``vocab + 1`` rows: row 0 is padding (kept at zero, no gradient), rows
    1..vocab the words by frequency rank (the ``imdb`` data set's ids).
    ``mask_padding``: padding steps leave the LSTM state unchanged, so the
    last hidden state is the one after the last word, however the review is
    padded.  On (300,) input with 2 classes: d = 59,266 (embedding 32,032 +
    LSTM 25,088 + FC 2,080 + FC 66)."""

    kind: Literal["lstm_imdb"] = "lstm_imdb"
    vocab: int = Field(1000, ge=1, description="word ids 1..vocab; 0 is padding")
    embed_dim: int = Field(32, ge=1)
    hidden: int = Field(64, ge=1, description="LSTM cells")
    fc_hidden: int = Field(32, ge=1, description="width of the penultimate fully connected layer")
    mask_padding: bool = True

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 1:
            raise ValueError(f"this model needs token-id input (T,), got shape {input_shape}")
        return LSTMClassifier(self.vocab, self.embed_dim, self.hidden, self.fc_hidden, num_classes,
                              self.mask_padding)


# --------------------------------------------------------------------------- #
# ResNets for CIFAR
# --------------------------------------------------------------------------- #


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = BatchNorm(planes, momentum=momentum)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = BatchNorm(planes, momentum=momentum)
        self.shortcut = _shortcut(cin, planes, stride, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, momentum: float) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = BatchNorm(planes, momentum=momentum)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = BatchNorm(planes, momentum=momentum)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = BatchNorm(out, momentum=momentum)
        self.shortcut = _shortcut(cin, out, stride, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int, momentum: float) -> nn.Module:
    """Identity, or 1x1 conv + BN where the shape changes (He et al. 2016, option B)."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), BatchNorm(cout, momentum=momentum))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016 blocks, the layout of kuangliu/pytorch-cifar):
    3x3 stem conv (stride 1, no max-pool) + BN + ReLU, four stages of
    ``width * (1, 2, 4, 8)`` planes with strides 1, 2, 2, 2, global average
    pool, one linear layer."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...],
                 in_channels: int, num_classes: int, width: int, momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = BatchNorm(width, momentum=momentum)
        stages, cin = [], width
        for s, depth in enumerate(depths):
            planes = width * 2 ** s
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, planes, (1 if s == 0 else 2) if j == 0 else 1, momentum))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(out.mean(dim=(2, 3)))


class _ResNetConfig(_Config):
    width: int = Field(64, ge=1, description="channels of the stem and first stage (doubled per stage)")
    bn_momentum: float = Field(0.1, gt=0.0, le=1.0, description="BatchNorm running-statistics momentum")

    BLOCK: ClassVar[type[BasicBlock] | type[Bottleneck]]
    DEPTHS: ClassVar[tuple[int, ...]]

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = _image_shape(input_shape)
        if h < 8 or w < 8:
            raise ValueError(f"input {input_shape} is too small for a ResNet (three stride-2 stages): needs >= 8x8")
        return ResNet(self.BLOCK, self.DEPTHS, c, num_classes, self.width, self.bn_momentum)


@MODELS.register("resnet18")
class ResNet18Config(_ResNetConfig):
    """ResNet-18 for CIFAR (sasg.txt Sec. VI): BasicBlocks [2, 2, 2, 2].
    d = 11,173,962 on CIFAR-10 (11,220,132 on CIFAR-100) at width 64."""

    kind: Literal["resnet18"] = "resnet18"
    BLOCK = BasicBlock
    DEPTHS = (2, 2, 2, 2)


@MODELS.register("resnet50")
class ResNet50Config(_ResNetConfig):
    """ResNet-50 for CIFAR (sketched-amsgrad.txt Sec. V-A): Bottlenecks
    [3, 4, 6, 3], stride on the 3x3 conv.  d = 23,520,842 on CIFAR-10
    (23,705,252 on CIFAR-100) at width 64; the paper's "about 25M" is the
    ImageNet variant (7x7 stem, 1000 classes: 25.6M)."""

    kind: Literal["resnet50"] = "resnet50"
    BLOCK = Bottleneck
    DEPTHS = (3, 4, 6, 3)


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"this model needs image input (C, H, W), got shape {input_shape}")
    return input_shape  # type: ignore[return-value]


# --------------------------------------------------------------------------- #
# Flat parameter vectors
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Block:
    """A contiguous slice of theta holding one parameter tensor (a "layer" for
    per-layer compressors such as Block-Sign, comp-ams.txt Definition 2)."""

    name: str
    start: int
    stop: int
    shape: tuple[int, ...]


Buffers = dict[str, torch.Tensor]


class FlatModel:
    """A module template plus the layout of its flat parameter vector.

    Models with BatchNorm (``has_buffers``) carry running statistics outside
    the template: ``buffers0()`` gives the initial ones, ``forward`` takes them
    for evaluation, ``loss_and_buffers`` returns the updated ones.
    """

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
        self.module = module
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.input_dtype: torch.dtype = getattr(module, "input_dtype", torch.float32)
        # the config's JSON when built by build_model: what keys the FLOP count cache (compute.py)
        self.config_json: str | None = None
        blocks, start = [], 0
        for name, p in module.named_parameters():
            blocks.append(Block(name, start, start + p.numel(), tuple(p.shape)))
            start += p.numel()
        self.blocks: tuple[Block, ...] = tuple(blocks)
        self.d = start
        self.dropouts: dict[str, MaskDropout] = {
            name: m for name, m in module.named_modules() if isinstance(m, MaskDropout)}
        self.norms: dict[str, BatchNorm] = {
            name: m for name, m in module.named_modules() if isinstance(m, BatchNorm)}
        for name, m in self.norms.items():
            m._name = name
        self.buffer_names: tuple[str, ...] = tuple(
            f"{name}.{b}" for name in self.norms for b in ("running_mean", "running_var"))
        self._record_dropout_shapes()

    @property
    def has_buffers(self) -> bool:
        """True when the model keeps running statistics (BatchNorm)."""
        return bool(self.buffer_names)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Zeros of shape [batch, *input_shape] and the model's input dtype."""
        device = next(self.module.parameters()).device
        return torch.zeros(batch, *self.input_shape, dtype=self.input_dtype, device=device)

    def _record_dropout_shapes(self) -> None:
        if not self.dropouts:
            return
        hooks = [m.register_forward_hook(lambda m, inp, out: setattr(m, "feature_shape", tuple(out.shape[1:])))
                 for m in self.dropouts.values()]
        with torch.no_grad():
            self.module(self.example_input(1))
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

    def buffers0(self, device: torch.device | str | None = None) -> Buffers:
        """The initial running statistics, name -> tensor (mean 0, var 1);
        ``{}`` for models without BatchNorm.  Fresh copies."""
        named = dict(self.module.named_buffers())
        return {k: named[k].detach().clone().to(device if device is not None else named[k].device)
                for k in self.buffer_names}

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> view of theta.  ``split`` rather than one slice per block: its
        backward is one ``cat`` of the block gradients, where slicing would
        scatter each block into its own zero [d] tensor (per worker, under vmap):
        about 2x faster gradients for the MLP at n = 32 (docs/performance-history.md)."""
        parts = theta.split([b.stop - b.start for b in self.blocks])
        return {b.name: p.view(b.shape) for b, p in zip(self.blocks, parts)}

    def _tensors(self, theta: torch.Tensor, masks: dict[str, torch.Tensor] | None,
                 buffers: Buffers | None) -> dict[str, torch.Tensor]:
        tensors = self.unflatten(theta)
        if masks:
            tensors.update({f"{name}.mask": m for name, m in masks.items()})
        if buffers:
            tensors.update(buffers)
        return tensors

    def forward(self, theta: torch.Tensor, x: torch.Tensor,
                masks: dict[str, torch.Tensor] | None = None,
                buffers: Buffers | None = None) -> torch.Tensor:
        """logits [b, C] for input x [b, *input_shape]; ``masks`` maps a
        dropout module's name to its mask [b, *feature_shape].  BatchNorm runs
        in evaluation mode with the running statistics ``buffers`` (default:
        the initial ones, :meth:`buffers0`)."""
        return torch.func.functional_call(self.module, self._tensors(theta, masks, buffers), (x,))

    def forward_train(self, theta: torch.Tensor, x: torch.Tensor,
                      masks: dict[str, torch.Tensor] | None = None,
                      buffers: Buffers | None = None) -> tuple[torch.Tensor, Buffers]:
        """(logits [b, C], updated running statistics): BatchNorm normalises
        with the statistics of this minibatch; the returned buffers are
        ``(1 - momentum) * buffers + momentum * batch stats`` ({} without BatchNorm)."""
        if not self.norms:
            return self.forward(theta, x, masks), {}
        sink: Buffers = {}
        for m in self.norms.values():
            m._sink = sink
        try:
            logits = torch.func.functional_call(self.module, self._tensors(theta, masks, buffers), (x,))
        finally:
            for m in self.norms.values():
                m._sink = None
        return logits, {k: sink[k] for k in self.buffer_names}

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean cross-entropy over the minibatch (a scalar), in training mode
        (BatchNorm with batch statistics, which do not depend on the running
        ones)."""
        return F.cross_entropy(self.forward_train(theta, x, masks)[0], y)

    def loss_and_buffers(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                         masks: dict[str, torch.Tensor] | None, buffers: Buffers) -> tuple[torch.Tensor, Buffers]:
        """(training loss, updated running statistics): the function GradFn
        differentiates (``has_aux``) for models with BatchNorm."""
        logits, new = self.forward_train(theta, x, masks, buffers)
        return F.cross_entropy(logits, y), new

    def to(self, device: torch.device | str) -> "FlatModel":
        self.module.to(device)
        return self


def merge_buffers(old: Buffers, new: Buffers, arrived: torch.Tensor | None = None) -> Buffers:
    """The server's running statistics after a round: the mean over workers of
    their updated statistics ``new`` (each [n, ...]), over the workers with
    ``arrived[i]`` True only when given (those whose gradient was applied);
    ``old`` when no worker arrived."""
    if not new:
        return old
    if arrived is None:
        return {k: v.mean(0) for k, v in new.items()}
    w = arrived.to(device=next(iter(new.values())).device, dtype=torch.float32)
    total = float(w.sum())
    if total == 0:
        return old
    return {k: torch.tensordot(w, v, dims=1) / total for k, v in new.items()}


def build_model(cfg: BaseModel, input_shape: tuple[int, ...], num_classes: int) -> FlatModel:
    model = FlatModel(cfg.build(tuple(input_shape), num_classes), tuple(input_shape), num_classes)  # type: ignore[attr-defined]
    model.config_json = cfg.model_dump_json()
    return model
