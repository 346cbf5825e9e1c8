"""Run by tests/test_distributed.py under torchrun: a few steps of the IQL tutorial's own training loop
(``tutorials/offline_iql.py:train``: DiscreteIQLLoss, SoftUpdate, AdamW per network) in float64 with
dropout off, then rank 0 saves the loss module's parameters. Not a test module (pytest collects test_*.py)."""
import importlib.util
import sys
import types
from pathlib import Path

import torch

TUTORIAL = Path(__file__).resolve().parents[1] / "tutorials" / "offline_iql.py"


def load_tutorial():
    """The tutorial loaded from its file as a module (not __main__: its main() does not run), without putting
    tutorials/ on sys.path."""
    spec = importlib.util.spec_from_file_location("offline_iql_tutorial", TUTORIAL)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(out: str, steps: int, batch: int) -> None:
    tutorial = load_tutorial()

    from torchrl_elmur.training.distributed import init_distributed, shutdown

    torch.set_num_threads(1)
    ctx = init_distributed()
    args = tutorial.Args(episodes=48, batch=batch, steps=steps, seq_len=12, max_corridor=8, width=16, critic_width=8,
                         segment_len=4, eval_every=0)
    make_critics = tutorial.make_critics
    # float64 (exact sums) and eval mode (the T-Maze preset's dropout would draw different masks per rank);
    # TorchRL's loss keeps its networks unregistered, so loss.train() inside train() leaves them as set here
    tutorial.make_critics = lambda kind, a: tuple(net.double().eval() for net in make_critics(kind, a))
    torch.manual_seed(0)
    actor = tutorial.make_actor("elmur", args).double().eval()
    data = tutorial.make_data(args).apply(lambda t: t.double() if t.is_floating_point() else t)
    _, loss = tutorial.train(actor, "iql", "elmur", data, args, types.SimpleNamespace(log=lambda *a, **k: None), "iql", ctx)
    if ctx.is_main:
        torch.save({k: v.detach().clone() for k, v in loss.state_dict().items()} | {"world_size": ctx.world_size}, out)
    shutdown(ctx)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
