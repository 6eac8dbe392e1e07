"""GPT-2-style decoder-only language model on synthetic token sequences.

The layer shapes here are exactly what ``gpt_config.param_count`` and
``forward_flops_per_sample`` describe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from jobs.workloads import common, gpt_config
from jobs.workloads.base import Workload, WorkloadConfig
from jobs.workloads.gpt_config import GPTConfig

DATA_STREAM = 0
# The synthetic text is a random walk on the token ids with steps of 1..MAX_STEP, so the
# next token is predictable down to ln(MAX_STEP) nats. Independent uniform tokens would
# leave nothing to learn: the loss would sit at ln(vocab) and could not show training works.
MAX_STEP = 4


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = common.SelfAttention(cfg.embed_dim, cfg.num_heads, causal=True)
        self.ln2 = nn.LayerNorm(cfg.embed_dim)
        self.mlp = common.MLP(cfg.embed_dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.wpe = nn.Embedding(cfg.context_length, cfg.embed_dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.embed_dim)
        self.lm_head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: GPT-2's head has no parameters of its own
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's initialisation: N(0, 0.02), residual projections scaled down by
        sqrt(2 * layers) so the residual stream's variance does not grow with depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.cfg.num_layers)
        for block in cast("Iterable[Block]", self.blocks):  # a ModuleList yields Modules
            nn.init.normal_(block.attn.proj.weight, std=residual_std)
            nn.init.normal_(block.mlp.fc2.weight, std=residual_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits for the next token at every position."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def next_token_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(inputs).float()  # the softmax over a 50k vocabulary wants fp32
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def synthetic_tokens(
    n: int, cfg: GPTConfig, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (n, context_length): a random walk on the token ring,
    vectorised as a cumulative sum so it stays cheap on the GPU."""
    start = torch.randint(cfg.vocab_size, (n, 1), generator=generator, device=device)
    steps = torch.randint(
        1, MAX_STEP + 1, (n, cfg.context_length), generator=generator, device=device
    )
    walk = torch.cat([start, start + steps.cumsum(dim=1)], dim=1) % cfg.vocab_size
    return walk[:, :-1], walk[:, 1:]


def build(config: WorkloadConfig) -> Workload:
    common.check_run_config(config)
    cfg = common.resolve_config("gpt", gpt_config.PRESETS, config)
    device = torch.device(config.device)
    common.seed_everything(config.seed)
    model = GPT(cfg).to(device)
    data_rng = common.stream_generator(config.seed, DATA_STREAM, device)

    def next_batch() -> list[tuple[torch.Tensor, torch.Tensor]]:
        inputs, targets = synthetic_tokens(
            config.micro_batch * config.grad_accum, cfg, data_rng, device
        )
        return list(
            zip(inputs.split(config.micro_batch), targets.split(config.micro_batch), strict=True)
        )

    def loss_fn(micro_batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return next_token_loss(model, *micro_batch)

    def eval_batch(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = common.eval_generator(config.seed, index, device)
        return synthetic_tokens(config.micro_batch, cfg, generator, device)

    return common.assemble(
        name=f"gpt:{config.preset}",
        config=config,
        model=model,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        loss_fn=loss_fn,
        next_batch=next_batch,
        tokens_per_sample=gpt_config.tokens_per_sample(cfg),
        token_unit=gpt_config.token_unit(cfg),
        training_flops_per_sample=gpt_config.training_flops_per_sample(cfg),
        rngs={"data_rng": data_rng},
        eval_loss=loss_fn,
        eval_batch=eval_batch,
    )
