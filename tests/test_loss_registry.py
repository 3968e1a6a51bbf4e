"""The loss registry: each loss's facts live in its entry, and everyone reads them from there."""

import functools
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import capo_tutorial
from capo_tutorial import training
from capo_tutorial.config import profile_config
from capo_tutorial.experiments import METHODS
from capo_tutorial.losses import (
    CAPO_DEFAULTS,
    LOSSES,
    PreferenceLossOutput,
    capo_loss,
    capo_weights,
    pair_confidence,
    preference_loss,
    register_loss,
)
from capo_tutorial.models import tiny_causal_lm

NAME = "test_length_normalised"

# name -> (needs_reference, needs_lengths, takes_strength, defaults)
BUILT_IN = {
    "dpo": (True, False, False, {}),
    "cdpo": (True, False, False, {"label_smoothing": 0.1}),
    "rdpo": (True, False, False, {"label_smoothing": 0.1}),
    "ipo": (True, True, False, {}),
    "hinge": (True, False, False, {}),
    "simpo": (False, True, False, {"target_margin": 0.5}),
    "sft": (False, True, False, {}),
    "capo": (True, False, True, {**CAPO_DEFAULTS, "normalize": True}),
}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_each_built_in_loss_carries_its_facts(name):
    spec = LOSSES[name]
    facts = (spec.needs_reference, spec.needs_lengths, spec.takes_strength, dict(spec.defaults))
    assert facts == BUILT_IN[name]
    assert spec.name == name and "beta" in spec.parameters


def length_normalised_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps=None,
    reference_rejected_logps=None,
    *,
    beta=0.1,
    chosen_lengths=None,
    rejected_lengths=None,
    offset=0.25,
    strength=None,
):
    """-s log sigmoid(beta * (mean token log-prob of y_w - that of y_l) - offset), without a reference."""
    assert reference_chosen_logps is None and reference_rejected_logps is None, "the reference was computed"
    chosen = beta * policy_chosen_logps / chosen_lengths
    rejected = beta * policy_rejected_logps / rejected_lengths
    weights = torch.ones_like(chosen) if strength is None else strength
    losses = -weights * F.logsigmoid(chosen - rejected - offset)
    return PreferenceLossOutput(losses, chosen.detach(), rejected.detach(), weights.detach())


@pytest.fixture
def registered():
    register_loss(NAME, length_normalised_loss, needs_reference=False, needs_lengths=True)
    yield LOSSES[NAME]
    LOSSES.pop(NAME)


def test_register_loss_infers_strength_and_defaults_and_refuses_a_taken_name(registered):
    assert (registered.needs_reference, registered.needs_lengths, registered.takes_strength) == (
        False,
        True,
        True,
    )
    assert dict(registered.defaults) == {"offset": 0.25}
    with pytest.raises(ValueError, match="already registered"):
        register_loss(NAME, length_normalised_loss)
    with pytest.raises(ValueError, match="not keywords of the loss"):
        register_loss("another", length_normalised_loss, defaults={"gamma": 1.0})


def test_validation_reads_the_registered_facts(registered):
    logps = torch.tensor([-4.0, -6.0])
    lengths = torch.tensor([2.0, 3.0])
    output = preference_loss(
        NAME, logps, logps.flip(0), None, None, chosen_lengths=lengths, rejected_lengths=lengths
    )
    assert output.losses.shape == (2,)
    with pytest.raises(ValueError, match=f"'{NAME}' needs chosen_lengths"):
        preference_loss(NAME, logps, logps.flip(0), None, None, rejected_lengths=lengths)


class NoReference:
    def logps(self, batch):
        raise AssertionError("a reference-free loss must not compute reference log-probs")


