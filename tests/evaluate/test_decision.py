from dataclasses import replace

import pytest

from tasks.evaluate.decision import ModelMetrics, Thresholds, should_promote

T = Thresholds(max_perplexity=100.0, min_distinct_2=0.3, min_similarity=0.2,
               max_regression=0.02)
GOOD = ModelMetrics(perplexity=50.0, char_perplexity=4.0, distinct_1=0.4, distinct_2=0.6,
                    similarity=0.3)


def test_no_champion_absolute_thresholds_decide():
    d = should_promote(GOOD, None, T)
    assert d.promote
    assert "no champion yet: absolute thresholds decide" in d.reasons


@pytest.mark.parametrize(
    ("field", "ok", "bad"),
    [("perplexity", 100.0, 100.01), ("distinct_2", 0.3, 0.2999), ("similarity", 0.2, 0.1999)],
)
def test_absolute_floors_on_both_sides(field, ok, bad):
    assert should_promote(replace(GOOD, **{field: ok}), None, T).promote
    d = should_promote(replace(GOOD, **{field: bad}), None, T)
    assert not d.promote
    assert d.reasons[0].startswith("FAIL")


@pytest.mark.parametrize(
    ("field", "edge_ok", "edge_bad"),
    [("char_perplexity", 4.0 * 1.02, 4.0 * 1.0201),
     ("similarity", 0.3 - 0.02 * 0.3, 0.3 - 0.0061),
     ("distinct_2", 0.6 * 0.98, 0.6 * 0.979)],
)
def test_regression_tolerance_against_champion(field, edge_ok, edge_bad):
    assert should_promote(replace(GOOD, **{field: edge_ok}), GOOD, T).promote
    d = should_promote(replace(GOOD, **{field: edge_bad}), GOOD, T)
    assert not d.promote
    assert any(r.startswith("FAIL") and "champion" in r for r in d.reasons)


def test_champion_comparison_uses_character_perplexity_not_token_perplexity():
    # A smaller vocabulary raises token perplexity without the model being worse per character.
    champion = replace(GOOD, perplexity=20.0)
    assert should_promote(replace(GOOD, perplexity=60.0), champion, T).promote


def test_a_better_challenger_still_needs_the_absolute_floors():
    better = replace(GOOD, char_perplexity=3.0, similarity=0.19)
    assert not should_promote(better, replace(GOOD, similarity=0.1), T).promote
