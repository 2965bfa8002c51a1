"""lora_edu.llama: the loader's two worlds, exact 8B accounting, the tiny model."""

import math

import bitsandbytes as bnb
import huggingface_hub
import nbformat
import pytest
import torch
from nbclient import NotebookClient
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from lora_edu import llama
from lora_edu.llama import (
    LLAMA3_8B,
    ModelUnavailableError,
    build_on_meta,
    llama3_8b_config,
    load_model,
)
from lora_edu.lora import count_parameters, inject_lora, lora_layers
from lora_edu.pretrain import (
    DATA_DIR,
    all_sentences,
    generate_corpus,
    tiny_llama3_config,
)
from lora_edu.quant import nf4_storage_bytes

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def tiny():
    return load_model()


# --- the shipped tiny model -----------------------------------------------------------


def test_the_tiny_model_has_llama3_architecture(tiny):
    model, tokenizer = tiny
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.rope_parameters["rope_theta"] == 500000.0
    assert (
        config.hidden_act == "silu"
        and type(model.model.norm).__name__ == "LlamaRMSNorm"
    )
    assert not config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert [n for n, _ in model.model.layers[0].self_attn.named_children()] == TARGETS
    assert (
        tokenizer.bos_token == "<|begin_of_text|>"
        and tokenizer.eos_token == "<|end_of_text|>"
    )
    assert "<|eot_id|>" in tokenizer.get_vocab()
    assert tokenizer("Alice")["input_ids"][0] == tokenizer.bos_token_id


def test_the_checkpoint_is_small_enough_to_ship():
    assert (DATA_DIR / "model.safetensors").stat().st_size < 20 * 2**20
    assert sum(f.stat().st_size for f in DATA_DIR.iterdir()) < 25 * 2**20


def test_the_shipped_model_has_learned_its_corpus(tiny):
    model, tokenizer = tiny
    heldout = (DATA_DIR / "heldout.txt").read_text().splitlines()
    torch.manual_seed(0)
    untrained = type(model)(model.config).eval()
    trained_loss, untrained_loss = (
        llama.text_loss(model, tokenizer, heldout),
        llama.text_loss(untrained, tokenizer, heldout),
    )
    assert untrained_loss > 5.0 and trained_loss < 1.0, (trained_loss, untrained_loss)
    assert (
        llama.complete(model, tokenizer, "Alice lives in")
        == " Oslo and writes about chess."
    )


def test_the_shipped_text_is_the_generated_corpus_and_heldout_is_never_trained_on():
    corpus = (DATA_DIR / "corpus.txt").read_text().splitlines()
    heldout = (DATA_DIR / "heldout.txt").read_text().splitlines()
    assert (corpus, heldout) == generate_corpus(7000, seed=0)
    assert len(heldout) == round(0.1 * len(all_sentences())) and not set(heldout) & set(
        corpus
    )
    # Each held-out sentence states facts that the corpus states in other words.
    for sentence in heldout:
        assert any(sentence.split()[0] in line for line in corpus)


def test_text_loss_checks_its_input(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="texts must be a non-empty list of strings"):
        llama.text_loss(model, tokenizer, "one string")
    with pytest.raises(ValueError, match="texts must be a non-empty list of strings"):
        llama.text_loss(model, tokenizer, [])


def test_text_loss_matches_transformers_loss_for_one_sentence(tiny):
    model, tokenizer = tiny
    text = "Bob lives in Paris and writes about trains."
    ids = torch.tensor([tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]])
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss.item()
    assert llama.text_loss(model, tokenizer, [text]) == pytest.approx(
        expected, rel=1e-5
    )
    # Batching pads shorter texts; the padding must not change the mean.
    pair = [text, "Sam is a nurse who loves chess."]
    separate = [llama.text_loss(model, tokenizer, [t]) for t in pair]
    counts = [
        len(tokenizer(t)["input_ids"]) for t in pair
    ]  # BOS…EOS gives as many predictions as tokens before EOS
    assert llama.text_loss(model, tokenizer, pair) == pytest.approx(
        sum(s * c for s, c in zip(separate, counts)) / sum(counts)
    )


# --- one loader, two worlds -----------------------------------------------------------


def test_the_hub_model_without_a_gpu_stops_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelUnavailableError) as error:
        load_model(LLAMA3_8B)
    message = str(error.value)
    assert "needs a CUDA GPU" in message and "this machine has none" in message
    assert "MODEL_NAME = 'tiny-llama3'" in message
    assert error.value._render_traceback_() == [f"ModelUnavailableError: {message}"]
    # The memory it names is the weights' row of the memory table, not a typed guess.
    model = inject_lora(build_on_meta(llama3_8b_config()), TARGETS, r=4, lora_alpha=4)
    rows = {row["method"]: row for row in llama.memory_table(model)}
    adapter = 4 * count_parameters(model)[0]
    for four_bit, method, kind in [
        (False, "LoRA, bf16 base", "bfloat16"),
        (True, "QLoRA, 4-bit NF4 base", "4-bit"),
    ]:
        with pytest.raises(ModelUnavailableError) as error:
            load_model(LLAMA3_8B, load_in_4bit=four_bit)
        gb = (rows[method]["weights"] - adapter) / 1e9
        assert f"more than {gb:.2f} GB of memory for its {kind} weights" in str(
            error.value
        )
    with pytest.raises(ModelUnavailableError) as error:
        load_model("someone/another-model")
    assert "it needs a CUDA GPU, and this machine has none" in str(error.value)


