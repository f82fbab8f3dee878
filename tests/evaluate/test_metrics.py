import pytest

from tasks.evaluate.metrics import distinct_n, load_judge, similarity


def test_distinct_n_counts_words_and_cjk_characters():
    assert distinct_n(["a b a b"], 1) == pytest.approx(0.5)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["你好你好"], 1) == pytest.approx(0.5)
    assert distinct_n(["", "a"], 2) == 0.0


def test_similarity_judge_runs_offline_and_ranks_paraphrases_higher():
    judge = load_judge()
    same = similarity(judge, ["The weather is lovely today."], ["Today the weather is nice."])
    other = similarity(judge, ["The weather is lovely today."], ["Compile the kernel module."])
    assert same > 0.6 > other


def test_key_value_cache_generates_what_recomputing_generates(tmp_path):
    """Greedy rows of different prompt lengths (left padding) and lengths: the cached path of
    a transformers model and the recompute path agree token for token."""
    from types import SimpleNamespace

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from tasks.evaluate.metrics import Sampling, generate_rows
    from tasks.registry.runtime import LogitsOf, TorchLM

    vocab = {ch: i for i, ch in enumerate(["<|endoftext|>", *"abcdefghijklmnopqrstuvwxyz :?<>|"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
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
        return generate_rows(lm, tokenizer, prompts, sampling, gens)

    fast, slow = run(cached), run(plain)
    assert fast == slow
    assert [g.tokens for g in fast][1] <= 5 and any(g.text for g in fast)
