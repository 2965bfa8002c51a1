"""Chapter 11's many-adapter layer: unit and property tests, and PEFT equivalence."""

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from torch import nn

from lora_edu import multi_adapter as ma
from lora_edu.llama import load_model
from lora_edu.lora import load_adapter

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def stacked_layer(n=3, r=2, k=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(k, d)
    A = torch.randn(n, r, k, generator=g)
    B = torch.randn(n, d, r, generator=g)
    scaling = torch.rand(n, generator=g) + 0.5
    return ma.MultiLoRALinear(base, A, B, scaling), A, B, scaling


def set_rows(layer, index):
    layer.adapter_index = torch.tensor(index)


def test_each_row_gets_its_own_adapter_and_index_n_gets_the_base():
    layer, A, B, s = stacked_layer()
    x = torch.randn(4, 7, 6)
    set_rows(layer, [2, 0, 3, 1])  # 3 = no adapter
    out = layer(x)
    for row, i in enumerate([2, 0, None, 1]):
        expected = layer.base(x[row])
        if i is not None:
            expected = expected + s[i] * x[row] @ A[i].T @ B[i].T
        torch.testing.assert_close(out[row], expected, rtol=1e-5, atol=1e-5)


def test_a_layer_without_chosen_adapters_refuses_to_guess():
    layer, *_ = stacked_layer()
    with pytest.raises(RuntimeError, match="adapter_rows"):
        layer(torch.randn(2, 6))
    set_rows(layer, [0, 1, 2])
    with pytest.raises(RuntimeError, match="adapter_rows"):
        layer(torch.randn(2, 6))  # three choices for two rows


def test_shapes_that_do_not_fit_the_layer_are_refused():
    base = nn.Linear(6, 5)
    with pytest.raises(ValueError, match="do not fit"):
        ma.MultiLoRALinear(base, torch.zeros(2, 3, 6), torch.zeros(2, 4, 3), [1, 1])


@settings(max_examples=25, deadline=None)
@given(
    st.permutations(list(range(6))), st.lists(st.integers(0, 3), min_size=6, max_size=6)
)
def test_permuting_the_batch_permutes_the_output(order, index):
    layer, *_ = stacked_layer()
    x = torch.randn(6, 3, 6, generator=torch.Generator().manual_seed(1))
    set_rows(layer, index)
    out = layer(x)
    set_rows(layer, [index[i] for i in order])
    torch.testing.assert_close(layer(x[list(order)]), out[list(order)])


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Three random PEFT adapters for the tiny model (r 4, 8, 8): their folders."""
    base, _ = load_model()
    folders = {}
    for i, r in enumerate([4, 8, 8]):
        torch.manual_seed(i)
        config = LoraConfig(
            r=r, lora_alpha=2 * r + i, target_modules=TARGETS, init_lora_weights=False
        )
        peft_model = get_peft_model(copy.deepcopy(base), config)
        folder = tmp_path_factory.mktemp(f"adapter{i}")
        peft_model.save_pretrained(folder)
        folders[f"a{i}"] = folder
    return folders


def test_a_batch_of_one_equals_the_single_adapter_model(adapters):
    base, tokenizer = load_model()
    ids = tokenizer(["Alice lives in Oslo and"], return_tensors="pt").input_ids
    multi = ma.add_adapters(copy.deepcopy(base), adapters)
    for name, folder in adapters.items():
        single = load_adapter(copy.deepcopy(base), folder)
        with torch.no_grad(), ma.adapter_rows(multi, [name]):
            ours = multi(ids).logits
        torch.testing.assert_close(ours, single(ids).logits, rtol=0, atol=1e-5)


def test_mixed_batches_match_peft_in_forward_and_generate(adapters):
    base, tokenizer = load_model()
    peft_model = None
    for name, folder in adapters.items():
        if peft_model is None:
            from peft import PeftModel

            peft_model = PeftModel.from_pretrained(
                copy.deepcopy(base), folder, adapter_name=name
            )
        else:
            peft_model.load_adapter(folder, adapter_name=name)
    multi = ma.add_adapters(copy.deepcopy(base), adapters)
    names = ["a2", None, "a0", "a1", "a0", None]
    prompts = ["On Monday, Oslo", "Alice lives in", "Bob", "The forecast", "Rome", "x"]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    peft_names = [n or "__base__" for n in names]
    with torch.no_grad():
        theirs = peft_model(**batch, adapter_names=peft_names).logits
        with ma.adapter_rows(multi, names):
            ours = multi(**batch).logits
    mask = batch["attention_mask"].bool()
    assert (ours - theirs)[mask].abs().max() < 1e-5
    with torch.no_grad():
        out = peft_model.generate(
            **batch,
            adapter_names=peft_names,
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    width = batch["input_ids"].shape[1]
    expected = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    assert ma.generate_rows(multi, tokenizer, prompts, names, 8) == expected


def test_adapters_of_the_wrong_shape_or_unknown_names_are_refused(adapters, tmp_path):
    base, _ = load_model()
    folder = tmp_path / "bad"
    folder.mkdir()
    source = adapters["a0"]
    config = json.loads((source / "adapter_config.json").read_text())
    config["r"] = 5
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(
        (source / "adapter_model.safetensors").read_bytes()
    )
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match="does not fit"):
        ma.add_adapters(model, {"bad": folder})
    assert not any(isinstance(m, ma.MultiLoRALinear) for m in model.modules())
    multi = ma.add_adapters(model, adapters)
    with pytest.raises(ValueError, match="unknown adapters"):
        ma.adapter_rows(multi, ["a0", "nope"]).__enter__()


def test_moved_people_says_where_each_person_moved():
    lines = ma.moved_people(50, seed=0)
    assert lines == ma.moved_people(50, seed=0)
    for name, city in ma.MOVES.items():
        home = next(p[1] for p in ma.PEOPLE if p[0] == name)
        assert city != home
    for line in lines:
        name = line.split()[0] if not line.startswith(("In ", "The ")) else None
        if name in ma.MOVES:
            assert ma.MOVES[name] in line


def test_lora_share_is_the_flop_ratio():
    assert ma.lora_share(128, 128, 8) == pytest.approx(2 * 8 * 256 / (2 * 128 * 128))
    assert ma.lora_share(4096, 4096, 16) == pytest.approx(16 * 8192 / 4096**2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "-1"], "--seeds must be >= 0"),
        (["--output", "FILE"], "is a file"),
        (["--output", "STORED", "--seeds", "0"], "pass --overwrite"),
    ],
)
def test_the_training_command_refuses_bad_input_in_one_line(
    args, message, tmp_path, capsys
):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "stored" / "weather-seed0").mkdir(parents=True)
    places = {"FILE": tmp_path / "file", "STORED": tmp_path / "stored"}
    with pytest.raises(SystemExit) as exit_:
        ma.main([str(places.get(a, a)) for a in args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and message in err
