import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from torchrl_elmur import ELMURBackbone, ELMURConfig


def make_backbone(dtype=torch.float64, weight_std=0.3, seed=0, **config) -> ELMURBackbone:
    """A small backbone in eval mode with large random weights (so that every path matters)."""
    torch.manual_seed(seed)
    base = dict(d_model=16, num_layers=2, num_heads=2, memory_slots=2, segment_len=3, input_size=5,
                memory_init_std=0.1, max_time_gap=8)
    net = ELMURBackbone(ELMURConfig(**{**base, **config})).to(dtype).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, weight_std)
    return net


@pytest.fixture
def backbone_factory():
    return make_backbone


@pytest.fixture
def one_torch_thread():
    """Tiny ops on a 2-core box: intra-op thread wake-ups (not the module) dominate the runtime and
    make a collector step 10x slower; one thread keeps a test fast and its timing stable. Per
    test, because ParallelEnv.close() raises the process's thread count again. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def load_script():
    """``load_script("benchmarks/mikasa_robo.py")``: a tutorial or benchmark script loaded from its file as a
    module (its ``Args``, ``check``, functions), without running ``main`` and without putting its folder on
    ``sys.path``: scripts are leaves and import only the package."""
    root = Path(__file__).resolve().parents[1]

    def load(relative: str):
        path = root / relative
        name = "script_" + relative.replace("/", "_").removesuffix(".py")  # not __main__: main() does not run
        spec = importlib.util.spec_from_file_location(name, path)
        module = sys.modules[name] = importlib.util.module_from_spec(spec)  # registered: get_type_hints finds it
        spec.loader.exec_module(module)
        return module

    return load
