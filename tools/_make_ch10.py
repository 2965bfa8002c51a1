"""Write notebooks/10_lora_cost.ipynb (a one-off generator, not part of the course)."""

import ast
import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
MODULE = (ROOT / "lora_edu" / "cost.py").read_text()


def saved(*names):
    tree = ast.parse(MODULE)
    lines = MODULE.splitlines()
    parts = []
    for node in tree.body:
        if getattr(node, "name", None) in names:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            parts.append("\n".join(lines[start - 1 : node.end_lineno]))
    return "# Saved in lora_edu/cost.py\n" + "\n\n\n".join(parts)


cells = []


def md(text):
    cells.append(nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip()))


def code(text, tags=None):
    cell = nbformat.v4.new_code_cell(textwrap.dedent(text).strip())
    if tags:
        cell.metadata["tags"] = tags
    cells.append(cell)


code("# The Colab setup cell: tools/colab_setup.py writes it.")
md(r"""
# What LoRA costs and what it saves

"I train a tenth of a percent of the parameters, so why is my run only a little faster, and why does it still run out of memory?" This chapter answers that question with measurements you re-run on your own machine, each set beside a formula that predicts it.

The LoRA paper, [Hu et al. (2021)](https://arxiv.org/abs/2106.09685), makes its practical case in costs. For GPT-3 175B it reports 10,000× fewer trainable parameters, training memory cut from 1.2 TB to 350 GB, a checkpoint of 35 MB instead of 350 GB, 25% faster training (32.5 → 43.1 tokens/s per V100), and no added latency once the update is merged. We take each claim apart:

1. **Memory**: where the bytes of one training step go (weights, gradients, optimizer states, activations), counted from real tensors, beside Chapter 5's `memory_table`.
2. **The paper's 1.2 TB and 350 GB**, rebuilt from the formula.
3. **Time**: a FLOP count that predicts LoRA's step at about two thirds of a full step, not a ten-thousandth.
4. **How cost grows** with rank, sequence length, batch size and width.
5. **Gradient checkpointing**: memory for time.
6. **Checkpoint files**, and 7. **inference speed**, merged and unmerged.

Timings depend on the machine, so the chapter quotes *ratios* of times measured side by side in one run, and keeps the volatile numbers out of the prose.
""")

code(r"""
import warnings

# tqdm's note that it cannot draw widgets here is not the lesson.
warnings.filterwarnings("ignore", message="IProgress not found")
warnings.filterwarnings("ignore", category=FutureWarning)

import copy
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig

from lora_edu import cost
from lora_edu.llama import build_on_meta, llama3_8b_config, load_model, memory_table
from lora_edu.lora import merge_lora, save_adapter

# One thread: the stored grid was measured so, and on a busy machine two threads that
# wait for each other can be many times slower than one.
torch.set_num_threads(1)
PAPER = {  # the LoRA paper's cost claims for GPT-3 175B (arXiv 2106.09685, v2)
    "trainable parameters": "10,000× fewer",
    "GPU memory in training": "3× less",
    "training throughput": "25% faster",
    "training memory, full fine-tuning": "1.2 TB",
    "training memory, LoRA": "350 GB",
    "checkpoint, full model": "350 GB",
    "checkpoint, LoRA (r = 4 on Wq, Wv)": "35 MB",
    "throughput per V100, full fine-tuning": "32.5 tokens/s",
    "throughput per V100, LoRA": "43.1 tokens/s",
}
for claim, value in PAPER.items():
    print(f"{claim:38} {value}")
""")

md(r"""
## 1. The memory ledger of one training step

A training step holds four kinds of tensors:

- the **weights**;
- the **gradients**, one per trainable weight;
- the **optimizer states**: AdamW keeps two moments per trainable weight, and mixed precision adds a float32 *master* copy of each 16-bit weight;
- the **activations**: tensors the forward pass saves because the backward pass needs them.

The first three we read off the model and `optimizer.state`. The fourth is invisible in the model: autograd keeps it inside the graph. PyTorch lets us watch it. `torch.autograd.graph.saved_tensors_hooks` calls a function on every tensor autograd saves for backward; we record each, and count every storage once (a view shares its storage), leaving out the weights themselves, which are already in the first line of the ledger.
""")

code(saved("storage_key", "unique_bytes", "SavedActivations"))

md(r"""
The ledger adds the four up after one step, before the gradients are cleared. The optimizer's line counts every tensor in `optimizer.state` and any parameter the optimizer steps that the model does not own: the float32 master copies.
""")

code(saved("quant_state_tensors", "ledger"))

