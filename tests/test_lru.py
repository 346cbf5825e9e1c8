"""The LRU rule on hand-worked examples: pure function, then through the backbone (M=2, K=2)."""
import pytest
import torch

from torchrl_elmur import lru_commit, lru_slot


def vec(*values):
    return torch.tensor(values, dtype=torch.float64)[:, None]  # [M, 1]


class TestLruSlot:
    def test_first_empty_then_oldest_ties_lowest(self):
        times = torch.tensor([[0, 0, 0], [3, 0, 0], [3, 5, 0], [3, 5, 7], [9, 5, 5], [4, 4, 4]])
        assert lru_slot(times).tolist() == [0, 1, 2, 0, 1, 0]


class TestLruCommit:
    def test_paper_rule_four_segments(self):
        mem, time = vec(0.0, 0.0), torch.tensor([0, 0])
        # seg 0: both empty -> slot 0 takes the candidate outright (alpha = 1)
        mem, time = lru_commit(mem, time, vec(10.0, 20.0), torch.tensor(2), 0.25)
        assert mem.flatten().tolist() == [10.0, 0.0] and time.tolist() == [2, 0]
        # seg 1: slot 1 still empty -> outright
        mem, time = lru_commit(mem, time, vec(30.0, 40.0), torch.tensor(4), 0.25)
        assert mem.flatten().tolist() == [10.0, 40.0] and time.tolist() == [2, 4]
        # seg 2: full; slot 0 is the oldest -> 0.25 * 50 + 0.75 * 10
        mem, time = lru_commit(mem, time, vec(50.0, 60.0), torch.tensor(6), 0.25)
        assert mem.flatten().tolist() == [20.0, 40.0] and time.tolist() == [6, 4]
        # seg 3: slot 1 is the oldest -> 0.25 * 80 + 0.75 * 40
        mem, time = lru_commit(mem, time, vec(70.0, 80.0), torch.tensor(8), 0.25)
        assert mem.flatten().tolist() == [20.0, 50.0] and time.tolist() == [6, 8]

    def test_official_rule_blends_into_empty(self):
        init = vec(1.0, 2.0)  # what the write saw in empty slots
        mem, time = lru_commit(init, torch.tensor([0, 0]), vec(5.0, 9.0), torch.tensor(2), 0.25, "official")
        assert mem.flatten().tolist() == [2.0, 0.0] and time.tolist() == [2, 0]  # 0.25*5 + 0.75*1

    def test_lambda_zero_and_one(self):
        full = vec(1.0, 2.0), torch.tensor([4, 2])
        mem, time = lru_commit(*full, vec(7.0, 8.0), torch.tensor(6), 0.0)
        assert mem.flatten().tolist() == [1.0, 2.0] and time.tolist() == [4, 6]  # nothing changes but the stamp
        mem, time = lru_commit(*full, vec(7.0, 8.0), torch.tensor(6), 1.0)
        assert mem.flatten().tolist() == [1.0, 8.0] and time.tolist() == [4, 6]  # replaced outright
        # the paper rule still fills an empty slot at lambda = 0; the official rule does not change it
        mem, _ = lru_commit(vec(3.0, 3.0), torch.tensor([0, 0]), vec(7.0, 8.0), torch.tensor(2), 0.0)
        assert mem.flatten().tolist() == [7.0, 0.0]
        mem, _ = lru_commit(vec(3.0, 3.0), torch.tensor([0, 0]), vec(7.0, 8.0), torch.tensor(2), 0.0, "official")
        assert mem.flatten().tolist() == [3.0, 0.0]

    def test_replace_all(self):
        mem, time = lru_commit(vec(1.0, 2.0), torch.tensor([4, 0]), vec(7.0, 8.0), torch.tensor(6), 0.5, "replace_all")
        assert mem.flatten().tolist() == [7.0, 8.0] and time.tolist() == [6, 6]

    def test_batched_rows_independent(self):
        mem = torch.zeros(2, 2, 1, dtype=torch.float64)
        time = torch.tensor([[0, 0], [5, 3]])
        cand = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]], dtype=torch.float64)
        mem, time = lru_commit(mem, time, cand, torch.tensor([7, 9]), 0.5)
        assert time.tolist() == [[7, 0], [5, 9]]
        assert mem.flatten().tolist() == [1.0, 0.0, 0.0, 2.0]

    def test_unknown_rule(self):
        with pytest.raises(ValueError, match="rule='fifo' is invalid"):
            lru_commit(vec(1.0, 2.0), torch.tensor([0, 0]), vec(1.0, 2.0), torch.tensor(2), 0.5, "fifo")


class TestThroughBackbone:
    """M=2, K=2, four segments: segment ends at steps 1, 3, 5, 7 -> stamps 2, 4, 6, 8."""

    def run_segments(self, backbone_factory, **config):
        net = backbone_factory(memory_slots=2, segment_len=2, num_layers=2, **config)
        x = torch.randn(1, 8, 5, dtype=torch.float64)
        state, history = net.initial_state(1), []
        for t in range(8):
            _, state = net.step(x[:, t], state)
            if t % 2 == 1:
                history.append(state)
        return net, history

    def test_slot_choice_and_times(self, backbone_factory):
        _, hist = self.run_segments(backbone_factory)
        times = [s.memory_time[0, 0].tolist() for s in hist]
        assert times == [[2, 0], [2, 4], [6, 4], [6, 8]]
        assert all(torch.equal(s.memory_time[0, 0], s.memory_time[0, 1]) for s in hist)  # every layer
        # exactly the chosen slot changed after each segment
        changed = [(hist[i].memory[0, :, :] != hist[i - 1].memory[0, :, :]).any(-1)[0].tolist() for i in range(1, 4)]
        assert changed == [[False, True], [True, False], [False, True]]
        assert (hist[0].memory[0, :, 1] == 0).all()  # still empty: stored as zeros

    def test_lambda_zero_paper_freezes_after_filling(self, backbone_factory):
        _, hist = self.run_segments(backbone_factory, lru_blend=0.0)
        assert torch.equal(hist[1].memory, hist[3].memory)
        assert [s.memory_time[0, 0].tolist() for s in hist][-1] == [6, 8]

    def test_official_lambda_zero_keeps_initial_vectors(self, backbone_factory):
        net, hist = self.run_segments(backbone_factory, lru_blend=0.0, write_rule="official")
        assert torch.equal(hist[-1].memory[0], net.memory_init)

    def test_lambda_one_replaces(self, backbone_factory):
        net, hist = self.run_segments(backbone_factory, lru_blend=1.0)
        # slot 0 was rewritten at segment 2: it differs from what segment 0 wrote
        assert not torch.equal(hist[2].memory[0, :, 0], hist[0].memory[0, :, 0])

    def test_replace_all_mode(self, backbone_factory):
        _, hist = self.run_segments(backbone_factory, write_rule="replace_all")
        assert [s.memory_time[0, 0].tolist() for s in hist] == [[2, 2], [4, 4], [6, 6], [8, 8]]
        assert (hist[1].memory != hist[0].memory).all(-1).all()