def tiny_batch(pairs=3, length=7, vocab=40):
    """A 2B batch as the collator builds it: chosen rows, then rejected rows, completions at the end."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, vocab, (2 * pairs, length), generator=generator)
    completion_mask = torch.zeros(2 * pairs, length, dtype=torch.long)
    for row, completion in enumerate([2, 3, 4, 3, 1, 2]):
        completion_mask[row, length - completion :] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "completion_mask": completion_mask,
        "strength": torch.tensor([0.5, 1.0, 2.0]),
    }


def test_a_registered_loss_trains_without_a_reference_and_gets_the_strength(registered, tmp_path):
    config = profile_config("smoke", loss=NAME, beta=0.5, output_dir=str(tmp_path))
    model = tiny_causal_lm(40, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seed=0)
    components = type("Components", (), {"reference": NoReference()})()
    batch = tiny_batch()
    metrics = training._preference_step(model, batch, config, components, training.make_accelerator(config))
    # the same loss by hand: mean over pairs of -s log sigmoid(0.5 * per-token margin - 0.25)
    from capo_tutorial.logprobs import concatenated_logps

    policy = concatenated_logps(model, batch)
    margin = 0.5 * (
        policy.chosen_logps / policy.chosen_lengths - policy.rejected_logps / policy.rejected_lengths
    )
    expected = (-batch["strength"] * F.logsigmoid(margin - 0.25)).mean()
    torch.testing.assert_close(metrics["loss"], expected)
    assert metrics["weights/max"].item() == 2.0, "the batch's strength reached the loss"


def test_the_trl_integration_reads_the_registered_facts(registered, tmp_path):
    """CAPOTrainer passes the strength column, skips the reference, and trains on the registered loss."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl_helpers import cpu_config_kwargs, load_model, preference_records, saved_tiny_model

    from capo_tutorial.integrations.trl import CAPOConfig, CAPOTrainer

    seen = []
    original = registered.function

    @functools.wraps(original)  # keeps the signature, which validation reads
    def spy(*args, **kwargs):
        seen.append(kwargs.get("strength"))
        return original(*args, **kwargs)

    LOSSES[NAME] = type(registered)(**{**registered.__dict__, "function": spy})
    folder, tokenizer = saved_tiny_model(tmp_path / "model")
    args = CAPOConfig(
        **cpu_config_kwargs(tmp_path / "run", max_steps=2), capo_loss=NAME, capo_params={"offset": 0.1}
    )
    trainer = CAPOTrainer(
        model=load_model(folder),
        args=args,
        train_dataset=Dataset.from_list(preference_records(8, with_strength=True)),
        processing_class=tokenizer,
    )
    assert trainer._loss_takes_strength
    trainer.train()  # the loss asserts that no reference log-probs reached it
    strengths = [value for value in seen if value is not None]
    assert strengths and all(set(value.tolist()) <= {0.25, 1.0, 2.0} for value in strengths)
    assert all(entry["weights/max"] > 0 for entry in trainer.state.log_history if "weights/max" in entry)


def test_one_capo_default_everywhere():
    signature = inspect.signature(capo_loss).parameters
    assert {key: signature[key].default for key in CAPO_DEFAULTS} == dict(CAPO_DEFAULTS)
    assert METHODS["capo"].params == dict(CAPO_DEFAULTS)
    assert {key: LOSSES["capo"].defaults[key] for key in CAPO_DEFAULTS} == dict(CAPO_DEFAULTS)
    weights = inspect.signature(capo_weights).parameters
    assert (weights["source"].default, weights["tau"].default, weights["gamma"].default) == (
        CAPO_DEFAULTS["confidence"],
        CAPO_DEFAULTS["tau"],
        CAPO_DEFAULTS["gamma"],
    )
    assert inspect.signature(pair_confidence).parameters["tau"].default == CAPO_DEFAULTS["tau"]
    # `capo train --loss capo` with no loss_params runs capo_loss's defaults: the same weights
    config = profile_config("smoke", loss="capo")
    assert config.loss_params == {}
    logps = torch.tensor([-4.0, -6.0, -5.0]), torch.tensor([-5.0, -4.0, -5.5])
    reference = torch.tensor([-4.5, -5.0, -5.0]), torch.tensor([-5.0, -4.5, -6.0])
    lengths = {
        "chosen_lengths": torch.tensor([2.0, 3.0, 4.0]),
        "rejected_lengths": torch.tensor([3.0, 2.0, 4.0]),
    }
    default = preference_loss("capo", *logps, *reference, **lengths, **config.loss_params)
    explicit = preference_loss("capo", *logps, *reference, **lengths, **CAPO_DEFAULTS)
    literal = preference_loss("capo", *logps, *reference, **lengths, confidence="sigmoid", tau=1.0)
    torch.testing.assert_close(default.weights, explicit.weights)
    assert not torch.allclose(default.weights, literal.weights), "the default is not the sigmoid source"
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    spelled = ", ".join(
        f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
        for key, value in CAPO_DEFAULTS.items()
    )
    assert spelled.replace("'", '"') in readme, f"the README's CAPO defaults must read: {spelled}"


def test_the_trl_config_runs_the_default_capo():
    pytest.importorskip("trl")
    from capo_tutorial.integrations.trl import CAPOConfig

    config = CAPOConfig(output_dir="unused", use_cpu=True, bf16=False)
    assert config.capo_loss == "capo"
    assert {**LOSSES["capo"].defaults, **config.capo_params} == dict(LOSSES["capo"].defaults)


def test_the_public_api_names_resolve():
    for name in capo_tutorial.__all__:
        assert getattr(capo_tutorial, name) is not None, name
    assert capo_tutorial.preference_loss is preference_loss
    assert capo_tutorial.LOSSES is LOSSES
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        capo_tutorial.nonsense  # noqa: B018


def test_the_api_page_lists_every_public_name():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "book" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in capo_tutorial.__all__ if name != "__version__" and f"`{name}`" not in page]
    assert not missing, f"book/api.md does not list {missing}"
