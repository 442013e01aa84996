"""Contrastive loss over features gathered from all ranks: under 2-process gloo the loss and its
gradients equal the 1-process values for the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vast.draws import Draws
from vast.objectives import _sample_negatives, contrastive_loss

GLOBAL_BATCH, DIM = 8, 16


def features(seed=0):
    generator = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(GLOBAL_BATCH, DIM, generator=generator), dim=-1)
    cond = F.normalize(torch.randn(GLOBAL_BATCH, DIM, generator=generator), dim=-1)
    return text, cond


def single_process(label_smoothing):
    text, cond = features()
    text.requires_grad_(True)
    cond.requires_grad_(True)
    temperature = torch.tensor(0.07, requires_grad=True)
    loss = contrastive_loss(text, cond, temperature, label_smoothing)
    loss.backward()
    return loss.detach(), text.grad, cond.grad, temperature.grad


def _worker(rank, world, port, label_smoothing, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        text, cond = features()
        rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        local_text = text[rows].clone().requires_grad_(True)
        local_cond = cond[rows].clone().requires_grad_(True)
        temperature = torch.tensor(0.07, requires_grad=True)
        loss = contrastive_loss(local_text, local_cond, temperature, label_smoothing)
        loss.backward()
        # DDP averages gradients over ranks; do the same for the shared temperature
        temp_grad = temperature.grad.clone()
        dist.all_reduce(temp_grad)
        # plain numpy, not tensors: tensors travel through shared memory that dies with this process
        queue.put((rank, loss.item(), (local_text.grad / world).numpy(), (local_cond.grad / world).numpy(),
                   (temp_grad / world).numpy()))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_two_process_contrastive_equals_single_process(label_smoothing):
    loss, text_grad, cond_grad, temp_grad = single_process(label_smoothing)
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [context.Process(target=_worker, args=(r, 2, port, label_smoothing, queue)) for r in range(2)]
    for p in processes:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    mean_loss = sum(r[1] for r in results) / 2
    assert mean_loss == pytest.approx(loss.item(), abs=1e-6)
    torch.testing.assert_close(torch.cat([torch.from_numpy(r[2]) for r in results]), text_grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([torch.from_numpy(r[3]) for r in results]), cond_grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(results[0][4]), temp_grad, atol=1e-5, rtol=1e-5)


def test_hard_negatives_never_pick_the_same_clip():
    similarity = torch.randn(6, 6)
    same = torch.eye(6, dtype=torch.bool)
    same[0, 3] = True  # clip 3 is also clip 0 (e.g. two rows of one video)
    for ratio in (0.0, 0.5, 1.0):
        for _ in range(20):
            picks = _sample_negatives(similarity, same, 0.07, torch.rand(6, 6), torch.rand(6) < ratio)
            assert not same[torch.arange(6), picks].any()
    assert _sample_negatives(similarity[:1, :1], torch.ones(1, 1, dtype=torch.bool), 0.07, torch.rand(1, 1)) is None


def test_hashed_draws_follow_the_sampling_distributions():
    """Hard negatives drawn with hashed uniforms follow softmax(similarity / temperature) over the
    other clips; random ones are uniform; a pair's draw does not depend on where it sits."""
    similarity = torch.tensor([[0.9, 0.5, 0.3, 0.1]]).repeat(4000, 1)
    same = torch.zeros(4000, 4, dtype=torch.bool)
    same[:, 0] = True
    draws = Draws(seed=1, step=0)
    rows, columns = torch.arange(4000) + 100, torch.arange(4)
    uniforms = draws.pairs(rows, columns, 1)
    picks = _sample_negatives(similarity, same, 0.2, uniforms)
    expected = torch.softmax(torch.tensor([0.5, 0.3, 0.1]) / 0.2, dim=0)
    observed = torch.bincount(picks, minlength=4)[1:].float() / 4000
    assert (observed - expected).abs().max() < 0.03
    uniform = _sample_negatives(similarity, same, 0.2, uniforms, torch.ones(4000, dtype=torch.bool))
    assert (torch.bincount(uniform, minlength=4)[1:].float() / 4000 - 1 / 3).abs().max() < 0.03
    # the same (row, column) samples draw the same numbers in another layout, another step draws anew
    flipped = draws.pairs(rows.flip(0)[:10], columns.flip(0), 1)
    assert torch.equal(flipped, uniforms.flip(0)[:10].flip(1))
    assert not torch.equal(Draws(seed=1, step=1).pairs(rows, columns, 1), uniforms)
    values = draws.rows(rows, 50, 2)
    assert 0 < values.min() and values.max() < 1 and abs(values.mean().item() - 0.5) < 0.01
    assert torch.equal(draws.rows(rows, 20, 2), values[:, :20])  # a position's draw ignores the padding width


class _RecordingMatcher:
    """Stands in for VAST.match_logits to see which memory each (text, clip) pair is given."""

    max_subtitle_len = 2

    def match_logits(self, tokens, memory, memory_mask, memory_index):
        self.pairs = memory[memory_index]  # [pairs, M, D]
        return torch.zeros(memory_index.shape[0], 2, requires_grad=True)


def test_subtitle_swap_negatives_keep_the_clip_and_take_another_subtitle():
    from vast.models.vast import TextTokens
    from vast.objectives import matching_loss

    n, width = 4, 2
    # clip i's memory: 3 picture/sound tokens filled with i, then 2 subtitle tokens filled with 10 + i
    memory = torch.cat([torch.arange(n).float()[:, None, None].expand(n, 3, 1),
                        (10 + torch.arange(n)).float()[:, None, None].expand(n, width, 1)], dim=1)
    subtitles = ["open the door", "open the door", "wash the car", "play the piano"]
    feats = F.normalize(torch.randn(n, DIM), dim=-1)
    tokens = TextTokens(torch.ones(n, 5, dtype=torch.long), torch.ones(n, 5, dtype=torch.long))
    codes = torch.arange(n)
    matcher = _RecordingMatcher()
    for step in range(10):
        loss = matching_loss(matcher, tokens, memory, None, feats, feats, codes, torch.tensor(0.07),
                             Draws(0, step), subtitles=subtitles, subtitle_swap_ratio=1.0)
        assert loss is not None
        negatives = matcher.pairs[n:2 * n]  # (text i, negative) pairs
        for i in range(n):
            assert (negatives[i, :3] == i).all()  # own picture and sound
            donor = int(negatives[i, 3, 0]) - 10
            assert donor != i and subtitles[donor] != subtitles[i]  # a subtitle that differs
        assert (matcher.pairs[:n, :, 0] == memory[:, :, 0]).all()  # positives untouched
    # without the ratio, every (text, negative) pair is another whole clip
    matching_loss(matcher, tokens, memory, None, feats, feats, codes, torch.tensor(0.07), Draws(0, 0), subtitles=subtitles)
    negatives = matcher.pairs[n:2 * n]
    assert all(int(negatives[i, 0, 0]) != i and int(negatives[i, 3, 0]) == 10 + int(negatives[i, 0, 0])
               for i in range(n))
