"""Built-in workloads (jit, gpt): analytic counts against real models, training sanity,
determinism, gradient accumulation and config validation. CPU only, a few seconds."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from jobs.workloads import common, gpt, gpt_config, jit, jit_config
from jobs.workloads.registry import BUILTIN
from tests.paths import REPO
from tests.training_runs import WORKLOADS, build_workload, losses


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul FLOPs of ``fn`` as torch's FlopCounterMode sees them.

    On CPU, SDPA runs a fused kernel that FlopCounterMode has no formula for (it would count
    attention as 0). The math backend expresses attention as bmm's, which are counted: QK^T
    and AV forward, and two bmm's for each in backward, i.e. the same 3x-forward convention
    as the analytic count. (On CUDA the flash/efficient formulas add the score recomputation,
    2.5x forward for attention's backward.)
    """
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


# --- analytic FLOPs --------------------------------------------------------------------------


def test_jit_forward_flops_match_flop_counter_exactly() -> None:
    workload = build_workload("jit", micro_batch=3)
    x, cond = workload.next_batch()[0]
    t = torch.full((3,), 0.5)
    cfg = workload.model.cfg
    with torch.no_grad():
        measured = count_flops(lambda: workload.model(x, t, cond))
    assert measured == 3 * jit_config.forward_flops_per_sample(cfg)


