import pytest

from tasks.evaluate.metrics import load_judge, similarity
from tasks.text import distinct_n


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
