"""lora_edu.pretrain: the script that builds the course's tiny Llama-3 model."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_edu import pretrain


def test_a_short_pretraining_run_saves_a_loadable_model(tmp_path, capsys):
    pretrain.main(["--steps", "3", "--output", str(tmp_path / "tiny")])
    saved = {p.name for p in (tmp_path / "tiny").iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "corpus.txt",
        "heldout.txt",
        "pretraining_log.json",
    } <= saved
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in saved), (
        "weights must be safetensors only"
    )
    log = json.loads((tmp_path / "tiny" / "pretraining_log.json").read_text())
    assert (
        log["steps"] == 3
        and len(log["losses"]) == 3
        and log["losses"][-1] < log["losses"][0]
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    assert model.config.vocab_size == len(tokenizer)
    assert "pretrained 3 steps" in capsys.readouterr().out


def test_the_run_is_deterministic(tmp_path):
    first = pretrain.pretrain(tmp_path / "a", steps=2)
    second = pretrain.pretrain(tmp_path / "b", steps=2)
    assert first == second
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()


def test_an_existing_model_is_never_overwritten_without_being_asked(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"someone's model")
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main(["--steps", "1", "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "already holds a model; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "model.safetensors").read_bytes() == b"someone's model"


def test_steps_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pretrain.main(["--steps", "0", "--output", str(tmp_path)])
    assert "--steps must be a positive integer, got 0" in capsys.readouterr().err


def test_pack_blocks_rejects_text_shorter_than_a_block():
    tokenizer = pretrain.train_tokenizer(["Alice lives in Oslo."] * 20, vocab_size=300)
    blocks = pretrain.pack_blocks(
        tokenizer, ["Alice lives in Oslo."] * 20, block_size=8
    )
    assert blocks.shape[1] == 8 and blocks.dtype.is_floating_point is False
    with pytest.raises(ValueError, match="fewer than one block of block_size=64"):
        pretrain.pack_blocks(tokenizer, ["Alice lives in Oslo."], block_size=64)


def test_every_sentence_is_about_a_known_person():
    sentences = pretrain.all_sentences()
    # Per person: five plain templates, one per
    # friend, and one per day, condition or number.
    per_person = 5 + 19 + 7 + len(pretrain.CONDITIONS) + 7 * 19 + 49
    assert len(sentences) == len(set(sentences)) == 20 * per_person
    names = {p[0] for p in pretrain.PEOPLE}
    assert all(names & set(s.replace(",", "").rstrip(".").split()) for s in sentences)


def test_weather_reports_are_a_new_domain_in_known_words():
    reports = pretrain.weather_reports(200, seed=0)
    corpus, _ = pretrain.generate_corpus(7000, seed=0)
    assert (
        reports
        == pretrain.weather_reports(200, seed=0)
        != pretrain.weather_reports(200, seed=1)
    )
    assert not set(reports) & set(corpus), (
        "the model must never have read a weather report"
    )
    assert not any("degrees" in line for line in corpus)
    tokenizer = pretrain.train_tokenizer(
        corpus + pretrain.weather_reports(3000, seed=2)
    )
    assert tokenizer.tokenize(" Wednesday degrees") == ["ĠWednesday", "Ġdegrees"], (
        "the tokenizer knows the domain's words"
    )
