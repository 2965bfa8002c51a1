"""LoRA on more than one process: data parallel and sharded training (Chapter 12).

Run under torchrun, this module is the chapter's experiment: the course's LoRA training
with DDP over half-batches, the bytes DDP all-reduces (LoRA and full fine-tuning), and
each rank's share of a model sharded with FSDP2. Rank 0 writes the results as JSON.

    torchrun --nproc_per_node 2 -m lora_edu.distributed --output results.json
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that no one listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_command(arguments: list[str], processes: int = 2) -> list[str]:
    """`python -m torch.distributed.run` on the loopback address and a free port.

    `arguments` follow torchrun's own (e.g. ["-m", "lora_edu.distributed", ...]).
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        *arguments,
    ]


def torchrun_env(**more: str) -> dict:
    """The environment for torchrun: one thread a process, unbuffered output."""
    # torchrun would set OMP_NUM_THREADS=1 itself, and print a warning saying so.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **more}


def torchrun(
    arguments: list[str], processes: int = 2, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run torchrun_command to its end; past `timeout` seconds, kill every rank."""
    process = subprocess.Popen(
        torchrun_command(arguments, processes),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=torchrun_env(),
        start_new_session=True,  # its own process group, so a timeout ends every rank
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise TimeoutError(f"torchrun ran past {timeout} s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def counting_allreduce(counter: dict, bucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook: DDP's own all-reduce, counting its bytes. [Ch. 12]

    bucket.buffer() is one flat tensor of gradients, shape (n,).
    """
    buffer = bucket.buffer()
    counter["bytes"] += buffer.numel() * buffer.element_size()
    counter["buckets"] += 1
    return default_hooks.allreduce_hook(None, bucket)  # the mean over the ranks


def train_steps(
    model: nn.Module,
    blocks: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float = 3e-3,
    counter: dict | None = None,
) -> list[float]:
    """AdamW steps on this rank's slice of each batch; the global losses. [Ch. 12]

    blocks: (n, block_size) token ids. Every rank draws the same batch_size blocks a
    step, and rank k trains on the k-th of world-size equal slices.
    """
    rank, world = (
        (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    )
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} does not split over {world} ranks")
    net = DistributedDataParallel(model) if world > 1 else model
    if counter is not None and world > 1:
        net.register_comm_hook(counter, counting_allreduce)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    draws = torch.Generator().manual_seed(0)  # the same batches on every rank
    losses = []
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (batch_size,), generator=draws)]
        mine = batch.chunk(world)[rank]
        loss = net(input_ids=mine, labels=mine).loss  # the mean over my tokens
        loss.backward()  # under DDP, the gradients are averaged over the ranks here
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    losses = torch.stack(losses)
    if world > 1:  # report the loss of the whole batch: the mean of the ranks' means
        dist.all_reduce(losses)
        losses /= world
    return losses.tolist()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _bytes(tensors) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors)


