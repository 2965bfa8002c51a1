"""LoRA on a Llama-3 model, with exact accounting (Chapter 5).

One loader serves both the shipped tiny model and the real 8B.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from lora_edu.pretrain import DATA_DIR
from lora_edu.quant import DYNAMIC_CODE, NF4_CODE, nf4_storage_bytes

TINY_LLAMA3 = "tiny-llama3"  # the model this course ships, in lora_edu/data/tiny-llama3
LLAMA3_8B = "meta-llama/Meta-Llama-3-8B"
BASE_DTYPE = torch.bfloat16  # the dtype load_model gives the 8B model's weights
# LoRA's A and B on a 16-bit base, in PEFT and inject_lora.
ADAPTER_DTYPE = torch.float32
# bitsandbytes keeps float32 copies of both lookup tables (NF4, 8-bit) in every layer.
BNB_TABLE_BYTES = 4 * (len(NF4_CODE) + len(DYNAMIC_CODE))


class ModelUnavailableError(RuntimeError):
    """A model cannot be loaded on this machine. [Ch. 5]

    The message says what is missing and what to do instead.
    """

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing a
        # traceback: a learner sees only the explanation.
        return [f"{type(self).__name__}: {self}"]


def _unavailable(name: str, missing: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"{name} cannot be loaded here: {missing}\n"
        "To run the chapter on this machine, use the tiny model that ships with the "
        f"course: MODEL_NAME = {TINY_LLAMA3!r}"
    )


def nf4_config(compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """QLoRA's storage: NF4, double quantization, matmuls in compute_dtype. [Ch. 6]"""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def keep_4bit_layers_trainable(model: nn.Module) -> nn.Module:
    """Turn off bitsandbytes' CPU repacking of 4-bit layers (no backward). [Ch. 6]"""
    # bitsandbytes 0.50, on a CPU with AVX512-BF16, repacks a Linear4bit in place the
    # first time it runs in eval mode without gradients: that undoes the double
    # quantization, and every later forward, in training too, runs a bfloat16 kernel
    # with no backward pass.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes' Linear4bit
            module.support_avx512bf16_for_cpu = False
    return model


def load_model(name: str = TINY_LLAMA3, load_in_4bit: bool = False):
    """Load (model, tokenizer): the shipped tiny Llama 3, or a hub model. [Ch. 5]

    A hub name such as Meta-Llama-3-8B needs a GPU.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"name must be a model name such as {TINY_LLAMA3!r} or {LLAMA3_8B!r}, "
            f"got {name!r}"
        )
    if name == TINY_LLAMA3:
        if not load_in_4bit:
            model = AutoModelForCausalLM.from_pretrained(DATA_DIR, dtype=torch.float32)
        elif importlib.util.find_spec("bitsandbytes") is None:
            raise _unavailable(
                name,
                "4-bit loading needs the bitsandbytes package: "
                "pip install bitsandbytes",
            )
        else:
            # bitsandbytes quantizes on a CPU too. The rest stays in bfloat16 as on the
            # 8B path; matmuls run in float32, so only the storage differs from float32.
            model = AutoModelForCausalLM.from_pretrained(
                DATA_DIR,
                dtype=torch.bfloat16,
                device_map="cuda" if torch.cuda.is_available() else "cpu",
                quantization_config=nf4_config(compute_dtype=torch.float32),
            )
            keep_4bit_layers_trainable(model)
        return model.eval(), AutoTokenizer.from_pretrained(DATA_DIR)
    # Check what the real model needs before touching
    # the network, cheapest first, so nothing hangs.
    if not torch.cuda.is_available():
        need = ""
        if name == LLAMA3_8B:
            # What the weights alone take, as the memory table of Chapter 5 computes it.
            gb = weight_bytes(build_on_meta(llama3_8b_config()), load_in_4bit) / 1e9
            kind = "4-bit" if load_in_4bit else "bfloat16"
            need = f" with more than {gb:.2f} GB of memory for its {kind} weights alone"
        raise _unavailable(
            name, f"it needs a CUDA GPU{need}, and this machine has none."
        )
    if load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise _unavailable(
            name,
            "4-bit loading needs the bitsandbytes package: pip install bitsandbytes",
        )
    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise _unavailable(
            name,
            f"the Hugging Face Hub refused or could not be reached ({reason}). "
            "Check that you accepted the model's "
            f"licence at https://huggingface.co/{name}, that you are logged in "
            "(huggingface-cli login, or HF_TOKEN), "
            "and that this machine is online.",
        ) from None
    quantization = nf4_config(compute_dtype=torch.bfloat16) if load_in_4bit else None
    model = AutoModelForCausalLM.from_pretrained(
        name,
        dtype=torch.bfloat16,
        device_map={"": torch.cuda.current_device()},
        quantization_config=quantization,
    )
    return model.eval(), AutoTokenizer.from_pretrained(name)


def llama3_8b_config() -> LlamaConfig:
    """Meta-Llama-3-8B's published configuration. [Ch. 5]

    32 layers of width 4096, 32 query and 8 key/value heads.
    """
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128001,
    )


def build_on_meta(config: LlamaConfig) -> LlamaForCausalLM:
    """A LlamaForCausalLM with every tensor on the meta device. [Ch. 5]

    Shapes without memory.
    """
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def _is_adapter(name: str) -> bool:
    # lora_A, lora_B (ours and PEFT's), and PEFT's lora_magnitude_vector for DoRA.
    return any(part.startswith("lora_") for part in name.split("."))


def quantized_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights bitsandbytes stores in 4 bits: linear layers but the head. [Ch. 5]"""
    head = model.get_output_embeddings()
    return [
        module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and module is not head
        and not _is_adapter(name)
    ]


