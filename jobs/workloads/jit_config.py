"""JiT (pixel-space diffusion transformer) configuration, presets and analytic counts.

Torch-free: the login node resolves presets and the planner converts token counts and FLOPs
with these functions without building a model. ``jobs.workloads.jit`` builds the model that
these formulas describe; tests check the formulas against the built model.
"""

from __future__ import annotations

from dataclasses import dataclass


def _reject(field: str, value: object, allowed: str) -> None:
    raise ValueError(f"JiTConfig.{field}={value!r} is not allowed: {allowed}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class JiTConfig:
    """A plain DiT-style denoiser over condition + target patch tokens (JiT, Li & He 2025).

    The sequence is the patches of a conditioning image followed by the patches of the noisy
    target image; only the target tokens go through the output head.
    """

    image_size: int = 64  # square RGB images, pixels per side
    patch_size: int = 4
    channels: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    freq_dim: int = 256  # sinusoidal timestep features fed to the timestep MLP
    learned_pos_embed: bool = False  # False: fixed 2D sin-cos, shared by both token streams
    p_mean: float = -0.8  # t = sigmoid(N(p_mean, p_std)), JiT's logit-normal schedule
    p_std: float = 0.8
    t_eps: float = 0.05  # floor of (1 - t) when converting x-prediction to velocity
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 disables clipping

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                _reject(name, value, "must be a positive integer")
        if not isinstance(self.learned_pos_embed, bool):
            _reject("learned_pos_embed", self.learned_pos_embed, "must be true or false")
        if not _is_int(self.freq_dim) or self.freq_dim <= 0 or self.freq_dim % 2:
            _reject("freq_dim", self.freq_dim, "must be a positive even integer (cos + sin)")
        if self.image_size % self.patch_size:
            _reject(
                "image_size",
                self.image_size,
                f"must be a multiple of patch_size={self.patch_size}",
            )
        if self.embed_dim % self.num_heads:
            _reject(
                "embed_dim",
                self.embed_dim,
                f"must be a multiple of num_heads={self.num_heads}",
            )
        if not self.learned_pos_embed and self.embed_dim % 4:
            _reject(
                "embed_dim",
                self.embed_dim,
                "must be a multiple of 4 for the fixed 2D sin-cos position embedding"
                " (or set learned_pos_embed)",
            )
        if not self.mlp_ratio > 0 or int(self.embed_dim * self.mlp_ratio) < 1:
            _reject("mlp_ratio", self.mlp_ratio, "must give an MLP width of at least 1")
        if not self.p_std >= 0:
            _reject("p_std", self.p_std, "must be >= 0")
        if not 0 < self.t_eps <= 1:
            _reject("t_eps", self.t_eps, "must be in (0, 1]")
        if not self.lr > 0:
            _reject("lr", self.lr, "must be > 0")
        if not self.weight_decay >= 0:
            _reject("weight_decay", self.weight_decay, "must be >= 0")
        if not self.grad_clip >= 0:
            _reject("grad_clip", self.grad_clip, "must be >= 0 (0 disables clipping)")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per image: the target tokens, and as many condition tokens."""
        return self.grid * self.grid

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.channels

    @property
    def seq_len(self) -> int:
        return 2 * self.num_patches

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


PRESETS: dict[str, JiTConfig] = {
    # The seed's model: 64x64 images, 256 condition + 256 target tokens.
    "B/4": JiTConfig(),
    "S/4": JiTConfig(embed_dim=384, depth=12, num_heads=6),
    # For CPU tests and harness smoke runs: 16 + 16 tokens.
    "tiny": JiTConfig(image_size=16, embed_dim=64, depth=2, num_heads=4, freq_dim=64, lr=1e-3),
    # Smaller still: 4 + 4 tokens.
    "micro": JiTConfig(
        image_size=8, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, freq_dim=32, lr=1e-3
    ),
}


def tokens_per_sample(cfg: JiTConfig) -> int:
    """Sequence positions the transformer processes per sample (condition + target)."""
    return cfg.seq_len


def token_unit(cfg: JiTConfig) -> str:
    p = cfg.patch_size
    n = cfg.num_patches
    return f"transformer sequence positions: {n} condition + {n} target patch tokens of {p}x{p} px"


def _block_params(cfg: JiTConfig) -> int:
    d, h = cfg.embed_dim, cfg.mlp_hidden
    ada_ln = d * 6 * d + 6 * d
    attention = (d * 3 * d + 3 * d) + (d * d + d)
    mlp = (d * h + h) + (h * d + d)
    return ada_ln + attention + mlp  # LayerNorms carry no affine: adaLN supplies it


def param_count(cfg: JiTConfig) -> int:
    """Trainable parameters of ``jobs.workloads.jit.JiT`` built from ``cfg``."""
    d, p = cfg.embed_dim, cfg.patch_dim
    patch_embeds = 2 * (p * d + d)  # one for condition patches, one for noisy target patches
    pos_embed = cfg.seq_len * d if cfg.learned_pos_embed else 0
    timestep_mlp = (cfg.freq_dim * d + d) + (d * d + d)
    final_layer = (d * 2 * d + 2 * d) + (d * p + p)
    return patch_embeds + pos_embed + timestep_mlp + cfg.depth * _block_params(cfg) + final_layer


def forward_flops_per_sample(cfg: JiTConfig) -> int:
    """Forward FLOPs for one sample: 2 per multiply-accumulate of every matmul.

    Per-token linears are counted on every token that goes through them (the output head on
    the target tokens only); attention scores and the weighted sum (QK^T, AV) count
    2 * seq * seq * d each per layer; adaLN and the timestep MLP act on one conditioning
    vector per sample, so they count once per sample. Norms, activations, softmax and the
    loss are not matmuls and are left out, as FLOP counters do.
    """
    d, h, s, n = cfg.embed_dim, cfg.mlp_hidden, cfg.seq_len, cfg.num_patches
    patch_embeds = 2 * s * cfg.patch_dim * d
    timestep_mlp = 2 * (cfg.freq_dim * d + d * d)
    per_layer = (
        2 * s * (3 * d * d + d * d + 2 * d * h)  # qkv, attention projection, MLP
        + 2 * 2 * s * s * d  # QK^T and AV
        + 2 * d * 6 * d  # adaLN modulation
    )
    final_layer = 2 * d * 2 * d + 2 * n * d * cfg.patch_dim
    return patch_embeds + timestep_mlp + cfg.depth * per_layer + final_layer


def training_flops_per_sample(cfg: JiTConfig) -> int:
    """Forward + backward, with the usual backward = 2x forward."""
    return 3 * forward_flops_per_sample(cfg)
