"""GPT-2-style language model configuration, presets and analytic counts.

Torch-free: the login node resolves presets and the planner converts token counts and FLOPs
with these functions without building a model. ``jobs.workloads.gpt`` builds the model that
these formulas describe; tests check the formulas against the built model.
"""

from __future__ import annotations

from dataclasses import dataclass


def _reject(field: str, value: object, allowed: str) -> None:
    raise ValueError(f"GPTConfig.{field}={value!r} is not allowed: {allowed}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class GPTConfig:
    """Decoder-only transformer: learned positions, pre-LN blocks, LM head tied to the input
    embedding (GPT-2)."""

    vocab_size: int = 50257
    context_length: int = 1024
    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    lr: float = 6e-4
    weight_decay: float = 0.1  # applied to matrices and embeddings only
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "embed_dim", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                _reject(name, value, "must be a positive integer")
        if self.embed_dim % self.num_heads:
            _reject(
                "embed_dim",
                self.embed_dim,
                f"must be a multiple of num_heads={self.num_heads}",
            )
        if not self.mlp_ratio > 0 or int(self.embed_dim * self.mlp_ratio) < 1:
            _reject("mlp_ratio", self.mlp_ratio, "must give an MLP width of at least 1")
        if not self.lr > 0:
            _reject("lr", self.lr, "must be > 0")
        if not self.weight_decay >= 0:
            _reject("weight_decay", self.weight_decay, "must be >= 0")
        if not self.grad_clip >= 0:
            _reject("grad_clip", self.grad_clip, "must be >= 0 (0 disables clipping)")

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


PRESETS: dict[str, GPTConfig] = {
    "124M": GPTConfig(),
    # For CPU tests and harness smoke runs.
    "tiny": GPTConfig(
        vocab_size=256, context_length=64, embed_dim=64, num_layers=2, num_heads=4, lr=3e-3
    ),
}


def tokens_per_sample(cfg: GPTConfig) -> int:
    return cfg.context_length


def token_unit(cfg: GPTConfig) -> str:
    return "text tokens (context positions)"


def param_count(cfg: GPTConfig) -> int:
    """Trainable parameters of ``jobs.workloads.gpt.GPT``; the tied LM head adds none."""
    d, h = cfg.embed_dim, cfg.mlp_hidden
    embeddings = cfg.vocab_size * d + cfg.context_length * d
    layer_norm = 2 * d
    block = (
        2 * layer_norm
        + (d * 3 * d + 3 * d)  # qkv
        + (d * d + d)  # attention projection
        + (d * h + h)
        + (h * d + d)  # MLP
    )
    return embeddings + cfg.num_layers * block + layer_norm


def forward_flops_per_sample(cfg: GPTConfig) -> int:
    """Forward FLOPs for one full-context sample: 2 per multiply-accumulate of every matmul.

    Attention counts the full seq x seq score matrix (QK^T and AV, 2 * seq * seq * d each per
    layer) although the causal mask makes half of it unnecessary: that is what dense kernels
    and ``FlopCounterMode`` count, and what MFU figures are usually quoted against. Embedding
    lookups, norms, softmax and the loss are not matmuls and are left out.
    """
    d, h, s = cfg.embed_dim, cfg.mlp_hidden, cfg.context_length
    per_layer = 2 * s * (3 * d * d + d * d + 2 * d * h) + 2 * 2 * s * s * d
    lm_head = 2 * s * d * cfg.vocab_size
    return cfg.num_layers * per_layer + lm_head


def training_flops_per_sample(cfg: GPTConfig) -> int:
    """Forward + backward, with the usual backward = 2x forward."""
    return 3 * forward_flops_per_sample(cfg)