def test_4bit_without_bitsandbytes_says_what_to_install(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(llama.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match="pip install bitsandbytes"):
        load_model(LLAMA3_8B, load_in_4bit=True)


def test_no_access_to_the_hub_stops_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # As if the hub cannot be reached: no network, no token, no cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError) as error:
        load_model(LLAMA3_8B)
    message = str(error.value)
    assert "Hugging Face Hub refused or could not be reached" in message
    assert (
        "huggingface-cli login" in message and "MODEL_NAME = 'tiny-llama3'" in message
    )


def test_bad_loader_arguments():
    with pytest.raises(TypeError, match="name must be a model name"):
        load_model(None)


def test_the_chapter_stops_cleanly_when_the_hub_model_is_chosen_without_a_gpu():
    notebook = nbformat.read("notebooks/05_lora_on_llama3.ipynb", as_version=4)
    setting = next(
        i for i, c in enumerate(notebook.cells) if c.source.startswith("MODEL_NAME = ")
    )
    loading = next(
        i for i, c in enumerate(notebook.cells) if "load_model(MODEL_NAME" in c.source
    )
    notebook.cells[setting].source = notebook.cells[setting].source.replace(
        '"tiny-llama3"', f'"{LLAMA3_8B}"', 1
    )
    notebook.cells = notebook.cells[setting : loading + 1]
    notebook.cells.insert(
        0,
        nbformat.v4.new_code_cell(
            "import torch\ntorch.cuda.is_available = lambda: False"
        ),
    )
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", allow_errors=True
    )
    client.execute()
    error = next(o for o in notebook.cells[-1].outputs if o.output_type == "error")
    assert error.ename == "ModelUnavailableError"
    assert len(error.traceback) == 1 and "needs a CUDA GPU" in error.traceback[0], (
        error.traceback
    )
    assert "MODEL_NAME = 'tiny-llama3'" in error.traceback[0]


# --- exact accounting for Llama-3-8B --------------------------------------------------


def test_llama3_8b_on_meta_has_its_published_size():
    model = build_on_meta(llama3_8b_config())
    assert count_parameters(model) == (8_030_261_248, 8_030_261_248)
    assert all(p.is_meta for p in model.parameters())


def test_the_lora_count_for_llama3_8b_is_recomputed_from_layer_shapes():
    model = inject_lora(build_on_meta(llama3_8b_config()), TARGETS, r=4, lora_alpha=4)
    layers = lora_layers(model)
    shapes = {
        name.rsplit(".", 1)[-1]: (layer.in_features, layer.out_features)
        for name, layer in layers.items()
    }
    assert shapes == {
        "q_proj": (4096, 4096),
        "k_proj": (4096, 1024),
        "v_proj": (4096, 1024),
        "o_proj": (4096, 4096),
    }
    from_shapes = sum(
        4 * (layer.in_features + layer.out_features) for layer in layers.values()
    )
    assert len(layers) == 32 * 4
    assert count_parameters(model)[0] == from_shapes == 3_407_872


def nf4_layer_bytes(out_features: int, in_features: int) -> int:
    """What bitsandbytes stores for one NF4 layer with double quantization, by hand."""
    n = out_features * in_features
    blocks = n // 64
    # packed codes, 8-bit scales, a float32 scale per 256 of them, their float32 mean,
    # and float32 copies of the 16-level and 256-level lookup tables
    return n // 2 + blocks + 4 * math.ceil(blocks / 256) + 4 + 4 * (16 + 256)