md(r"""
Full fine-tuning in Chapter 5's table means mixed precision: bf16 weights and gradients, and AdamW on float32 master copies. `MixedPrecisionAdamW` does exactly that (it casts each bf16 gradient into its master, steps, and copies the result back). LoRA keeps the bf16 base frozen and trains float32 $A$ and $B$ (rank 8 on $W_q, W_k, W_v, W_o$). QLoRA stores the base in bitsandbytes' NF4 with double quantization, as Chapter 9 built it, with PEFT's LoRA on top. `measured_step` runs one step of each on the same batch and returns its ledger.

We start with the course's tiny Llama 3, in bf16:
""")

code(r"""
def ledgers(base: nn.Module, ids: torch.Tensor, r: int = 8) -> dict:
    # One step of each method on copies of base (bf16), and memory_table's rows.
    full = copy.deepcopy(base).to(torch.bfloat16).train().requires_grad_(True)
    lora = cost.add_lora(copy.deepcopy(base).to(torch.bfloat16).train(), r)
    qlora = cost.qlora_shaped(copy.deepcopy(base), r)
    trainable = [p for p in lora.parameters() if p.requires_grad]
    q_trainable = [p for p in qlora.parameters() if p.requires_grad]
    measured = {
        "full": cost.measured_step(
            full, cost.MixedPrecisionAdamW(full.parameters()), ids
        ),
        "LoRA": cost.measured_step(lora, torch.optim.AdamW(trainable), ids),
        "QLoRA": cost.measured_step(qlora, torch.optim.AdamW(q_trainable), ids),
    }
    return measured, memory_table(lora)[:3], lora.config
""")

code(r"""
def show(measured: dict, table: list, config, batch: int, seq: int) -> None:
    print(f"{'':6}{'':11}{'measured':>14}{'formula':>14}{'ratio':>8}")
    worst = 0.0
    for (method, row), formula in zip(measured.items(), table):
        for key in ("weights", "gradients", "optimizer"):
            ratio = row[key] / formula[key]
            print(f"{method:6}{key:11}{row[key]:14,}{formula[key]:14,}{ratio:8.4f}")
            assert abs(ratio - 1) < 0.01, "not within 1% of memory_table"
            worst = max(worst, abs(ratio - 1))
        e, r = (2, 0) if method == "full" else (2, 8)
        predicted = cost.activation_bytes_formula(config, batch, seq, e, lora_r=r)
        ratio = row["activations"] / predicted
        line = f"{row['activations']:14,}{predicted:14,}{ratio:8.4f}"
        print(f"{'':6}{'activations':11}{line}")
    return worst


tiny, tokenizer = load_model()
torch.manual_seed(0)
ids = torch.randint(0, tiny.config.vocab_size, (4, 64))
tiny_ledger = ledgers(tiny, ids)
worst = show(*tiny_ledger, batch=4, seq=64)
print(f"weights, gradients, optimizer: at most {worst:.2%} off memory_table (< 1%)")
""")

md(r"""
Weights, gradients and optimizer states agree with `memory_table` to within 1% for all three methods (the cell asserts it). The small excess in the optimizer line is AdamW's step counter: one float32 number per trained tensor, which the table leaves out.

Now a wider model with the same shape rules, random weights, width 1024 and two layers. Nothing is downloaded: `llama_shaped` builds it from a configuration.
""")

code(r"""
wide = cost.llama_shaped(1024, 2)
print(f"width 1024, 2 layers: {sum(p.numel() for p in wide.parameters()):,} parameters")
torch.manual_seed(0)
wide_ids = torch.randint(0, wide.config.vocab_size, (2, 128))
wide_ledger = ledgers(wide, wide_ids)
worst = show(*wide_ledger, batch=2, seq=128)
print(f"weights, gradients, optimizer: at most {worst:.2%} off memory_table (< 1%)")
""")

md(r"""
### Activations, by a formula

The activation line has no entry in `memory_table`: it depends on the batch $b$ and the sequence length $s$, not on the weights alone. The hooks show what one Llama layer saves. Writing $d$ for the width, $d_\text{ff}$ for the feed-forward width, $d_{kv}$ for the key/value width, $h$ for the heads and $e$ for the bytes of the compute dtype, per token and layer:

- each **RMSNorm** keeps its float32 input ($4d$ bytes) and $1/\text{rms}$ (4 bytes); when its weight trains, it also keeps the normalised input and output ($2ed$);
- **attention** (PyTorch's fused scaled-dot-product kernel) keeps $q$, $k$, $v$ after the rotary embedding and its output, $e(2d + 2d_{kv})$, and a float32 log-sum-exp per head, $4h$; no $s\times s$ matrix;
- the **SwiGLU feed-forward** keeps the gate and up outputs and SiLU(gate), $3ed_\text{ff}$, plus their product when the down projection trains: $4ed_\text{ff}$ in all;
- each **frozen matmul keeps nothing**: the gradient of its input needs only the weight. A **LoRA adapter** keeps its input in float32 ($4d$; one copy per adapter when the base is bf16, because each adapter casts it) and its $r$-wide $Ax$ ($4r$).

Outside the layers come the final norm, the rotary tables, and the loss's float32 log-softmax over the vocabulary, $4V$ per token. The function adds these up:
""")

