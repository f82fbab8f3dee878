"""The loss over labelled tokens and the held-out likelihood of answers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from transformers import AutoTokenizer

from tasks.lm.likelihood import labelled, likelihood, lm_loss
from tasks.lm.template import IGNORE, encode_pairs, prepare_tokenizer


def test_sharded_losses_average_to_the_global_batch_mean():
    """Two ranks with different numbers of labelled tokens: dividing each rank's sum by the
    global count over the world size makes the mean of rank losses the global mean."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 11, generator=g)
    labels = torch.randint(0, 11, (4, 6), generator=g)
    labels[0, :5] = IGNORE  # rank 0's shard holds fewer labelled tokens than rank 1's
    labels[1, 2:] = IGNORE
    whole = lm_loss(logits, labels)
    per_rank = labelled(labels) / 2
    ranks = [lm_loss(logits[i: i + 2], labels[i: i + 2], per_rank) for i in (0, 2)]
    torch.testing.assert_close(sum(ranks) / 2, whole)
    # The naive mean of per-rank means is not the global mean here.
    naive = (lm_loss(logits[:2], labels[:2]) + lm_loss(logits[2:], labels[2:])) / 2
    assert not torch.isclose(naive, whole)
    assert lm_loss(logits, torch.full_like(labels, IGNORE)).item() == 0.0


@dataclass
class Uniform:
    """A model that predicts every token with the same probability."""

    n_positions: int
    vocab: int

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, self.vocab)


def test_only_the_answer_is_scored_within_the_window(checkpoints):
    tok = AutoTokenizer.from_pretrained(checkpoints["llama"])
    prepare_tokenizer(tok)
    pairs = [("how are you today my friend?", "fine, thanks"), ("你好", "你好！我很好。")]
    answer_tokens = sum(len(r) for _, r in encode_pairs(tok, pairs))
    vocab = len(tok)
    lik = likelihood(Uniform(256, vocab), tok, pairs)
    assert lik.tokens == answer_tokens
    assert lik.perplexity == pytest.approx(vocab, rel=1e-4)  # uniform: ppl = vocab size
    one_by_one = likelihood(Uniform(256, vocab), tok, pairs, batch_size=1)
    assert (one_by_one.tokens, one_by_one.chars) == (lik.tokens, lik.chars)
    assert one_by_one.nll == pytest.approx(lik.nll)
    # A longer prompt changes nothing that is scored.
    longer = likelihood(Uniform(256, vocab), tok, [("a much longer question " * 5 + p, r)
                                                   for p, r in pairs])
    assert longer.tokens == lik.tokens and longer.chars == lik.chars
    # A window shorter than an answer scores the answer's beginning only.
    narrow = likelihood(Uniform(256, vocab), tok, pairs, window=4)
    assert narrow.tokens == 2 * 3
