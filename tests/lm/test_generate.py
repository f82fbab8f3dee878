"""Sampling: the key/value cache path, per-row settings."""

def test_key_value_cache_generates_what_recomputing_generates(tmp_path):
    """Greedy rows of different prompt lengths (left padding) and lengths: the cached path of
    a transformers model and the recompute path agree token for token."""
    from types import SimpleNamespace

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from tasks.lm.artifact import LogitsOf, TorchLM
    from tasks.lm.generate import Sampling, generate_rows
    from tasks.lm.template import prepare_tokenizer, stop_ids

    vocab = {ch: i for i, ch in enumerate(["<|endoftext|>", *"abcdefghijklmnopqrstuvwxyz :?<>|"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    prepare_tokenizer(tokenizer)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=48, n_embd=32,
                                       n_layer=2, n_head=2, eos_token_id=0)).eval()
    cached = TorchLM(LogitsOf(model), 48)
    plain = SimpleNamespace(logits=cached.logits, n_positions=48)  # no cache to use
    assert cached.incremental is model and getattr(plain, "incremental", None) is None
    prompts = ["hi", "how are you doing today", "ok?"]
    sampling = [Sampling(12, 0.0), Sampling(5, 0.0), Sampling(12, 0.0)]

    def run(lm):
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        return generate_rows(lm, tokenizer, prompts, sampling, gens, stop_ids(tokenizer))

    fast, slow = run(cached), run(plain)
    assert fast == slow
    assert [g.tokens for g in fast][1] <= 5 and any(g.text for g in fast)


def test_row_sampling_follows_each_rows_settings():
    import torch

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