code(saved("activation_bytes_formula"))

md(r"""
The ratios in the two ledgers above compare it with the hooks' count. The formula matches the measured activations to a few bytes in millions, for full fine-tuning and LoRA. The QLoRA rows use the LoRA formula and match it too: bitsandbytes' frozen 4-bit matmul keeps no activation either.

Three things in it answer the learner's question.

- **LoRA does not shrink activations much.** A frozen layer still runs its forward pass and still passes gradients back, so the norms, attention and most of the feed-forward keep what they kept. Only the inputs of frozen matmuls are dropped. With a bf16 base and float32 adapters, the four adapter inputs cast to float32 cost almost as much as was saved:
""")

code(r"""
for name, (measured, _, _) in {"tiny": tiny_ledger, "width 1024": wide_ledger}.items():
    share = measured["LoRA"]["activations"] / measured["full"]["activations"]
    print(f"{name:11} LoRA's activations are {share:.2f} of full fine-tuning's")
config_8b = llama3_8b_config()
for r in (0, 16):
    per_token = cost.activation_bytes_formula(config_8b, 1, 4096, 2, lora_r=r) / 4096
    label = "full fine-tuning" if not r else f"LoRA r = {r}"
    print(f"Llama 3 8B, {label:16}: {per_token / 2**20:.2f} MiB per token of context,"
          f" {8 * 4096 * per_token / 2**30:.0f} GiB for 8 sequences of 4096")
""")

md(r"""
- **Activations grow with $b\cdot s$.** At the 8B shape the formula gives the size per token printed above: a batch of eight 4096-token sequences needs hundreds of gigabytes for activations alone, more than the weights, whatever the method. This is why LoRA runs still run out of memory, and why gradient checkpointing (Section 5) exists.
- **The vocabulary's log-softmax** is a large term for small models: the tiny model's vocabulary is several times its width.

**On a GPU.** The same ledger ran once on an NVIDIA H200 for the 8B shape (random weights, batch 2 of 512 tokens, LoRA and QLoRA at $r = 16$), with `benchmarks/gpu_cost.py`. Its stored results:
""")

code(r"""
DATA = Path(cost.__file__).parent / "data"
gpu = json.loads((DATA / "cost-gpu" / "gpu_h200.json").read_text())
print(f"{gpu['device']}, torch {gpu['torch']}; {gpu['shape']}")
print(f"batch {gpu['batch']} × {gpu['seq']} tokens, r = {gpu['r']}")
table = dict(zip(["full", "lora", "qlora"], gpu["memory_table"].values()))
formula = gpu["activation_formula"]
print(f"{'':7}{'table (GB)':>11}{'+ act. formula':>15}{'peak allocated':>15}")
for method, run in gpu["runs"].items():
    expected = table[method]["total"] + formula["full" if method == "full" else "lora"]
    peak = run["max_memory_allocated"]
    row = f"{table[method]['total'] / 1e9:11.2f}{expected / 1e9:15.2f}"
    print(f"{method:7}{row}{peak / 1e9:15.2f}")
    share = run["ledger"]["activations"] / formula["full" if method == "full" else "lora"]
    print(f"{'':7}hooks' activations ÷ formula: {share:.4f}")
""")

md(r"""
Full fine-tuning of the 8B shape fitted on the card, with little to spare: `memory_table` plus the activation formula predicts most of the peak, and the hooks' count of activations on the GPU matches the formula as it does on the CPU. The peak is higher than the sum by several gigabytes for every method: the backward pass holds gradients of activations, the logits and their float32 copy, and (for QLoRA) the dequantized weight of the layer being computed, none of which lives from one step to the next.

## 2. The paper's 1.2 TB and 350 GB, rebuilt

The paper does not say which precisions its numbers assume. We can ask which choices give them. Build a Llama-shaped GPT-3 175B on the meta device (96 layers of width 12288, a feed-forward sized to GPT-3's $8d^2$ per layer, GPT-3's vocabulary, tied embeddings): shapes without memory. Then apply `memory_table` with the paper's LoRA setting, $r = 4$ on $W_q$ and $W_v$:
""")

