"""Run by tests/test_distributed.py under torchrun: a few BC steps of ELMUR on T-Maze data, then
rank 0 saves the parameters. Not a test module itself (pytest collects test_*.py only)."""
import sys

import torch


def build_actor():
    """The actor every rank starts from (seed 0, float64, no dropout)."""
    from torchrl_elmur import ELMURConfig
    from torchrl_elmur.training.policies import make_bc_actor

    torch.manual_seed(0)
    config = ELMURConfig.tmaze(input_size=16, d_model=16, num_layers=2, num_heads=2, segment_len=5,
                               detach_memory=False, dropout=0.0, attn_dropout=0.0, memory_dropout=0.0)
    return make_bc_actor("elmur", 4, num_actions=4, width=16, config=config).double()  # float64: exact sums


def main(out: str, steps: int, batch: int, updates: str, optimizer_name: str) -> None:
    from torchrl_elmur.data import make_offline_replay_buffer, make_tmaze_dataset
    from torchrl_elmur.objectives import SequenceCrossEntropyLoss
    from torchrl_elmur.training import train_bc
    from torchrl_elmur.training.distributed import init_distributed, shutdown, wrap_ddp

    torch.set_num_threads(1)
    ctx = init_distributed()
    if updates == "crash" and ctx.rank == 1:  # a worker that dies: the others must fail, not wait
        raise RuntimeError("rank 1 stops here on purpose")
    actor = build_actor()  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    data = make_tmaze_dataset(32, max_corridor=8, seed=0)
    data = data.apply(lambda t: t.double() if t.is_floating_point() else t)
    buffer = make_offline_replay_buffer(data, batch, 10, seed=0)  # the same global batches on every rank
    loss = wrap_ddp(SequenceCrossEntropyLoss(actor), ctx)
    optimizer = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1), "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2)}[optimizer_name](
        actor.parameters())
    train_bc(actor, loss, buffer, optimizer, steps=steps, batch=batch, seq_len=10, grad_clip=1.0,
             chunk_len=5 if updates == "segment" else None, progress=False, ctx=ctx)
    if ctx.is_main:
        torch.save({k: v.detach().clone() for k, v in actor.state_dict().items()} | {"world_size": ctx.world_size}, out)
    shutdown(ctx)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