def rank_share(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """The bytes this rank holds of weights, gradients and optimizer states. [Ch. 12]

    Under FSDP2 each parameter is a DTensor: to_local() is this rank's shard.
    """
    params = list(model.parameters())
    return {
        "frozen weights": _bytes(p for p in params if not p.requires_grad),
        "trainable weights": _bytes(p for p in params if p.requires_grad),
        "gradients": _bytes(p.grad for p in params if p.grad is not None),
        "optimizer states": _bytes(
            value
            for state in optimizer.state.values()
            for key, value in state.items()
            if key != "step"  # AdamW's step counter: a scalar, not sharded
        ),
    }


def zero_bytes_per_device(
    parameters: int,
    devices: int,
    stage: int,
    trainable: int | None = None,
    weight: int = 2,
    gradient: int = 2,
    optimizer: int = 12,
) -> float:
    """Bytes a device holds under ZeRO stage 0-3 (Rajbhandari et al.). [Ch. 12]

    The defaults are ZeRO's mixed-precision Adam: 2 + 2 + 12 bytes a parameter. With
    `trainable` < `parameters` (LoRA), only the trainable ones have gradients and
    optimizer states. Stage 1 shards the optimizer states over the devices, stage 2
    the gradients too, stage 3 the weights too.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO has stages 0 to 3, got {stage!r}")
    if devices < 1 or parameters < 0:
        raise ValueError(f"need devices >= 1 and parameters >= 0, got {devices}")
    trainable = parameters if trainable is None else trainable
    if not 0 <= trainable <= parameters:
        raise ValueError(f"trainable must lie in [0, {parameters}], got {trainable}")
    terms = [
        (weight * parameters, 3),
        (gradient * trainable, 2),
        (optimizer * trainable, 1),
    ]
    return sum(
        size / devices if stage >= sharded_from else size
        for size, sharded_from in terms
    )


def corpus_blocks(block_size: int = 32, lines: int = 400) -> torch.Tensor:
    """The tiny model's corpus, as blocks of token ids: (n, block_size)."""
    from lora_edu.llama import load_model
    from lora_edu.pretrain import DATA_DIR, pack_blocks

    _, tokenizer = load_model()
    text = (DATA_DIR / "corpus.txt").read_text().splitlines()[:lines]
    return pack_blocks(tokenizer, text, block_size)


def lora_model(r: int = 4, seed: int = 0) -> nn.Module:
    """The tiny Llama 3 with LoRA (r = alpha = r) on q, k, v, o, A drawn with `seed`."""
    from lora_edu.llama import load_model
    from lora_edu.lora import inject_lora

    model, _ = load_model()
    torch.manual_seed(seed)
    return inject_lora(model, ATTENTION, r=r, lora_alpha=r).train()


def experiment(steps: int, batch_size: int) -> dict:
    """The chapter's measurements on this rank (see the module's docstring)."""
    from torch.distributed.fsdp import fully_shard

    from lora_edu.lora import lora_parameters

    blocks, results = corpus_blocks(), {}
    # 1. Data parallel LoRA: the adapter, the losses, the bytes all-reduced.
    model, counter = lora_model(), {"bytes": 0, "buckets": 0}
    results["losses"] = train_steps(model, blocks, steps, batch_size, counter=counter)
    results["adapter"] = {
        n: p.detach().tolist() for n, p in lora_parameters(model).items()
    }
    results["lora bytes per step"] = counter["bytes"] / steps
    results["lora trainable"] = sum(p.numel() for p in lora_parameters(model).values())
    # 2. Full fine-tuning, one step: every weight's gradient is all-reduced.
    full, counter = lora_model(), {"bytes": 0, "buckets": 0}
    full.requires_grad_(True)
    train_steps(full, blocks, 1, batch_size, counter=counter)
    results["full bytes per step"] = counter["bytes"]
    results["full trainable"] = sum(p.numel() for p in full.parameters())
    # 3. FSDP2: each decoder layer is sharded, then the rest (embeddings, norm, head).
    sharded = lora_model()
    for layer in sharded.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    optimizer = torch.optim.AdamW(
        [p for p in sharded.parameters() if p.requires_grad], lr=3e-3
    )
    mine = blocks[:batch_size].chunk(dist.get_world_size())[dist.get_rank()]
    sharded(input_ids=mine, labels=mine).loss.backward()
    optimizer.step()
    results["share"] = rank_share(sharded, optimizer)
    results["parameters"] = sum(p.numel() for p in sharded.parameters())
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the experiment on every rank; rank 0 writes every rank's results."""
    parser = argparse.ArgumentParser(prog="python -m lora_edu.distributed")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    dist.init_process_group("gloo")
    try:
        mine = experiment(args.steps, args.batch_size)
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        if dist.get_rank() == 0:
            partial = args.output.with_name(args.output.name + ".partial")
            partial.write_text(json.dumps(everyone))
            os.replace(partial, args.output)  # a reader sees the whole file or none
            print(f"{len(everyone)} ranks wrote {args.output.name}")
    finally:
        dist.destroy_process_group()


def llama3_70b_config():
    """Meta-Llama-3-70B's published configuration. [Ch. 12]

    80 layers of width 8192, 64 query and 8 key/value heads.
    """
    from lora_edu.llama import llama3_8b_config

    config = llama3_8b_config()
    config.update(
        {
            "hidden_size": 8192,
            "intermediate_size": 28672,
            "num_hidden_layers": 80,
            "num_attention_heads": 64,
        }
    )
    return config


def fsdp_memory_table(model: nn.Module, gpus: tuple = (2, 4, 8)) -> list[dict]:
    """Bytes a GPU holds under FSDP, before activations: memory_table / GPUs. [Ch. 12]

    FSDP's full sharding is ZeRO stage 3: weights, gradients and optimizer states are
    all split evenly over the GPUs. `model` must hold LoRA layers.
    """
    from lora_edu.llama import memory_table

    return [
        {"method": row["method"]} | {n: row["total"] / n for n in gpus}
        for row in memory_table(model)
    ]


if __name__ == "__main__":
    main()