code(r"""
gpt3_config = LlamaConfig(
    hidden_size=12288,
    intermediate_size=32768,  # 3·12288·32768 = 8·12288², as GPT-3's 2·12288·(4·12288)
    num_hidden_layers=96,
    num_attention_heads=96,
    num_key_value_heads=96,
    vocab_size=50257,
    tie_word_embeddings=True,
)
gpt3 = build_on_meta(gpt3_config)
cost.add_lora(gpt3, 4, targets=["q_proj", "v_proj"])
params = sum(p.numel() for n, p in gpt3.named_parameters() if "lora_" not in n)
adapter = sum(p.numel() for n, p in gpt3.named_parameters() if "lora_" in n)
print(f"{params / 1e9:.1f}B parameters (the paper: 175,255.8M); adapter {adapter:,}")
for row in memory_table(gpt3)[:2]:
    print(f"{row['method']:18} {row['total'] / 1e12:.2f} TB")
""")

md(r"""
The LoRA row lands on the paper's 350 GB: it is the frozen base in 16 bits, and the adapter's gradient and optimizer state are a rounding error. The full fine-tuning row does not land on 1.2 TB: with mixed-precision AdamW at 16 bytes per parameter it is more than twice that. What bytes per parameter would 1.2 TB take?
""")

code(r"""
GPT3_PARAMS = 175_255_800_000  # the paper's Table 4: full fine-tuning trains 175,255.8M
print(f"1.2 TB is {1.2e12 / GPT3_PARAMS:.2f} bytes per parameter")
candidates = {
    "fp32 weights, gradients, Adam (4+4+8)": 16,
    "mixed precision, fp32 master + Adam (2+2+12)": 16,
    "fp16 weights, gradients, fp16 Adam (2+2+4)": 8,
    "fp16 weights, fp16 Adam, no stored gradient (2+4)": 6,
    "LoRA: fp16 frozen weights only (2)": 2,
}
for name, per_param in candidates.items():
    print(f"{name:50} {per_param * GPT3_PARAMS / 1e12:5.2f} TB")
""")

md(r"""
No standard recipe gives 1.2 TB. Sixteen-bit weights, gradients and Adam moments give 1.4 TB; dropping the stored gradient (fused into the update, as some implementations do) gives 1.05 TB. The paper's figure sits between these, and we cannot tell which it measured: it may include activations, sharding buffers or a framework's own choices. What the arithmetic does settle: 350 GB is exactly the 16-bit base, and the "3×" saving is the ratio of those two memory totals, not of trainable parameters.

## 3. Step time, against a FLOP count

Why is LoRA not 10,000× faster? Count the multiply-adds. A weight matrix with $N$ entries applied to one token costs $2N$ FLOPs in the forward pass. The backward pass needs two matrix products of the same size: the gradient of the input ($2N$), which every layer needs to pass the gradient further back, and the gradient of the weight ($2N$), which only a *trained* weight needs. So a full step costs $6N$ per token, and a LoRA step $4N$ plus the adapters' own small matmuls: about **two thirds** of a full step.
""")

code(saved("training_flops"))

md(r"""
PyTorch's `FlopCounterMode` counts the FLOPs of every matmul that actually runs. On the tiny model, for one step of 4 × 64 tokens:
""")

code(r"""
def counted_flops(model: nn.Module, ids: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).logits.float().sum().backward()
    return counter.get_total_flops()


tokens = ids.numel()
for label, model in {"full": copy.deepcopy(tiny).train().requires_grad_(True),
                     "LoRA": cost.add_lora(copy.deepcopy(tiny).train(), 8)}.items():
    weights, trainable = cost.linear_params(model)
    predicted = cost.training_flops(weights, trainable, tokens)
    counted = counted_flops(model, ids)
    print(f"{label:5} formula {predicted / 1e6:7.1f} MFLOP, counted {counted / 1e6:7.1f}"
          f" ({counted / predicted:.4f} of the formula)")
""")

md(r"""
For full fine-tuning the counter agrees with the formula exactly. Both leave out attention's own products, $QK^\top$ and the weighted sum of $V$, which grow with the sequence length: the counter has no FLOP rule for the CPU's fused attention kernel, and the $6N$ rule has no term for it. For LoRA the counter finds slightly less than the formula, because in the first layer the frozen $W_q$, $W_k$, $W_v$ receive an input that needs no gradient (the embedding is frozen), so their input-gradient products are skipped too.

Now the clock. `lora_vs_full` builds a random model at a given width with two layers, and times one AdamW step of full fine-tuning and one of LoRA ($r = 8$ on the attention projections), alternating them and keeping the minimum of several runs, so that a busy machine slows both alike. The output is volatile (a timing), so nbval does not compare it:
""")

