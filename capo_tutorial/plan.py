"""A memory and time plan for a run on a GPU: what fits on a card, and how long it will take.

``plan_run(config, card)`` estimates, for the longest micro-batch a run can meet (every row
``max_length`` tokens), the peak GPU memory of a training step and of an evaluation batch, and the
time of a step from the model's FLOPs; ``fit_to_card`` picks the micro-batch, the gradient
accumulation and gradient checkpointing that fit the card with headroom, keeping the pairs per
optimizer step. ``capo plan --profile gpu --gpu-memory 15`` prints the same plan.

The memory model, for R rows of T tokens (R = 2 x pairs: chosen and rejected rows), a model of L
layers, hidden size H, MLP size I and P parameters (P_layer per layer), under fp16/bf16 autocast:

    weights           4 P               float32 weights (frozen under LoRA; autocast casts per op)
    trainable state  16 n               n trainable parameters: weight, gradient, two AdamW moments
    activations       L (R T A + 2 P_layer)               without checkpointing
                      L R T 4 H + (R T A + 2 P_layer)     with it: one float32 hidden state per
                                                          layer, plus the layer being recomputed
    LM head           12 min(R T V, C) + 2 V H    one chunk of C logits at most (half, float32 copy,
                                                  their gradients) and the head's half weight copy;
                                                  one chunk's float32 logits stay saved when a
                                                  micro-batch fits one chunk (see logprobs.py)
    CUDA context      0.6 GiB           context, allocator blocks, fragmentation

A = 25.2 H + 8.2 I bytes per token and layer are the tensors autograd keeps for one Qwen2/Llama
layer with LoRA on every projection; 2 P_layer are the half-precision copies of its frozen weights
that the backward pass needs. Both were measured on a CPU with saved-tensor hooks at three widths
(``benchmarks/activation_memory.py``; results in ``benchmarks/results/``). Evaluation runs without
gradients: the weights, one layer's activations and one chunk of logits.

Time: a step does a forward pass, a backward pass (about one more forward under LoRA, two with
every weight trained), the recomputation under checkpointing, and the reference's forward pass
(none when its log-probs are precomputed), at ``2 P + 4 T H L`` FLOPs per token and pass, at an
assumed :data:`UTILISATION` of the card's dense fp16/bf16 peak.

Checked on a GPU (``benchmarks/gpu_profile_check.py``; ``benchmarks/results/gpu_profile_check.json``):
an H200 capped to a T4's 15 GiB, Qwen2.5-0.5B's shape, every row at 512 tokens, 20 steps of CAPO
with fused AdamW. The peak PyTorch allocated was 0.92 of the plan (which also counts the CUDA
context) with the T4's micro-batch of 4 pairs, fp16 and bf16 alike, and 0.82 with checkpointing at
16 pairs; no fp16 step overflowed. The step reached 62-69 TFLOP/s at 4 pairs and 144 at 16, 6-15%
of the 989 that :data:`CARDS` lists for it: a 0.5B model cannot fill a large card, so the time
estimate is optimistic there. On a T4 the utilisation is still an assumption.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capo_tutorial.logprobs import LOGITS_CHUNK_ELEMENTS

if TYPE_CHECKING:  # config imports this module (the gpu profile's settings come from a plan)
    from capo_tutorial.config import RunConfig

__all__ = [
    "CARDS",
    "Card",
    "ModelShape",
    "NothingFitsError",
    "Plan",
    "card_from_memory",
    "detect_card",
    "fit_to_card",
    "model_shape",
    "plan_run",
    "step_flops",
]

GIB = 2**30
ACTIVATION_BYTES_PER_H, ACTIVATION_BYTES_PER_I = 25.2, 8.2  # per token and layer (module docstring)
CUDA_CONTEXT_GIB = 0.6
UTILISATION = 0.3  # share of the card's peak that a 0.5B model's training step reaches (assumed)
MEAN_FILL = 0.7  # mean row length as a share of max_length, for the time estimate (long hub conversations)
HEADROOM = 0.15  # a plan must leave this share of the card's memory free


@dataclass(frozen=True)
class Card:
    """A GPU: the memory PyTorch can use, compute capability, and dense fp16/bf16 tensor-core TFLOP/s."""

    name: str
    memory_gib: float
    capability: tuple[int, int]
    tflops: float

    @property
    def precision(self) -> str:
        """bf16 where the card computes it natively (capability >= 8.0), else fp16 with loss scaling."""
        return "bf16" if self.capability[0] >= 8 else "fp16"


CARDS: dict[str, Card] = {
    card.name: card
    for card in (
        Card("T4", 15.0, (7, 5), 65.0),  # Colab's free GPU
        Card("L4", 22.0, (8, 9), 121.0),
        Card("A100-40GB", 39.5, (8, 0), 312.0),
        Card("A100-80GB", 79.0, (8, 0), 312.0),
        Card("H100", 79.0, (9, 0), 989.0),
        Card("H200", 139.0, (9, 0), 989.0),
    )
}


def detect_card() -> Card | None:
    """The CUDA device this process sees, as a :class:`Card` (None without CUDA).

    A card not in :data:`CARDS` gets its memory and capability from the driver and, for its speed,
    the TFLOP/s of the known card of the same capability.
    """
    import torch

    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(0)
    name = properties.name.upper()
    for key, card in CARDS.items():
        if key.split("-")[0] in name and (card.memory_gib + 2) * GIB >= properties.total_memory:
            return card
    capability = (properties.major, properties.minor)
    similar = min(CARDS.values(), key=lambda c: abs(c.capability[0] - capability[0]))
    return Card(properties.name, properties.total_memory / GIB - 0.5, capability, similar.tflops)


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know of a Llama/Qwen2/Gemma-style decoder."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def layer_parameters(self) -> int:
        kv = self.kv_heads * self.head_dim
        return 2 * self.hidden * self.hidden + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate

    @property
    def parameters(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_parameters + embeddings

    def lora_parameters(self, rank: int) -> int:
        """Adapter parameters with LoRA of this rank on q, k, v, o, gate, up and down."""
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        per_layer = rank * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
        return self.layers * per_layer

    def activation_bytes_per_token(self) -> float:
        """Bytes autograd keeps per token and layer (see the module docstring)."""
        return ACTIVATION_BYTES_PER_H * self.hidden + ACTIVATION_BYTES_PER_I * self.intermediate


# Shapes of the hub models the profiles use, so that a plan needs no download.
KNOWN_SHAPES: dict[str, ModelShape] = {
    "Qwen/Qwen2.5-0.5B-Instruct": ModelShape(24, 896, 4864, 14, 2, 151936),
    "Qwen/Qwen2.5-1.5B-Instruct": ModelShape(28, 1536, 8960, 12, 2, 151936),
    "gemma3-270m": ModelShape(18, 640, 2048, 4, 1, 262144),
}


def model_shape(config: RunConfig) -> ModelShape:
    """The shape of ``config.model``: a known hub model, the tiny model, or a local config.json."""
    if config.model in KNOWN_SHAPES:
        return KNOWN_SHAPES[config.model]
    if config.model == "tiny":
        return ModelShape(
            config.tiny_layers,
            config.tiny_hidden_size,
            4 * config.tiny_hidden_size,
            4,
            4,
            config.tiny_vocab_size,
        )
    from transformers import AutoConfig

    try:
        hub = AutoConfig.from_pretrained(config.model)
    except OSError as error:
        raise ValueError(
            f"no plan for model {config.model!r}: its config.json is neither known to the plan nor "
            f"readable ({error}); download the model first, or plan with a model the plan knows: "
            f"{sorted(KNOWN_SHAPES)}"
        ) from None
    hub = getattr(hub, "text_config", hub)
    return ModelShape(
        hub.num_hidden_layers,
        hub.hidden_size,
        hub.intermediate_size,
        hub.num_attention_heads,
        getattr(hub, "num_key_value_heads", None) or hub.num_attention_heads,
        hub.vocab_size,
        bool(getattr(hub, "tie_word_embeddings", True)),
    )


@dataclass(frozen=True)
class Plan:
    """A run's settings for one card and what they are expected to cost.

    Attributes:
        card: the GPU planned for.
        batch_size, gradient_accumulation_steps, max_length, gradient_checkpointing, eval_batch_size,
            precision: the settings (RunConfig fields) the plan chose.
        memory_gib: estimated peak of a training step, term by term (see the module docstring), and
            ``total``; ``evaluation`` is the peak of an evaluation batch.
        step_seconds: estimated time of one optimizer step (mean row length MEAN_FILL x max_length).
        run_minutes: the whole run: max_steps steps and the final and periodic evaluations.
    """

    card: Card
    batch_size: int
    gradient_accumulation_steps: int
    max_length: int
    gradient_checkpointing: bool
    eval_batch_size: int
    precision: str
    memory_gib: dict[str, float]
    step_seconds: float
    run_minutes: float

    @property
    def fits(self) -> bool:
        budget = self.card.memory_gib * (1 - HEADROOM)
        return max(self.memory_gib["total"], self.memory_gib["evaluation"]) <= budget

    def settings(self) -> dict[str, Any]:
        """The RunConfig fields this plan sets."""
        names = ("batch_size", "gradient_accumulation_steps", "max_length", "gradient_checkpointing")
        return {name: getattr(self, name) for name in (*names, "eval_batch_size")}

    def describe(self) -> str:
        """A few lines for a terminal or a notebook."""
        terms = ", ".join(
            f"{k} {v:.2f}" for k, v in self.memory_gib.items() if k not in {"total", "evaluation"}
        )
        verdict = "fits" if self.fits else "does NOT fit"
        checkpointing = "on" if self.gradient_checkpointing else "off"
        return (
            f"{self.card.name} ({self.card.memory_gib:g} GiB, {self.precision}): {verdict} with "
            f"{HEADROOM:.0%} headroom\n"
            f"  micro-batch {self.batch_size} pairs x {self.gradient_accumulation_steps} accumulated, "
            f"max_length {self.max_length}, gradient checkpointing {checkpointing}\n"
            f"  training step: peak {self.memory_gib['total']:.2f} GiB ({terms})\n"
            f"  evaluation batch of {self.eval_batch_size} pairs: "
            f"peak {self.memory_gib['evaluation']:.2f} GiB\n"
            f"  ~{self.step_seconds:.2f} s per optimizer step, ~{self.run_minutes:.1f} min per run"
        )


def _training_memory(shape: ModelShape, config: RunConfig) -> dict:
    rows_tokens = 2 * config.batch_size * config.max_length
    trainable = shape.lora_parameters(config.lora_r) if config.lora_r else shape.parameters
    return {
        "weights": 4 * shape.parameters / GIB,
        "trainable state": 16 * trainable / GIB,
        "activations": sum(activation_bytes(shape, rows_tokens, config.gradient_checkpointing)) / GIB,
        "LM head": _head_bytes(shape, rows_tokens) / GIB,
        "CUDA context": CUDA_CONTEXT_GIB,
    }


def activation_bytes(shape: ModelShape, tokens: int, checkpointing: bool) -> tuple[float, float]:
    """(saved, transient) activation bytes of a forward and backward pass over ``tokens`` positions.

    Saved: what autograd keeps from the forward pass for the backward pass. Transient: with
    checkpointing, the one layer whose activations are recomputed at a time in the backward pass.
    """
    per_layer = tokens * shape.activation_bytes_per_token() + 2 * shape.layer_parameters
    final_norm = tokens * 8 * shape.hidden  # its float32 input and output, kept for the LM head
    if checkpointing:
        return shape.layers * tokens * 4 * shape.hidden + final_norm, per_layer
    return shape.layers * per_layer + final_norm, 0.0


def head_saved_bytes(shape: ModelShape, tokens: int) -> float:
    """What the LM head leaves saved for the backward pass, for ``tokens`` positions.

    In one chunk (see ``logprobs``): the float32 logits and the head's half-precision weight copy.
    In several chunks, nothing but the hidden states (counted with the activations): each chunk is
    recomputed in the backward pass.
    """
    elements = tokens * shape.vocab
    if elements > LOGITS_CHUNK_ELEMENTS:
        return 0.0
    return 4 * elements + 2 * shape.vocab * shape.hidden


def _head_bytes(shape: ModelShape, tokens: int) -> float:
    """The LM head's peak: what it saves, plus one chunk's half logits, float32 copy and their
    gradients (12 bytes a logit) and the weight copy while a chunk is recomputed."""
    chunk = min(tokens * shape.vocab, LOGITS_CHUNK_ELEMENTS)
    return max(head_saved_bytes(shape, tokens), 2 * shape.vocab * shape.hidden) + 12 * chunk


def _evaluation_memory(shape: ModelShape, config: RunConfig) -> float:
    tokens = 2 * config.eval_batch_size * config.max_length
    layer = tokens * shape.activation_bytes_per_token() + 2 * shape.layer_parameters
    chunk = min(tokens * shape.vocab, LOGITS_CHUNK_ELEMENTS)
    head = 6 * chunk + 2 * shape.vocab * shape.hidden  # half logits and their float32 copy
    return (4 * shape.parameters + layer + head) / GIB + CUDA_CONTEXT_GIB


def _flops_per_token(shape: ModelShape, length: float) -> float:
    return 2 * shape.parameters + 4 * length * shape.hidden * shape.layers


def step_flops(shape: ModelShape, config: RunConfig, fill: float = MEAN_FILL) -> float:
    """Floating-point operations of one optimizer step whose rows fill ``fill`` x max_length tokens.

    Counts the policy's forward and backward (one backward pass with LoRA, two without), the
    recomputed forward under gradient checkpointing, and the reference's forward unless it is
    precomputed; both sides of every pair.
    """
    passes = 1 + (1 if config.lora_r else 2) + (1 if config.gradient_checkpointing else 0)
    passes += 0 if config.reference == "precomputed" else 1
    length = fill * config.max_length
    tokens = 2 * config.batch_size * config.gradient_accumulation_steps * length
    return passes * tokens * _flops_per_token(shape, length)


def _step_seconds(shape: ModelShape, config: RunConfig, card: Card) -> float:
    return step_flops(shape, config) / (card.tflops * 1e12 * UTILISATION)


def _run_minutes(shape: ModelShape, config: RunConfig, card: Card, step_seconds: float) -> float:
    evaluations = 1 + (config.max_steps // config.eval_every if config.eval_every else 0)
    pairs = config.max_eval_pairs or 600
    length = MEAN_FILL * config.max_length
    eval_flops = evaluations * pairs * 2 * length * 2 * _flops_per_token(shape, length)
    eval_seconds = eval_flops / (card.tflops * 1e12 * UTILISATION)
    return (config.max_steps * step_seconds + eval_seconds) / 60


def plan_run(config: RunConfig, card: Card) -> Plan:
    """The plan of ``config`` as it is (its batch, accumulation, length and checkpointing) on ``card``."""
    shape = model_shape(config)
    memory = _training_memory(shape, config)
    memory["total"] = sum(memory.values())
    memory["evaluation"] = _evaluation_memory(shape, config)
    step = _step_seconds(shape, config, card)
    return Plan(
        card=card,
        batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        gradient_checkpointing=config.gradient_checkpointing,
        eval_batch_size=config.eval_batch_size,
        precision=card.precision,
        memory_gib=memory,
        step_seconds=step,
        run_minutes=_run_minutes(shape, config, card, step),
    )


class NothingFitsError(ValueError):
    """No micro-batch, with or without gradient checkpointing, fits the card."""


def _candidates(pairs_per_step: int) -> list[tuple[int, bool]]:
    """(micro-batch pairs, checkpointing) to try, fastest first: big micro-batches without
    recomputation, then with it, then one pair at a time."""
    sizes = [size for size in (16, 8, 4, 2) if size <= pairs_per_step and pairs_per_step % size == 0]
    return [(s, False) for s in sizes] + [(s, True) for s in sizes] + [(1, False), (1, True)]


def fit_to_card(config: RunConfig, card: Card, keep: frozenset[str] | set[str] = frozenset()) -> Plan:
    """The fastest plan for ``config`` that fits ``card`` with :data:`HEADROOM` to spare.

    The pairs per optimizer step (``batch_size x gradient_accumulation_steps``) stay as configured;
    fields named in ``keep`` (set by the user) are not changed.

    Raises:
        NothingFitsError: even one pair per micro-batch with checkpointing is over the budget.
    """
    pairs_per_step = config.batch_size * config.gradient_accumulation_steps
    tried = []
    for pairs, checkpointing in _candidates(pairs_per_step):
        changes = {
            "batch_size": pairs,
            "gradient_accumulation_steps": pairs_per_step // pairs,
            "gradient_checkpointing": checkpointing,
            "eval_batch_size": min(config.eval_batch_size, 2 * pairs),
        }
        candidate = config.replace(**{k: v for k, v in changes.items() if k not in keep})
        plan = plan_run(candidate, card)
        if plan.fits:
            return plan
        tried.append(plan)
    smallest = min(tried, key=lambda p: max(p.memory_gib["total"], p.memory_gib["evaluation"]))
    pairs = f"{smallest.batch_size} pair{'s' if smallest.batch_size > 1 else ''}"
    checkpointing = " with gradient checkpointing" if smallest.gradient_checkpointing else ""
    needs = max(smallest.memory_gib["total"], smallest.memory_gib["evaluation"])
    raise NothingFitsError(
        f"nothing fits a {card.name} with {card.memory_gib:g} GiB: even {pairs} per micro-batch"
        f"{checkpointing} needs {needs:.1f} GiB (budget {card.memory_gib * (1 - HEADROOM):.1f} GiB). "
        f"{_what_to_change(config, keep)}"
    )


def _what_to_change(config: RunConfig, keep: frozenset[str] | set[str]) -> str:
    """The settings that would lower the estimate, starting with those the user fixed."""
    hints = [f"lower max_length (now {config.max_length})"]
    if "batch_size" in keep:
        hints.append(f"a smaller batch_size (now {config.batch_size}; raise gradient_accumulation_steps)")
    if "gradient_checkpointing" in keep and not config.gradient_checkpointing:
        hints.append("turn gradient_checkpointing on")
    if not config.lora_r:
        hints.append("use LoRA (lora_r)")
    return "Try: " + "; ".join(hints) + "; or a smaller model."


def card_from_memory(gpu_memory_gib: float, like: str = "T4") -> Card:
    """A card with ``gpu_memory_gib`` usable memory and otherwise like the named one."""
    return dataclasses.replace(CARDS[like], memory_gib=gpu_memory_gib)