def test_gpt_forward_flops_match_flop_counter_exactly() -> None:
    workload = build_workload("gpt", micro_batch=3)
    inputs, _ = workload.next_batch()[0]
    cfg = workload.model.cfg
    with torch.no_grad():
        measured = count_flops(lambda: workload.model(inputs))
    assert measured == 3 * gpt_config.forward_flops_per_sample(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jit", "gpt"])
def test_training_step_flops_match_flop_counter(name: str) -> None:
    """One real optimizer step (2 x 4 micro-batches, fp32) against counts.flops_per_step."""
    workload = build_workload(name, micro_batch=2, grad_accum=4)
    batch = workload.next_batch()
    measured = count_flops(lambda: workload.train_step(batch))
    analytic = workload.counts.flops_per_step
    assert measured == pytest.approx(analytic, rel=0.02)
    if name == "jit":
        # The analytic 3x assumes every matmul also computes its input gradient. Autograd
        # skips that where the input needs none: the two patch embeddings (pixels) and the
        # first timestep-MLP layer (fixed sinusoids). Accounting for it the match is exact.
        cfg = workload.model.cfg
        skipped = 2 * cfg.seq_len * cfg.patch_dim * cfg.embed_dim
        skipped += 2 * cfg.freq_dim * cfg.embed_dim
        assert measured == analytic - workload.counts.samples_per_step * skipped
    else:
        # Token embeddings are lookups, not matmuls: every matmul's input needs a gradient.
        assert measured == analytic


# --- parameter counts ------------------------------------------------------------------------


def meta_param_count(model_class: type[torch.nn.Module], cfg: object) -> int:
    """Build on the meta device: real module structure, no memory, no initialisation cost."""
    with torch.device("meta"):
        model = model_class(cfg)
    return common.trainable_params(model)


def test_param_count_formulas_match_built_models() -> None:
    for preset in ("tiny", "micro"):
        assert build_workload("jit", preset).counts.params == jit_config.param_count(
            jit_config.PRESETS[preset]
        )
    learned = build_workload("jit", learned_pos_embed=True)
    assert learned.counts.params == jit_config.param_count(learned.model.cfg)
    assert build_workload("gpt").counts.params == gpt_config.param_count(gpt_config.PRESETS["tiny"])
    for preset in ("S/4", "B/4"):
        cfg = jit_config.PRESETS[preset]
        assert meta_param_count(jit.JiT, cfg) == jit_config.param_count(cfg)
    cfg = gpt_config.PRESETS["124M"]
    assert meta_param_count(gpt.GPT, cfg) == gpt_config.param_count(cfg)


def test_exact_param_counts_of_the_large_presets() -> None:
    assert jit_config.param_count(jit_config.PRESETS["B/4"]) == 129_621_552
    assert jit_config.param_count(jit_config.PRESETS["S/4"]) == 32_517_936
    assert gpt_config.param_count(gpt_config.PRESETS["124M"]) == 124_439_808


def test_b4_flops_per_token_agree_with_the_seed_estimate() -> None:
    """The seed README: 6 x ~85M per-token parameters + attention = 0.55-0.57 GFLOP/token."""
    cfg = jit_config.PRESETS["B/4"]
    per_token = jit_config.training_flops_per_sample(cfg) / jit_config.tokens_per_sample(cfg)
    assert 0.55e9 <= per_token <= 0.57e9


# --- counts and batches ----------------------------------------------------------------------


def test_jit_counts_for_the_seed_model() -> None:
    cfg = jit_config.PRESETS["B/4"]
    assert jit_config.tokens_per_sample(cfg) == 512
    assert jit_config.token_unit(cfg) == (
        "transformer sequence positions: 256 condition + 256 target patch tokens of 4x4 px"
    )


@pytest.mark.parametrize("name", ["jit", "gpt"])
def test_grad_accumulation_counts_and_batches(name: str) -> None:
    _, config_module = WORKLOADS[name]
    workload = build_workload(name, micro_batch=2, grad_accum=4)
    cfg = workload.model.cfg
    counts = workload.counts
    assert counts.samples_per_step == 8
    assert counts.tokens_per_sample == config_module.tokens_per_sample(cfg)
    assert counts.tokens_per_step == 8 * counts.tokens_per_sample
    assert counts.flops_per_step == 8 * config_module.training_flops_per_sample(cfg)
    assert counts.flops_per_sample == config_module.training_flops_per_sample(cfg)
    batch = workload.next_batch()
    assert len(batch) == 4
    for micro_batch in batch:
        assert all(t.shape[0] == 2 and t.device.type == "cpu" for t in micro_batch)


def test_jit_batch_is_images_in_range_with_a_degraded_condition() -> None:
    workload = build_workload("jit", micro_batch=4)
    x, cond = workload.next_batch()[0]
    assert x.shape == cond.shape == (4, 3, 16, 16)
    assert x.abs().max() <= 1
    assert 0 < (x - cond).abs().mean() < x.abs().mean()


def test_gpt_batch_is_shifted_next_tokens() -> None:
    workload = build_workload("gpt", micro_batch=4)
    inputs, targets = workload.next_batch()[0]
    assert inputs.shape == targets.shape == (4, 64)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert int(inputs.min()) >= 0 and int(inputs.max()) < 256


def test_accumulated_gradient_equals_the_full_batch_gradient() -> None:
    """2 x 4 micro-batches must give the gradient of one batch of 8 (loss / grad_accum).

    Checked on the gradient itself: Adam's first update is almost scale-free, so comparing
    weights after a step would hide a wrong scale. GPT's data for one step is drawn at once
    and split, so both runs see the same samples.
    """

    def first_step_grads(micro_batch: int, grad_accum: int) -> list[torch.Tensor]:
        workload = build_workload(
            "gpt", micro_batch=micro_batch, grad_accum=grad_accum, grad_clip=0.0
        )
        grads: list[torch.Tensor] = []

        def capture(optimizer: torch.optim.Optimizer, *_: object) -> None:
            grads.extend(p.grad.clone() for g in optimizer.param_groups for p in g["params"])

        workload.optimizer.register_step_pre_hook(capture)
        workload.train_step(workload.next_batch())
        return grads

    for accumulated, full in zip(first_step_grads(2, 4), first_step_grads(8, 1), strict=True):
        torch.testing.assert_close(accumulated, full, rtol=1e-4, atol=1e-6)


# --- training behaviour ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jit", "gpt"])
def test_loss_is_finite_and_decreases(name: str) -> None:
    history = losses(build_workload(name), 30)
    assert all(torch.isfinite(torch.tensor(history)))
    assert statistics.mean(history[-5:]) < 0.8 * statistics.mean(history[:5])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jit", "gpt"])
def test_same_seed_same_losses(name: str) -> None:
    first = losses(build_workload(name, seed=3), 4)
    assert losses(build_workload(name, seed=3), 4) == first
    assert losses(build_workload(name, seed=4), 4) != first


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jit", "gpt"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(name: str, precision: str) -> None:
    workload = build_workload(name, precision=precision, micro_batch=4, grad_accum=2)
    assert all(torch.isfinite(torch.tensor(losses(workload, 3))))
    assert ("scaler" in workload.extra_state) == (precision == "fp16")
    if precision == "fp16":
        assert isinstance(workload.extra_state["scaler"], torch.amp.GradScaler)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "preset"), [("jit", "tiny"), ("jit", "micro"), ("gpt", "tiny")])