code(r"""
live = [cost.lora_vs_full(width, layers=2, batch=2, seq=128, repeats=3)
        for width in (256, 512)]
for row in live:
    print(f"width {row['width']:5}: LoRA ÷ full step time {row['ratio']:.2f}"
          f" (FLOP count {row['flop_ratio']:.2f})")
""", tags=["nbval-ignore-output"])

md(r"""
The larger grid, up to width 2048, comes from a command that stores its results in `lora_edu/data/cost/`, measured the same way:

```bash
python -m lora_edu.cost                 # the CPU grid below; some minutes, one core
python benchmarks/step_time.py          # the LoRA ÷ full table alone, printed
python benchmarks/memory.py             # the ledger against memory_table, printed
```
""")

code(r"""
stored = json.loads((DATA / "cost" / "cpu_grid.json").read_text())
paper_ratio = 32.5 / 43.1  # the paper's time per token, LoRA ÷ full, per V100
machine = stored["machine"]
print(f"stored: {machine['threads']} threads, torch {machine['torch']}")
print(f"{'width':>6}{'measured':>10}{'FLOP count':>12}{'2/3':>7}{'paper':>7}")
for row in stored["ratios"]:
    print(f"{row['width']:6}{row['ratio']:10.2f}{row['flop_ratio']:12.3f}"
          f"{2 / 3:7.3f}{paper_ratio:7.3f}")
print(f"H200, 8B shape: LoRA ÷ full step time "
      f"{1 / gpu['lora_over_full_tokens_per_second']:.2f}")
below = all(row["ratio"] < row["flop_ratio"] for row in stored["ratios"])
print(f"measured ratio below the FLOP count at every stored width: {below}")
""")

md(r"""
Read the stored table with its source in mind: each ratio is one run's minimum of interleaved steps on a shared machine, one sample per width. The FLOP count predicts a ratio just above two thirds at every width. The measured LoRA steps are *cheaper* than that, as the check printed with the table confirms, and so is the H200's. The count leaves out:

- **the optimizer step.** AdamW reads and writes about 16 bytes per trained parameter and does about a dozen element-wise operations on each: nearly nothing for LoRA, a pass over every weight for full fine-tuning. It is memory traffic, not matmuls, so the FLOP count does not see it, yet it makes the full step slower and the ratio smaller. On the H200 our mixed-precision optimizer also steps one parameter at a time, which adds per-parameter overhead to the full step;
- **attention's products** and the **element-wise work** (norms, SiLU, rotary embedding, the loss over the vocabulary): the same for both methods, they pull the ratio towards 1;
- **memory traffic and fixed overheads**: small matmuls do not run at the machine's peak rate, and both methods launch about the same number of operations.

The paper's 32.5 → 43.1 tokens/s is a time ratio of 0.754, *above* two thirds: on its setting (GPT-3 spread over many V100s, where communication is part of every step) the shared costs weigh more than the optimizer. Either way, a LoRA step saves the weight-gradient matmuls and the optimizer's pass over the base, not the forward and backward passes through it; the 10,000× applies to the parameters trained, not to the work done.

## 4. How cost grows with the work

The stored grid varies one setting at a time around width 256, batch 4, sequence 128, rank 8, LoRA on the attention projections, and records the step time and the activations the hooks count. On log axes a power law $y \propto x^k$ is a line of slope $k$; we fit that slope and put it beside the slope of the formulas (the FLOP count for time, the activation formula for memory) over the same points.
""")

code(r"""
def predicted(knob: str, row: dict, what: str) -> float:
    with torch.device("meta"):
        model = cost.llama_shaped(row["width"], stored["layers"])
        cost.add_lora(model, row["r"])
    if what == "activations":
        return cost.activation_bytes_formula(model.config, row["batch"], row["seq"], 4,
                                             lora_r=row["r"])
    return cost.training_flops(*cost.linear_params(model), row["batch"] * row["seq"])


slopes = {}
for knob, rows in stored["sweeps"].items():
    x = [row[knob] for row in rows]
    for what, key in (("time", "seconds"), ("activations", "activations")):
        fitted = cost.fitted_slope(x, [row[key] for row in rows])
        theory = cost.fitted_slope(x, [predicted(knob, row, what) for row in rows])
        slopes[knob, what] = fitted, theory
""")

code(r"""
print(f"{'':8}{'time: fitted':>14}{'predicted':>11}", end="")
print(f"{'memory: fitted':>16}{'predicted':>11}")
for knob in stored["sweeps"]:
    (tf, tp), (mf, mp) = slopes[knob, "time"], slopes[knob, "activations"]
    print(f"{knob:8}{tf:14.2f}{tp:11.2f}{mf:16.2f}{mp:11.2f}")
""")

