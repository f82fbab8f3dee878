"""Decoding: the key/value cache and the recompute path agree; rows join and leave a running
batch without changing what any row generates; stop texts, streaming pieces, bad rows."""

from __future__ import annotations

import pytest
import torch

PROMPTS = ["hi", "how are you doing today", "ok?"]


def _generate(t, lm, prompts, sampling):
    from tasks.lm.generate import generate_rows

    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    return generate_rows(lm, t.tokenizer, prompts, sampling, gens, t.stop)


def test_key_value_cache_generates_what_recomputing_generates(tiny_lm):
    """Greedy rows of different prompt lengths (left padding) and lengths, some running past
    the context (48 tokens): the cached path and the recompute path agree token for token."""
    from tasks.lm.generate import Sampling

    sampling = [Sampling(12, 0.0), Sampling(5, 0.0), Sampling(60, 0.0)]
    fast, slow = _generate(tiny_lm, tiny_lm.cached, PROMPTS, sampling), _generate(
        tiny_lm, tiny_lm.plain, PROMPTS, sampling)
    assert fast == slow
    assert fast[1].tokens <= 5 and any(g.text for g in fast)
    assert fast[2].tokens == 60  # a generation longer than the context slides its window


def _rows_alone(t, sampling):
    from tasks.lm.generate import Decoder

    alone = []
    for i, prompt in enumerate(PROMPTS):
        decoder = Decoder(t.cached, t.tokenizer, t.stop)
        ids = t.tokenizer(prompt)["input_ids"]
        row = decoder.new_row(ids, sampling[i], torch.Generator().manual_seed(i))
        alone.append(decoder.run([row])[0].generated)
    return alone


@pytest.mark.parametrize("lm", ["cached", "plain"])
def test_rows_joining_a_running_batch_generate_what_they_generate_alone(tiny_lm, lm):
    """Continuous batching: a row joins after others have taken steps, rows leave when done;
    every row's tokens are the ones it generates on its own."""
    from tasks.lm.generate import Decoder, Sampling

    sampling = [Sampling(30, 0.0), Sampling(8, 1.0, 0.9), Sampling(20, 0.7)]
    alone = _rows_alone(tiny_lm, sampling)
    decoder = Decoder(getattr(tiny_lm, lm), tiny_lm.tokenizer, tiny_lm.stop)
    rows = [decoder.new_row(tiny_lm.tokenizer(p)["input_ids"], s,
                            torch.Generator().manual_seed(i))
            for i, (p, s) in enumerate(zip(PROMPTS, sampling, strict=True))]
    decoder.join(rows[:1])
    for _ in range(3):
        decoder.step()
    decoder.join(rows[1:])  # joins a batch whose cache is already longer than its prompt
    sizes = []
    while len(decoder):
        sizes.append(len(decoder))
        decoder.step()
    assert [r.generated for r in rows] == alone
    assert sizes[0] == 3 and sizes[-1] == 1  # finished rows left at once


def test_stop_texts_end_the_answer_and_stream_pieces_add_up(tiny_lm):
    from tasks.lm.generate import Decoder, Sampling

    free = _generate(tiny_lm, tiny_lm.cached, ["ab"], [Sampling(30, 0.0)])[0].text
    assert len(free) > 6
    stop = free[3:5]
    decoder = Decoder(tiny_lm.cached, tiny_lm.tokenizer, tiny_lm.stop)
    row = decoder.new_row(tiny_lm.tokenizer(tiny_lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "ab"}], tokenize=False, add_generation_prompt=True),
        add_special_tokens=False)["input_ids"], Sampling(30, 0.0, stop=(stop, "zzzz")),
        torch.Generator().manual_seed(0))
    pieces = [e.piece for e in decoder.join([row])]
    while len(decoder):
        pieces += [e.piece for e in decoder.step()]
    assert "".join(pieces) == row.result().text == free[: free.index(stop)].rstrip()
    assert row.finish == "stop"


