"""The memory and time plan: what it chooses for a card, when nothing fits, precision per card."""

from __future__ import annotations

from unittest import mock

import pytest

from capo_tutorial.cli import main
from capo_tutorial.config import profile_config
from capo_tutorial.plan import (
    CARDS,
    HEADROOM,
    KNOWN_SHAPES,
    NothingFitsError,
    card_from_memory,
    fit_to_card,
    plan_run,
)
from capo_tutorial.training import _mixed_precision


def test_the_gpu_profile_fits_a_free_colab_t4_with_headroom():
    card = card_from_memory(15, like="T4")
    plan = plan_run(profile_config("gpu", card=card), card)
    assert plan.fits and plan.precision == "fp16"
    assert max(plan.memory_gib["total"], plan.memory_gib["evaluation"]) <= 15 * (1 - HEADROOM)
    assert plan.batch_size * plan.gradient_accumulation_steps == 16  # the profile's pairs per step


def test_the_old_gpu_settings_do_not_fit_a_t4():
    """8 rows of 1,024 tokens without checkpointing: the settings that ran out of memory."""
    config = profile_config(
        "gpu", card=CARDS["A100-80GB"], max_length=1024, batch_size=4, gradient_accumulation_steps=4
    )
    assert not plan_run(config.replace(gradient_checkpointing=False), CARDS["T4"]).fits


def test_a_bigger_card_gets_a_bigger_micro_batch_and_the_same_pairs_per_step():
    plans = {
        name: fit_to_card(profile_config("gpu", card=CARDS[name]), CARDS[name])
        for name in ("T4", "A100-80GB")
    }
    assert plans["A100-80GB"].batch_size > plans["T4"].batch_size
    assert {p.batch_size * p.gradient_accumulation_steps for p in plans.values()} == {16}


def test_checkpointing_is_chosen_only_when_the_micro_batch_would_not_fit():
    config = profile_config("gpu", card=CARDS["T4"], max_length=2048)
    plan = fit_to_card(config, CARDS["T4"])
    assert plan.fits and plan.gradient_checkpointing
    without = plan_run(config.replace(batch_size=plan.batch_size, gradient_checkpointing=False), CARDS["T4"])
    assert not without.fits


def test_settings_the_user_gave_are_kept():
    config = profile_config("gpu", card=CARDS["T4"], batch_size=2, gradient_accumulation_steps=8)
    assert (config.batch_size, config.gradient_accumulation_steps) == (2, 8)


def test_nothing_fits_is_an_error_that_says_what_to_change():
    with pytest.raises(NothingFitsError, match=r"nothing fits a T4 with 4 GiB.*lower max_length \(now 512\)"):
        profile_config("gpu", card=card_from_memory(4, like="T4"))


def test_capo_plan_prints_the_plan_and_fails_when_nothing_fits(capsys):
    assert main(["plan", "--profile", "gpu", "--gpu-memory", "15"]) == 0
    out = capsys.readouterr().out
    assert "T4 (15 GiB, fp16): fits" in out and "min per run" in out
    assert main(["plan", "--profile", "gpu", "--gpu-memory", "4"]) == 2
    assert "nothing fits" in capsys.readouterr().err


def test_the_shape_of_qwen25_05b_gives_its_parameter_count():
    """494M parameters (Qwen2.5-0.5B's model card), biases of q/k/v and norms aside."""
    shape = KNOWN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"]
    assert abs(shape.parameters - 494_032_768) / 494_032_768 < 0.002


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_is_bf16_only_where_the_card_computes_it(capability, expected):
    with (
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch("torch.cuda.get_device_capability", return_value=capability),
        mock.patch("torch.cuda.is_bf16_supported", return_value=True),  # True on a T4: no guide
    ):
        assert _mixed_precision("auto") == expected


def test_auto_precision_is_fp32_on_a_cpu():
    with mock.patch("torch.cuda.is_available", return_value=False):
        assert _mixed_precision("auto") == "no"