code(r"""
fig, axes = plt.subplots(2, 4, figsize=(7, 3.6), sharey="row")
for col, (knob, rows) in enumerate(stored["sweeps"].items()):
    x = [row[knob] for row in rows]
    for line, (what, key, unit) in enumerate(
        [("time", "seconds", "step time, s"), ("activations", "activations", "bytes")]
    ):
        ax = axes[line, col]
        ax.loglog(x, [row[key] for row in rows], "o-", label="measured")
        fitted, theory = slopes[knob, what]
        ax.set_title(f"slope {fitted:.2f} ({theory:.2f})", fontsize=8)
        ax.set_xlabel(knob)
        ax.set_ylabel(unit if col == 0 else "")
plt.tight_layout()
plt.show()
""")

md(r"""
*Figure: step time (top) and saved activations (bottom) of a LoRA step against the rank, the sequence length, the batch size and the width, on log axes, from the stored CPU grid. Each title gives the fitted slope and, in brackets, the slope the formulas predict over the same points.*

The memory slopes follow the formula, since activations are a deterministic count: linear in batch and sequence (the fused attention keeps no $s\times s$ matrix), a little below linear in width (the vocabulary's log-softmax does not grow with it), and flat in $r$. The weights, which this plot leaves out, grow as $d^2$.

The time slopes are measurements, one sample per point on a shared machine, and they scatter around the FLOP count's predictions. The count predicts almost no cost for rank (the adapters' matmuls are a sliver of the work), linear growth in batch and sequence length, and close to $d^2$ growth in width. The fitted width slope comes out well below the count's: at these small widths, element-wise work and per-step overheads that grow only linearly with $d$ are still a large share of a step. The sequence slope comes out above 1, where attention's $s^2$ products, which the count leaves out, begin to show.

These measurements check the memory formula directly, live, at points of a smaller grid:
""")

code(r"""
def saved_bytes(width: int, batch: int, seq: int, r: int) -> int:
    model = cost.add_lora(cost.llama_shaped(width, 2), r)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    with cost.SavedActivations(model) as saved:
        nn.functional.cross_entropy(
            model(input_ids=ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()
        )
    return saved.bytes, cost.activation_bytes_formula(model.config, batch, seq, 4, r)


for point in [(128, 1, 64, 2), (128, 4, 64, 2), (128, 4, 256, 2), (256, 4, 64, 16)]:
    measured, formula = saved_bytes(*point)
    print(f"width, batch, seq, r = {point}: {measured:,} bytes, formula {formula:,}")
""")

md(r"""
## 5. Gradient checkpointing: memory for time

Gradient checkpointing keeps only each layer's input during the forward pass and runs the layer's forward again during the backward pass, when its saved tensors are needed. The expected trade: activations shrink to about one width-sized tensor per layer (plus what lies outside the layers), and the step costs one more forward pass. By the FLOP count that is $(2+2+2)/(2+2) = 1.5$ times a LoRA step and $(2+4+2)/(2+4) \approx 1.33$ times a full step. transformers turns it on with `gradient_checkpointing_enable`:
""")

code(r"""
def checkpointing(width=512, batch=2, seq=256, r=8):
    models = {}
    for flag in (False, True):
        model = cost.add_lora(cost.llama_shaped(width, 2), r)
        if flag:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        models[flag] = model
    ids = torch.randint(0, models[False].config.vocab_size, (batch, seq))
    memory = {}
    for flag, model in models.items():
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable)
        memory[flag] = cost.measured_step(model, optimizer, ids)["activations"]
    steps = {flag: cost.step_closure(model, ids) for flag, model in models.items()}
    return memory, cost.interleaved_times(steps, 3)


memory, times = checkpointing()
print(f"activations: {memory[False]:,} bytes without, {memory[True]:,} with "
      f"({memory[True] / memory[False]:.2f} of them)")
print(f"the FLOP count's step time with ÷ without: LoRA {6 / 4:.2f}, full {8 / 6:.2f}")
""")

code(r"""
print(f"step time with ÷ without checkpointing: {times[True] / times[False]:.2f}"
      f" (the FLOP count's one extra forward: 1.5)")
""", tags=["nbval-ignore-output"])

md(r"""
The activation ratio is a compared output: the hooks see only the layers' inputs kept by the checkpoints, plus the loss's log-softmax and the final norm, which lie outside the checkpointed layers. At this small width the vocabulary term is a large part of what is left, so the saving is smaller than it would be on a real model, where the layers dominate. The time ratio is a timing, so it is not compared; in our runs it came out near the predicted 1.5 (recomputing also re-runs the element-wise work, which the FLOP count does not see).

## 6. Checkpoints: the adapter file against the full model

A LoRA checkpoint holds only $A$ and $B$. We save the tiny model's adapter in PEFT's format with Chapter 4's `save_adapter`, and the whole model with safetensors, and measure the files:
""")