def test_memory_table_for_llama3_8b():
    model = inject_lora(build_on_meta(llama3_8b_config()), TARGETS, r=4, lora_alpha=4)
    rows = {row["method"]: row for row in llama.memory_table(model)}
    base, lora = 8_030_261_248, 3_407_872
    assert rows["full fine-tuning"]["total"] == 16 * base
    assert rows["LoRA, bf16 base"] == {
        "method": "LoRA, bf16 base",
        "weights": 2 * base + 4 * lora,
        "gradients": 4 * lora,
        "optimizer": 8 * lora,
        "total": 2 * base + 16 * lora,
    }
    embeddings = 2 * 128256 * 4096
    shapes = 2 * [(4096, 4096)] + 2 * [(1024, 4096)] + 2 * [(14336, 4096)]
    shapes += [(4096, 14336)]
    quantized = 32 * sum(o * i for o, i in shapes)
    norms = base - embeddings - quantized
    assert norms == 32 * 2 * 4096 + 4096
    nf4 = 32 * sum(nf4_layer_bytes(o, i) for o, i in shapes)
    qlora = rows["QLoRA, 4-bit NF4 base"]
    assert qlora["weights"] == nf4 + 2 * (embeddings + norms) + 4 * lora
    assert (qlora["gradients"], qlora["optimizer"]) == (4 * lora, 8 * lora)
    # prepare_model_for_kbit_training: embeddings, head and norms in float32.
    prepared = rows["QLoRA after prepare_model_for_kbit_training"]
    assert prepared["weights"] == nf4 + 4 * (embeddings + norms) + 4 * lora
    assert embeddings + norms == 1_050_939_392
    assert round(8 * llama.nf4_bytes(model) / quantized, 3) == 4.127
    with pytest.raises(ValueError, match="no LoRA parameters"):
        llama.memory_table(build_on_meta(llama3_8b_config()))


def test_memory_table_counts_peft_models_as_ours():
    config = llama3_8b_config()
    ours = inject_lora(build_on_meta(config), TARGETS, r=4, lora_alpha=4)
    peft = get_peft_model(
        build_on_meta(config), LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS)
    )
    assert llama.memory_table(peft) == llama.memory_table(ours)
    # DoRA adds one trainable magnitude per output row of each adapted layer.
    dora = get_peft_model(
        build_on_meta(config),
        LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, use_dora=True),
    )
    magnitudes = 32 * (4096 + 1024 + 1024 + 4096)
    extra = {
        row["method"]: row["total"] - plain["total"]
        for row, plain in zip(llama.memory_table(dora), llama.memory_table(ours))
    }
    assert extra["full fine-tuning"] == 0
    assert set(list(extra.values())[1:]) == {16 * magnitudes}


def load_tiny_in_4bit():
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return AutoModelForCausalLM.from_pretrained(
        DATA_DIR, quantization_config=config, dtype=torch.bfloat16, device_map="cpu"
    )


def stored_bytes(model) -> int:
    """Every byte a bitsandbytes model holds: parameters and each quant state."""
    total = sum(p.nbytes for p in model.parameters())
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            parts = [state.absmax, state.offset, state.code]
            parts += [state.state2.absmax, state.state2.code]
            total += sum(t.nbytes for t in parts)
    return total


def test_the_nf4_bytes_are_what_bitsandbytes_stores_for_the_tiny_model(tiny):
    model = load_tiny_in_4bit()
    layers = {
        n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)
    }
    assert len(layers) == len(llama.quantized_weights(tiny[0])) == 4 * 7
    for layer in layers.values():
        state = layer.weight.quant_state
        assert state.nested and (state.blocksize, state.state2.blocksize) == (64, 256)
        data = [layer.weight, state.absmax, state.state2.absmax, state.offset]
        stored = sum(t.nbytes for t in data)
        assert stored == nf4_storage_bytes(state.shape.numel(), 64, double_quant=True)
        tables = state.code.nbytes + state.state2.code.nbytes
        assert tables == llama.BNB_TABLE_BYTES == 1088
    # Embeddings, head and norms stay in bfloat16, as the table has them.
    others = [p for p in model.parameters() if not isinstance(p, bnb.nn.Params4bit)]
    assert {p.dtype for p in others} == {torch.bfloat16}
    assert stored_bytes(model) == llama.weight_bytes(tiny[0], load_in_4bit=True)


def test_the_qlora_rows_are_what_peft_holds_for_the_tiny_model():
    model, _ = load_model()
    rows = {
        row["method"]: row
        for row in llama.memory_table(inject_lora(model, TARGETS, r=4, lora_alpha=4))
    }
    lora_config = LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS)
    qlora = get_peft_model(load_tiny_in_4bit(), lora_config)
    adapters = [p for p in qlora.parameters() if p.requires_grad]
    assert {p.dtype for p in adapters} == {torch.float32}  # PEFT's adapter dtype
    assert stored_bytes(qlora) == rows["QLoRA, 4-bit NF4 base"]["weights"]
    prepared = get_peft_model(
        prepare_model_for_kbit_training(load_tiny_in_4bit()), lora_config
    )
    cast = {n for n, p in prepared.named_parameters() if p.dtype == torch.float32}
    assert any("embed_tokens" in n for n in cast) and any("lm_head" in n for n in cast)
    method = "QLoRA after prepare_model_for_kbit_training"
    assert stored_bytes(prepared) == rows[method]["weights"]


def test_tiny_config_scales_llama3_down():
    config, big = tiny_llama3_config(vocab_size=548), llama3_8b_config()
    assert config.num_key_value_heads < config.num_attention_heads
    assert (
        config.rope_parameters["rope_theta"]
        == big.rope_parameters["rope_theta"]
        == 500000.0
    )
    assert config.hidden_act == big.hidden_act == "silu"
    assert config.tie_word_embeddings is big.tie_word_embeddings is False