def test_a_cancelled_row_leaves_at_the_next_step(tiny_lm):
    from tasks.lm.generate import Decoder, Sampling

    decoder = Decoder(tiny_lm.cached, tiny_lm.tokenizer, tiny_lm.stop)
    a, b = (decoder.new_row([1, 2, 3], Sampling(40, 0.0), torch.Generator()) for _ in range(2))
    decoder.join([a, b])
    a.cancelled = True
    events = decoder.step()
    assert [(e.row is a, e.finish) for e in events] == [(True, "cancelled"), (False, None)]
    assert decoder.rows == [b] and len(b.generated) == 2


def test_one_bad_row_fails_alone_and_the_batch_goes_on(tiny_lm):
    """A row the model cannot take (here: a token the model refuses) fails with its reason;
    the rows sharing its batch finish as they would alone."""
    from tasks.lm.generate import Decoder, Sampling

    class Picky:
        n_positions = 48

        def logits(self, ids, mask):
            if (ids == 5).any():
                raise ValueError("token 5 is poison")
            return tiny_lm.plain.logits(ids, mask)

    sampling = [Sampling(10, 0.0)] * 3
    decoder = Decoder(Picky(), tiny_lm.tokenizer, tiny_lm.stop)
    rows = [decoder.new_row(ids, s, torch.Generator()) for ids, s in
            zip(([1, 2], [3, 5, 4], [6, 7, 8]), sampling, strict=True)]
    decoder.run(rows)
    assert [r.finish for r in rows] == ["length", "error", "length"]
    reference = Decoder(tiny_lm.plain, tiny_lm.tokenizer, tiny_lm.stop)
    good = [reference.new_row(ids, sampling[0], torch.Generator()) for ids in ([1, 2], [6, 7, 8])]
    reference.run(good)
    assert [rows[0].generated, rows[2].generated] == [g.generated for g in good]


def test_row_sampling_follows_each_rows_settings():
    from tasks.lm.generate import sample_rows

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    temperature, top_p = torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 0.6])
    draws = torch.stack([sample_rows(logits, temperature, top_p,
                                     [torch.Generator().manual_seed(k * 3 + i)
                                      for i in range(3)]) for k in range(4000)])
    assert set(draws[:, 0].tolist()) == {0}  # greedy
    freq = torch.bincount(draws[:, 1], minlength=4).float() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    assert set(draws[:, 2].tolist()) == {0, 1}  # the nucleus of 0.6 holds two tokens
    one = [torch.Generator().manual_seed(7)]
    again = [torch.Generator().manual_seed(7)]
    assert sample_rows(logits[1:2], temperature[1:2], top_p[1:2], one) == sample_rows(
        logits[1:2], temperature[1:2], top_p[1:2], again)


def test_held_rows_compute_to_the_batch_end_and_generate_the_same_tokens(tiny_lm, caplog):
    """Request-level batching (the benchmark's baseline): rows that ended stay until every
    row has (their cache growing past the context of 48 while the longest runs on); what
    each row generates is unchanged."""
    from tasks.lm.generate import Decoder, Sampling

    sampling = [Sampling(60, 0.0), Sampling(4, 0.0), Sampling(12, 0.7)]

    def run(hold: bool) -> tuple[list[list[int]], list[int]]:
        decoder = Decoder(tiny_lm.cached, tiny_lm.tokenizer, tiny_lm.stop, hold_finished=hold)
        rows = [decoder.new_row(tiny_lm.tokenizer(p)["input_ids"], s,
                                torch.Generator().manual_seed(i))
                for i, (p, s) in enumerate(zip(PROMPTS, sampling, strict=True))]
        decoder.join(rows)
        sizes = []
        while len(decoder):
            sizes.append(len(decoder))
            decoder.step()
        return [r.generated for r in rows], sizes

    (held, held_sizes), (free, free_sizes) = run(True), run(False)
    assert held == free and len(held[0]) == 60
    assert "failed" not in caplog.text  # no step had to be retried row by row
    assert set(held_sizes) == {3} and free_sizes[-1] == 1