code(r"""
from safetensors.torch import save_file

with tempfile.TemporaryDirectory() as folder:
    adapted = cost.add_lora(copy.deepcopy(tiny), 4, targets=["q_proj", "v_proj"])
    save_adapter(adapted, Path(folder) / "adapter")
    adapter_file = (Path(folder) / "adapter" / "adapter_model.safetensors")
    adapter_file = adapter_file.stat().st_size
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()},
              Path(folder) / "model.safetensors")
    model_file = (Path(folder) / "model.safetensors").stat().st_size
print(f"tiny model, float32: model {model_file:,} bytes, adapter {adapter_file:,} bytes"
      f" (1/{model_file / adapter_file:.0f})")
""")

md(r"""
For the large models the same count is arithmetic: the full checkpoint stores every weight, the adapter $2dr$ values per adapted $d\times d$ matrix per layer (Llama 3's $W_v$ is $1024\times4096$, so $r(d_\text{in}+d_\text{out})$ in general). At the paper's setting for GPT-3, $r = 4$ on $W_q$ and $W_v$, in 16 bits:
""")

code(r"""
def adapter_bytes(model: nn.Module, bytes_per_value: int) -> int:
    return bytes_per_value * sum(p.numel() for n, p in model.named_parameters()
                                 if "lora_" in n)


llama8b = build_on_meta(llama3_8b_config())
cost.add_lora(llama8b, 4, targets=["q_proj", "v_proj"])
base_8b = sum(p.numel() for n, p in llama8b.named_parameters() if "lora_" not in n)
print(f"Llama 3 8B, bf16: model {2 * base_8b / 1e9:.2f} GB, "
      f"adapter {adapter_bytes(llama8b, 2) / 1e6:.2f} MB")
full_gpt3, lora_gpt3 = 2 * GPT3_PARAMS, adapter_bytes(gpt3, 2)
print(f"GPT-3 175B, fp16: model {full_gpt3 / 1e9:.1f} GB, ", end="")
print(f"adapter {lora_gpt3 / 1e6:.1f} MB ({lora_gpt3 / 2**20:.1f} MiB)")
print(f"the adapter is {full_gpt3 / lora_gpt3:,.0f}× smaller")
""")

md(r"""
The arithmetic gives the paper's 350 GB exactly, and its 35 MB approximately: $2\cdot12288\cdot4\cdot2\cdot96$ values of 2 bytes are 37.7 MB, or 36.0 MiB. The paper's figure is a rounded one, and the ratio, printed above, is close to its 10,000×. The adapter file is small, and many adapters share one base model.

## 7. Inference: merged, unmerged, base

Chapter 4 timed one layer merged against unmerged. Here the question is a whole model generating text. Merging folds $\frac{\alpha}{r}BA$ into $W$: the merged model runs exactly the base model's matmuls. Unmerged, every adapted layer runs two more small matmuls per token. The FLOP counter shows it on one forward pass of the tiny model:
""")

code(r"""
def forward_flops(model: nn.Module) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids[:1])
    return counter.get_total_flops()


variants = {"base": tiny.eval()}
for r in (4, 64):
    unmerged = cost.add_lora(copy.deepcopy(tiny), r).eval()
    variants[f"r = {r}, unmerged"] = unmerged
    variants[f"r = {r}, merged"] = merge_lora(copy.deepcopy(unmerged))
base_flops = forward_flops(tiny)
for name, model in variants.items():
    extra = forward_flops(model) / base_flops - 1
    print(f"{name:16} forward FLOPs {extra:+.1%} against the base model")
""")

md(r"""
A merged adapter adds nothing, as the paper says. Unmerged, the extra work grows with $r$; at the tiny model's width a rank of 64 is half the width, an extreme no real setting uses. Tokens per second of greedy generation, timed in turn (volatile, not compared):
""")

code(r"""
prompt = tokenizer("Alice lives in", return_tensors="pt").input_ids


def generate(model):
    # 32 new tokens, greedy; generate runs without gradients.
    return lambda: model.generate(
        prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0
    )


times = cost.interleaved_times({name: generate(m) for name, m in variants.items()}, 3)
for name, seconds in times.items():
    print(f"{name:16} {32 / seconds:7.0f} tokens/s ({times['base'] / seconds:.2f} × base)")
""", tags=["nbval-ignore-output"])

