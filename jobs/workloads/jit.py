"""JiT: a plain pixel-space diffusion transformer trained with x-prediction and a v-loss.

After "Back to Basics: Let Denoising Generative Models Denoise" (Li & He, 2025), in the
seed's image-conditioned form: the sequence is the patches of a conditioning image followed
by the patches of the noisy target; timestep conditioning is DiT's adaLN-Zero. The layer
shapes here are exactly what ``jit_config.param_count`` and ``forward_flops_per_sample``
describe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from jobs.workloads import common, jit_config
from jobs.workloads.base import Workload, WorkloadConfig
from jobs.workloads.jit_config import JiTConfig

DATA_STREAM, NOISE_STREAM = 0, 1
TIMESTEP_SCALE = 1000.0  # DiT's sinusoid frequencies are laid out for t in [0, 1000]


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)*(W/p), p*p*C), patches in row-major order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """Inverse of ``patchify`` for square images."""
    b, n, _ = patches.shape
    grid = math.isqrt(n)
    x = patches.reshape(b, grid, grid, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, grid * patch, grid * patch)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (MAE/DiT): half the channels per axis."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([axis(rows), axis(cols)], dim=1)  # (grid * grid, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def _norm(dim: int) -> nn.LayerNorm:
    # No affine parameters: adaLN supplies the per-sample shift and scale.
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t, then an MLP: one conditioning vector per sample."""

    def __init__(self, dim: int, freq_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        exponents = torch.arange(half, device=t.device, dtype=torch.float32) / half
        freqs = torch.exp(-math.log(10000.0) * exponents)
        angles = (t.float() * TIMESTEP_SCALE).reshape(-1, 1) * freqs.reshape(1, -1)
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


class JiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated and whose residual branches are
    gated by the timestep (adaLN-Zero: the gates start at zero, so each block starts as the
    identity)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = _norm(dim)
        self.attn = common.SelfAttention(dim, num_heads, causal=False)
        self.norm2 = _norm(dim)
        self.mlp = common.MLP(dim, mlp_hidden)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        modulation = self.ada_ln(c).unsqueeze(1).chunk(6, dim=-1)
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = modulation
        x = x + gate_attn * self.attn(modulate(self.norm1(x), shift_attn, scale_attn))
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_dim: int) -> None:
        super().__init__()
        self.norm = _norm(dim)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada_ln(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class JiT(nn.Module):
    """Predicts the clean image x from the noisy target z, the timestep t and a condition."""

    def __init__(self, cfg: JiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        # Separate embeddings tell the two streams apart; positions are shared per pixel.
        self.cond_embed = nn.Linear(cfg.patch_dim, d)
        self.target_embed = nn.Linear(cfg.patch_dim, d)
        if cfg.learned_pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.seq_len, d))
        else:
            fixed = sincos_pos_embed_2d(d, cfg.grid).repeat(2, 1).unsqueeze(0)
            self.register_buffer("pos_embed", fixed, persistent=False)
        self.t_embed = TimestepEmbedder(d, cfg.freq_dim)
        self.blocks = nn.ModuleList(
            JiTBlock(d, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.depth)
        )
        self.final = FinalLayer(d, cfg.patch_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: xavier linears, zeroed adaLN and output so that the network
        starts out predicting x = 0 through identity blocks."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.normal_(self.pos_embed, std=0.02)
        # A Sequential's members and a ModuleList's items are typed as any Module: cast to
        # what they are.
        embed = cast("tuple[nn.Linear, nn.Linear]", (self.t_embed.mlp[0], self.t_embed.mlp[2]))
        for layer in embed:
            nn.init.normal_(layer.weight, std=0.02)
        for block in cast("Iterable[JiTBlock]", self.blocks):
            ada_ln = cast(nn.Linear, block.ada_ln[1])
            nn.init.zeros_(ada_ln.weight)
            nn.init.zeros_(ada_ln.bias)
        for layer in (cast(nn.Linear, self.final.ada_ln[1]), self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        tokens = torch.cat(
            [self.cond_embed(patchify(cond, p)), self.target_embed(patchify(z, p))], dim=1
        )
        x = tokens + self.pos_embed
        c = self.t_embed(t)
        for block in self.blocks:
            x = block(x, c)
        # Only the target tokens are predicted; the condition tokens are context.
        out = self.final(x[:, self.cfg.num_patches :], c)
        return unpatchify(out, p, self.cfg.channels)


def v_loss(
    model: nn.Module,
    x: torch.Tensor,
    cond: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    t_eps: float,
) -> torch.Tensor:
    """JiT's objective: the network predicts x, the loss compares the implied velocities."""
    t_img = t.reshape(-1, 1, 1, 1)
    z = t_img * x + (1 - t_img) * eps
    x_hat = model(z, t, cond).float()
    one_minus_t = (1 - t_img).clamp(min=t_eps)
    v_hat = (x_hat - z) / one_minus_t
    v = (x - z) / one_minus_t
    return F.mse_loss(v_hat, v)


def synthetic_images(
    n: int, cfg: JiTConfig, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Smooth random fields in [-1, 1]: two octaves of upsampled Gaussian noise."""
    size = cfg.image_size
    field = torch.zeros(n, cfg.channels, size, size, device=device)
    for divisor, amplitude in ((8, 1.0), (4, 0.5)):
        low = max(1, size // divisor)
        noise = torch.randn(n, cfg.channels, low, low, generator=generator, device=device)
        field += amplitude * F.interpolate(noise, size=(size, size), mode="bicubic")
    return torch.tanh(field)


def degrade(images: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """The condition: the target with its fine detail removed (area-down, bilinear-up)."""
    size = images.shape[-1]
    low = F.interpolate(images, size=max(1, size // factor), mode="area")
    return F.interpolate(low, size=(size, size), mode="bilinear")


def build(config: WorkloadConfig) -> Workload:
    common.check_run_config(config)
    cfg = common.resolve_config("jit", jit_config.PRESETS, config)
    device = torch.device(config.device)
    common.seed_everything(config.seed)
    model = JiT(cfg).to(device)
    data_rng = common.stream_generator(config.seed, DATA_STREAM, device)
    noise_rng = common.stream_generator(config.seed, NOISE_STREAM, device)

    def next_batch() -> list[tuple[torch.Tensor, torch.Tensor]]:
        x = synthetic_images(config.micro_batch * config.grad_accum, cfg, data_rng, device)
        cond = degrade(x)
        return list(zip(x.split(config.micro_batch), cond.split(config.micro_batch), strict=True))

    def noise(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The timesteps t (JiT's logit-normal) and the noise eps for the images x."""
        logit_t = torch.randn(x.shape[0], generator=generator, device=device)
        t = torch.sigmoid(logit_t * cfg.p_std + cfg.p_mean)
        return t, torch.randn(x.shape, generator=generator, device=device)

    def loss_fn(micro_batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, cond = micro_batch
        t, eps = noise(x, noise_rng)
        return v_loss(model, x, cond, t, eps, cfg.t_eps)

    def eval_batch(index: int) -> tuple[torch.Tensor, ...]:
        # Images, timesteps and noise all fixed per index: the held-out loss is comparable
        # from one evaluation to the next.
        generator = common.eval_generator(config.seed, index, device)
        x = synthetic_images(config.micro_batch, cfg, generator, device)
        return (x, degrade(x), *noise(x, generator))

    def eval_loss(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, cond, t, eps = batch
        return v_loss(model, x, cond, t, eps, cfg.t_eps)

    return common.assemble(
        name=f"jit:{config.preset}",
        config=config,
        model=model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        loss_fn=loss_fn,
        next_batch=next_batch,
        tokens_per_sample=jit_config.tokens_per_sample(cfg),
        token_unit=jit_config.token_unit(cfg),
        training_flops_per_sample=jit_config.training_flops_per_sample(cfg),
        rngs={"data_rng": data_rng, "noise_rng": noise_rng},
        eval_loss=eval_loss,
        eval_batch=eval_batch,
    )