def test_step_time_of_small_presets(name: str, preset: str, capsys: pytest.CaptureFixture) -> None:
    """Printed, not asserted: timings on a shared 2-core machine are not a contract."""
    workload = build_workload(name, preset, micro_batch=8)
    losses(workload, 3)  # warm-up: allocator, first-call dispatch
    times = []
    for _ in range(15):
        batch = workload.next_batch()
        start = time.perf_counter()
        workload.train_step(batch)
        times.append(time.perf_counter() - start)
    with capsys.disabled():
        median_ms = statistics.median(times) * 1e3
        print(f"\n{name} {preset}: train_step at micro-batch 8: {median_ms:.1f} ms")


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "preset", "overrides", "field"),
    [
        ("jit", "B/4", {"embed_dim": 100}, "embed_dim=100"),
        ("jit", "B/4", {"embed_dim": 18, "num_heads": 6}, "embed_dim=18"),  # sin-cos needs 4 | d
        ("jit", "tiny", {"image_size": 18}, "image_size=18"),
        ("jit", "tiny", {"depth": 0}, "depth=0"),
        ("jit", "tiny", {"patch_size": -4}, "patch_size=-4"),
        ("jit", "tiny", {"t_eps": 0.0}, "t_eps=0.0"),
        ("gpt", "124M", {"num_heads": 5}, "embed_dim=768"),
        ("gpt", "tiny", {"context_length": 0}, "context_length=0"),
        ("gpt", "tiny", {"vocab_size": -1}, "vocab_size=-1"),
    ],
)
def test_invalid_overrides_name_the_field(
    name: str, preset: str, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field) as registry_error:
        BUILTIN[name].resolve(preset, overrides)
    assert "must" in str(registry_error.value)  # says what is allowed
    with pytest.raises(ValueError, match=field):
        build_workload(name, preset, **overrides)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"precision": "fp8"}, "precision='fp8'"),
        ({"micro_batch": 0}, "micro_batch=0"),
        ({"grad_accum": -1}, "grad_accum=-1"),
        ({"preset": "L/2"}, "preset='L/2'"),
        ({"depht": 3}, "overrides="),
    ],
)
def test_invalid_run_config_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_workload("jit", **kwargs)


@pytest.mark.parametrize("name", ["jit", "gpt"])
def test_registry_presets_resolve_and_types_are_plain(name: str) -> None:
    builtin = BUILTIN[name]
    assert set(builtin.override_types().values()) <= {int, float, bool, str}
    module, _ = WORKLOADS[name]
    for preset in builtin.presets:
        assert builtin.resolve(preset, {}) == builtin.presets[preset]
    assert builtin.builder_path == f"{module.__name__}:build"


@pytest.mark.slow
def test_modules_for_the_login_node_do_not_import_torch() -> None:
    code = (
        "import sys; import jobs.workloads.registry; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