md(r"""
At this size, generation is dominated by per-token overheads (Python, the cache, many small kernels) rather than by matmuls, and on a shared machine these timings swing by tens of percent from run to run: read the printed ratios as one sample each, and the FLOP count above as the comparison that does not depend on the machine. Chapter 4's layer timing measures the same difference at the level of one matrix, where the matmuls dominate.

## Exercises
""")

md(r"""
#### Exercise 10.1: Full fine-tuning of Llama 3 8B

Meta-Llama-3-8B has 8,030,261,248 parameters. How many GB (10⁹ bytes) do its weights, gradients and AdamW states take under mixed precision (bf16 weights and gradients, float32 master weights and two float32 moments), before any activation? Check it with `check_full_finetune_gigabytes(...)`:

```python
from lora_edu.exercises import check_full_finetune_gigabytes

check_full_finetune_gigabytes(params=8_030_261_248, answer=...)
```

<details>
<summary>Solution</summary>

Each parameter costs 2 + 2 bytes in bf16 and 3 × 4 bytes in float32: 16 bytes, so about 128.48 GB. The H200 run above needed that plus activations and backward-pass temporaries: most of the card's memory.

```python
from lora_edu.exercises import check_full_finetune_gigabytes

assert check_full_finetune_gigabytes(params=8_030_261_248, answer=128.48)
```

</details>
""")

md(r"""
#### Exercise 10.2: The FLOP count of a LoRA step

A model has 1,000,000,000 frozen matmul weights, and LoRA adds 4,000,000 trainable weights beside them. By the count of Section 3 (2 FLOPs per weight and token forward, 2 for the input gradient, 2 for the weight gradient of a trained weight), what fraction of a full fine-tuning step's FLOPs does a LoRA step take? Check it with `check_lora_flop_ratio(...)`:

```python
from lora_edu.exercises import check_lora_flop_ratio

check_lora_flop_ratio(params=1_000_000_000, adapter=4_000_000, answer=...)
```

<details>
<summary>Solution</summary>

Full: $6N$ per token. LoRA: every weight, frozen or not, runs forward and passes the gradient back, $4(N + N_a)$, and only the adapter computes its own gradient, $2N_a$. So the ratio is $\bigl(4(N + N_a) + 2N_a\bigr)/(6N) = 0.6707$: two thirds plus a little, however few weights LoRA trains.

```python
from lora_edu.exercises import check_lora_flop_ratio

assert check_lora_flop_ratio(params=1_000_000_000, adapter=4_000_000, answer=0.6707)
```

</details>
""")

md(r"""
#### Exercise 10.3: The paper's 35 MB

The paper's checkpoint figure is for GPT-3 175B (96 layers, width 12288) with LoRA of rank 4 on $W_q$ and $W_v$, stored in 16 bits (2 bytes per value). How many bytes does the adapter take? Check it with `check_adapter_file_bytes(...)`:

```python
from lora_edu.exercises import check_adapter_file_bytes

check_adapter_file_bytes(
    layers=96, width=12288, r=4, matrices=2, bytes_per_value=2, answer=...
)
```

<details>
<summary>Solution</summary>

$A$ and $B$ hold $2dr$ values per matrix: $2\cdot12288\cdot4\cdot2\cdot96 = 18{,}874{,}368$ values, times 2 bytes: 37,748,736 bytes, 37.7 MB or 36.0 MiB. The paper gives 35 MB without its arithmetic.

```python
from lora_edu.exercises import check_adapter_file_bytes

assert check_adapter_file_bytes(
    layers=96, width=12288, r=4, matrices=2, bytes_per_value=2, answer=37_748_736
)
```

</details>
""")

md(r"""
## Summary

- A training step's memory is weights + gradients + optimizer states + activations. The first three follow from the parameter counts and dtypes (`memory_table`, confirmed to within 1% from real tensors); the activations follow from a per-layer formula in $b\cdot s$ that matches the hooks' count.
- LoRA removes the gradients and optimizer states of the base, which for full fine-tuning are most of the memory, but barely touches the activations: long sequences and large batches still need memory.
- The FLOP count puts a LoRA step at about two thirds of a full step: the frozen weights still run forward and pass gradients back. Measured ratios add the optimizer, element-wise work and overheads.
- The paper's 350 GB is GPT-3's 16-bit weights; its 1.2 TB matches no standard precision recipe exactly. The adapter checkpoint is $2dr$ values per matrix and layer.
- Merged, an adapter costs nothing at inference; unmerged, it adds two small matmuls per adapted layer.

*The GPU results* were measured once, on the card their file names, and are read from that file: nothing in this chapter needs a GPU to re-run.
""")

nb = nbformat.v4.new_notebook()
nb.cells = cells
nb.metadata = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
nbformat.write(nb, ROOT / "notebooks" / "10_lora_cost.ipynb")
