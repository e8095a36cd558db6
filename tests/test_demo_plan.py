"""The demo's plan: the work sized to the machine's measured speed so that it ends in the budget."""

import data2vec2
from data2vec2.modalities.image.demo_plan import (
    FIXED_S,
    LOOP_OVERHEAD,
    PROBE_TRAIN_SIZES,
    eval_seconds,
    make_plan,
    plan_overrides,
)


def test_a_fast_machine_runs_the_whole_preset():
    config = data2vec2.load_config("image-tiny")
    # AVX512-BF16: 0.28 s an update (docs/benchmarks/step_speed.jsonl), about 1,000 images/s encoded
    plan = make_plan(config, step_s=0.28, encode_s=1 / 1000, budget_s=660)
    assert plan.updates == config.train.max_steps == 1200 and plan.probe_train_images >= 30_000
    assert (plan.warmup_steps, plan.anneal_steps) == (config.optim.warmup_steps, config.ema.anneal_steps)


def test_a_slow_machine_gets_a_shorter_complete_schedule_that_fits_the_budget():
    config = data2vec2.load_config("image-tiny")
    plan = make_plan(config, step_s=1.35, encode_s=1 / 213, budget_s=660)  # AVX2 only, fp32, measured
    assert plan.probe_train_images < 60_000 and plan.probe_train_images in PROBE_TRAIN_SIZES
    assert 100 < plan.updates < 1200
    assert plan.updates * plan.step_s * LOOP_OVERHEAD + plan.eval_estimate_s + FIXED_S <= plan.budget_s
    assert plan.eval_estimate_s == eval_seconds(plan.probe_train_images, 1 / 213)
    assert plan.eval_estimate_s <= 0.3 * 660 or plan.probe_train_images == min(PROBE_TRAIN_SIZES)
    scale = plan.updates / 1200
    assert plan.warmup_steps == round(100 * scale) and plan.anneal_steps == plan.updates
    planned = data2vec2.load_config("image-tiny", plan_overrides(plan))  # a valid config
    assert planned.train.max_steps == plan.updates and planned.ema.anneal_steps == plan.updates
    assert "schedule is shortened" in plan.why
