"""lora_edu.llama: the loader's two worlds, exact accounting for Llama-3-8B, and the shipped tiny model."""

import huggingface_hub
import nbformat
import pytest
import torch
from nbclient import NotebookClient

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

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def tiny():
    return load_model()


# --- the shipped tiny model -------------------------------------------------------------------


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


# --- one loader, two worlds --------------------------------------------------------------------


def test_the_hub_model_without_a_gpu_stops_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelUnavailableError) as error:
        load_model(LLAMA3_8B)
    message = str(error.value)
    assert "needs a CUDA GPU" in message and "this machine has none" in message
    assert "MODEL_NAME = 'tiny-llama3'" in message
    assert error.value._render_traceback_() == [f"ModelUnavailableError: {message}"]


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


# --- exact accounting for Llama-3-8B -----------------------------------------------------------


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
    quantized = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    norms = base - embeddings - quantized
    assert norms == 32 * 2 * 4096 + 4096
    expected_weights = (
        quantized * llama.NF4_BITS / 8 + 2 * (embeddings + norms) + 4 * lora
    )
    assert rows["QLoRA, 4-bit NF4 base"]["weights"] == pytest.approx(expected_weights)
    with pytest.raises(ValueError, match="no LoRA parameters"):
        llama.memory_table(build_on_meta(llama3_8b_config()))


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