def nf4_bytes(model: nn.Module) -> int:
    """Bytes of the quantized layers in NF4 with double quantization. [Ch. 5]"""
    return sum(
        nf4_storage_bytes(w.numel(), 64, double_quant=True) + BNB_TABLE_BYTES
        for w in quantized_weights(model)
    )


def weight_bytes(model: nn.Module, load_in_4bit: bool = False) -> int:
    """Bytes of the base weights as load_model loads them: bf16 or 4-bit. [Ch. 5]"""
    count = sum(p.numel() for n, p in model.named_parameters() if not _is_adapter(n))
    if not load_in_4bit:
        return BASE_DTYPE.itemsize * count
    rest = count - sum(w.numel() for w in quantized_weights(model))
    return nf4_bytes(model) + BASE_DTYPE.itemsize * rest


def memory_table(model: nn.Module) -> list[dict]:
    """Bytes of weights, gradients, AdamW states per method, no activations. [Ch. 5]"""
    adapter = sum(p.numel() for n, p in model.named_parameters() if _is_adapter(n))
    if not adapter:
        raise ValueError(
            "the model has no LoRA parameters: inject LoRA first, so that the table "
            "can count them"
        )
    base = sum(p.numel() for n, p in model.named_parameters() if not _is_adapter(n))
    rest = base - sum(w.numel() for w in quantized_weights(model))
    size = ADAPTER_DTYPE.itemsize

    def adapted(method: str, base_bytes: int) -> dict:
        # The frozen base has no gradient or optimizer state; the adapter has both
        # (Adam's two moments), in the adapter's dtype.
        return {
            "method": method,
            "weights": base_bytes + size * adapter,
            "gradients": size * adapter,
            "optimizer": 2 * size * adapter,
        }

    rows = [
        # Mixed-precision AdamW: bf16 weights and gradients, float32 master weights and
        # moments: 16 bytes a parameter.
        {
            "method": "full fine-tuning",
            "weights": BASE_DTYPE.itemsize * base,
            "gradients": BASE_DTYPE.itemsize * base,
            "optimizer": 3 * 4 * base,
        },
        adapted("LoRA, bf16 base", weight_bytes(model)),
        adapted("QLoRA, 4-bit NF4 base", weight_bytes(model, load_in_4bit=True)),
        # peft's prepare_model_for_kbit_training casts every 16-bit parameter that is
        # not 4-bit (embeddings, output head, norms) to float32.
        adapted(
            "QLoRA after prepare_model_for_kbit_training", nf4_bytes(model) + 4 * rest
        ),
    ]
    for row in rows:
        row["total"] = row["weights"] + row["gradients"] + row["optimizer"]
    return rows


def complete(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 12) -> str:
    """The model's greedy continuation of prompt, as text without the prompt. [Ch. 5]"""
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        out = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def text_loss(
    model: nn.Module, tokenizer, texts: list[str], batch_size: int = 64
) -> float:
    """Mean cross-entropy per predicted token of the model over texts. [Ch. 5]

    Each text ends in <|end_of_text|>.
    """
    if isinstance(texts, str) or not texts:
        raise ValueError(f"texts must be a non-empty list of strings, got {texts!r}")
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        rows = [
            tokenizer(t)["input_ids"] + [tokenizer.eos_token_id]
            for t in texts[start : start + batch_size]
        ]
        width = max(map(len, rows))
        ids = torch.tensor(
            [r + [tokenizer.eos_token_id] * (width - len(r)) for r in rows],
            device=model.device,
        )
        mask = torch.tensor(
            [[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device
        )
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += F.cross_entropy(
            logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="sum"
        ).item()
        count += int((targets != -100).sum())
    return total / count
