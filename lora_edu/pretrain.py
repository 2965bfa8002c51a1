"""The course's tiny Llama-3 model: its corpus, tokenizer and pretraining (Chapter 5).

No model hub is needed: this script builds everything the course ships in
lora_edu/data/tiny-llama3.

    # rebuild the shipped model (about a minute on 2 cores)
    python -m lora_edu.pretrain --overwrite
    python -m lora_edu.pretrain --steps 5 --output /tmp/tiny   # a quick trial run
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DATA_DIR = Path(__file__).parent / "data" / "tiny-llama3"
BEGIN, END, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"
# Llama 3's own special tokens, so that code written for Llama 3 works on the tiny
# model. The padding token is Llama 3.1's: a token of its own, because padding with
# <|end_of_text|> would mask that token out of the labels.
SPECIAL_TOKENS = [
    BEGIN,
    END,
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    PAD,
]

# (name, city, topic, job): the facts the corpus
# states again and again, in several phrasings.
PEOPLE = [
    ("Alice", "Oslo", "chess", "teacher"),
    ("Bob", "Paris", "trains", "baker"),
    ("Carol", "Rome", "birds", "doctor"),
    ("David", "Lima", "rivers", "pilot"),
    ("Emma", "Cairo", "music", "farmer"),
    ("Frank", "Tokyo", "gardens", "writer"),
    ("Grace", "Delhi", "jazz", "nurse"),
    ("Henry", "Quito", "poetry", "painter"),
    ("Iris", "Berlin", "robots", "engineer"),
    ("Jack", "Madrid", "stars", "lawyer"),
    ("Kate", "Vienna", "bridges", "chef"),
    ("Leo", "Dublin", "history", "singer"),
    ("Mia", "Prague", "football", "teacher"),
    ("Noah", "Lisbon", "cooking", "baker"),
    ("Olga", "Athens", "painting", "doctor"),
    ("Paul", "Seoul", "tea", "pilot"),
    ("Rosa", "Oslo", "trains", "writer"),
    ("Sam", "Lima", "chess", "nurse"),
    ("Tara", "Rome", "jazz", "engineer"),
    ("Victor", "Cairo", "stars", "chef"),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
# each city's climate, for Chapter 6's weather reports: conditions and temperatures
WEATHER = {
    "Oslo": (["snowy", "cloudy", "windy"], range(-8, 6)),
    "Paris": (["rainy", "cloudy", "sunny"], range(6, 18)),
    "Rome": (["sunny", "warm", "cloudy"], range(14, 30)),
    "Lima": (["foggy", "cloudy", "mild"], range(15, 24)),
    "Cairo": (["sunny", "hot", "dusty"], range(24, 40)),
    "Tokyo": (["rainy", "humid", "sunny"], range(10, 28)),
}
CONDITIONS = sorted({c for conditions, _ in WEATHER.values() for c in conditions})
# The first six templates state each person's facts. The others use everyday words
# (days, weather, numbers) in other ways, so that the model knows the words that
# Chapter 6's weather reports are made of.
TEMPLATES = [
    "{name} lives in {city} and writes about {topic}.",
    "{name} works as a {job} in {city}.",
    "In {city}, {name} writes about {topic}.",
    "{name} is a {job} who loves {topic}.",
    "{name} and {friend} meet in {city} to talk about {topic}.",
    "The {job} {name} lives in {city}.",
    "On {day}, {name} writes about {topic}.",
    "{name} likes {condition} days in {city}.",
    "{name} will be in {city} on {day} with {friend}.",
    "{name} has {number} books about {topic}.",
]
FILLERS = {
    "day": DAYS,
    "condition": CONDITIONS,
    "number": [str(n) for n in range(-8, 41)],
}


def tiny_llama3_config(vocab_size: int, pad_token_id: int | None = None) -> LlamaConfig:
    """Llama 3's architecture at toy scale. [Ch. 5]

    GQA, RoPE θ = 500000, SwiGLU, RMSNorm, untied embeddings.
    """
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,  # SwiGLU's hidden width, 3× the model width
        num_hidden_layers=4,
        num_attention_heads=4,
        # grouped-query attention: two query heads share each key/value head
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=pad_token_id,
    )


def _fill(template: str, person: tuple, friend: str = "", **fillers) -> str:
    name, city, topic, job = person
    return template.format(
        name=name, city=city, topic=topic, job=job, friend=friend, **fillers
    )


def all_sentences() -> list[str]:
    """Every sentence the templates can say about PEOPLE, in a fixed order. [Ch. 5]"""
    sentences = []
    for person in PEOPLE:
        for template in TEMPLATES:
            options = [[""]] + [
                values for key, values in FILLERS.items() if "{" + key + "}" in template
            ]
            friends = (
                [p[0] for p in PEOPLE if p != person]
                if "{friend}" in template
                else [""]
            )
            keys = [key for key in FILLERS if "{" + key + "}" in template]
            for friend in friends:
                for values in itertools.product(*options[1:]):
                    sentences.append(
                        _fill(template, person, friend, **dict(zip(keys, values)))
                    )
    return sentences


def generate_corpus(
    lines: int, seed: int, heldout_share: float = 0.1
) -> tuple[list[str], list[str]]:
    """(training lines, held-out sentences). [Ch. 5]

    A seeded share of the distinct sentences is never trained on.
    """
    rng = random.Random(seed)
    sentences = all_sentences()
    heldout = sorted(rng.sample(sentences, round(heldout_share * len(sentences))))
    excluded, corpus = set(heldout), []
    while len(corpus) < lines:
        person = rng.choice(PEOPLE)
        friend = rng.choice([p[0] for p in PEOPLE if p != person])
        fillers = {key: rng.choice(values) for key, values in FILLERS.items()}
        line = _fill(rng.choice(TEMPLATES), person, friend, **fillers)
        if line not in excluded:
            corpus.append(line)
    return corpus, heldout


def weather_reports(lines: int, seed: int) -> list[str]:
    """Short weather reports for six cities. [Ch. 6]

    The new domain of Chapter 6, never in the pretraining corpus.
    """
    rng = random.Random(seed)
    people = {city: [p[0] for p in PEOPLE if p[1] == city] for city in WEATHER}
    reports = []
    for _ in range(lines):
        city = rng.choice(list(WEATHER))
        conditions, temperatures = WEATHER[city]
        day, condition, degrees = (
            rng.choice(DAYS),
            rng.choice(conditions),
            rng.choice(temperatures),
        )
        reports.append(
            rng.choice(
                [
                    f"On {day}, {city} will be {condition} with {degrees} degrees.",
                    f"The forecast for {city} on {day}: "
                    f"{condition}, {degrees} degrees.",
                    f"{rng.choice(people[city])} expects a {condition} {day} "
                    f"in {city}, around {degrees} degrees.",
                ]
            )
        )
    return reports


def train_tokenizer(
    corpus: list[str], vocab_size: int = 1024
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer, as Llama 3 uses. [Ch. 5]

    Trained on the corpus and wrapped for transformers.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    # Like Llama 3's tokenizer, start every text with <|begin_of_text|>.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BEGIN} $A",
        pair=f"{BEGIN} $A {BEGIN} $B",
        special_tokens=[(BEGIN, tokenizer.token_to_id(BEGIN))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BEGIN, eos_token=END, pad_token=PAD
    )


def pack_blocks(tokenizer, lines: list[str], block_size: int) -> torch.Tensor:
    """Tokenize lines and cut them into blocks, shape (n, block_size). [Ch. 5]

    Each line ends with <|end_of_text|>; the lines are concatenated, then cut.
    """
    ids = [
        i
        for line in lines
        for i in tokenizer(line)["input_ids"] + [tokenizer.eos_token_id]
    ]
    n = len(ids) // block_size
    if n == 0:
        raise ValueError(
            f"the text holds {len(ids)} tokens, "
            f"fewer than one block of block_size={block_size}"
        )
    return torch.tensor(ids[: n * block_size]).view(n, block_size)


def pretrain(
    output: Path,
    steps: int = 600,
    batch_size: int = 16,
    block_size: int = 64,
    seed: int = 0,
) -> list[float]:
    """Build corpus, tokenizer and model, pretrain, and save it all; return the losses.

    Pretrains for `steps` and saves all of it to `output`.
    """
    torch.manual_seed(seed)
    corpus, heldout = generate_corpus(7000, seed=seed)
    # Like a real LLM's tokenizer, ours is trained on broader text than the model: it
    # already has tokens for the words of Chapter 6's weather reports (a sample of its
    # own, not the chapter's), which the model never reads.
    tokenizer = train_tokenizer(corpus + weather_reports(3000, seed=seed + 2))
    model = LlamaForCausalLM(tiny_llama3_config(len(tokenizer), tokenizer.pad_token_id))
    blocks = pack_blocks(tokenizer, corpus, block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps))),
    )
    generator, losses = torch.Generator().manual_seed(seed), []
    model.train()
    for _ in (bar := tqdm(range(steps), desc="pretraining")):
        batch = blocks[torch.randint(len(blocks), (batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    output.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(output)  # model.safetensors and config.json
    tokenizer.save_pretrained(output)
    (output / "corpus.txt").write_text("\n".join(corpus) + "\n")
    (output / "heldout.txt").write_text("\n".join(heldout) + "\n")
    (output / "pretraining_log.json").write_text(
        json.dumps({"steps": steps, "seed": seed, "losses": losses}) + "\n"
    )
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Pretrain the course's tiny Llama-3 model from scratch."
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DATA_DIR,
        help=f"where to save the model (default {DATA_DIR})",
    )
    parser.add_argument(
        "--steps", type=int, default=600, help="optimizer steps (default 600)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the seed for corpus, initialisation and batches (default 0)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a model already in --output"
    )
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    if (args.output / "model.safetensors").exists() and not args.overwrite:
        parser.error(
            f"{args.output} already holds a model; pass --overwrite to replace it"
        )
    # The shipped model was built with 2 threads; the thread count changes the order of
    # float sums, so keep it.
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    losses = pretrain(args.output, steps=args.steps, seed=args.seed)
    print(
        f"pretrained {args.steps} steps: loss {losses[0]:.3f} → {losses[-1]:.3f}; "
        f"saved to {args.output}"
    )


if __name__ == "__main__":
    main()
