import pandas as pd
import pytest
from transformers import AutoTokenizer

from tasks.config import LifecycleConfig
from tasks.data.preprocess import run, split_frame
from tasks.data.source import load_demo
from tasks.lm.template import BOT, EOS, USER
from tasks.stage import StageContext
from tests.conftest import scratch_base


def test_split_is_deterministic_and_keeps_each_prompt_on_one_side():
    frame = load_demo(["english", "chinese"])
    a = split_frame(frame, 7, 0.1, 0.1)
    b = split_frame(frame.sample(frac=1, random_state=1), 7, 0.1, 0.1)
    for name in a:
        assert set(map(tuple, a[name].values)) == set(map(tuple, b[name].values))
    prompts = {name: set(part["prompt"].str.casefold()) for name, part in a.items()}
    assert not prompts["train"] & prompts["test"]
    assert not prompts["train"] & prompts["validation"]
    assert 0.05 < len(a["test"]) / len(frame) < 0.15
    c = split_frame(frame, 8, 0.1, 0.1)
    assert set(c["test"]["prompt"]) != set(a["test"]["prompt"])


def test_tokenizer_is_trained_and_round_trips_both_scripts(home, tiny):
    frame = load_demo(["english", "chinese"])
    path = home / "masked.parquet"
    frame.to_parquet(path, index=False)
    ctx = StageContext(stage="preprocess", dag_id="d", run_id="r", config=tiny,
                       inputs={"validate": {"dataset_uri": str(path)},
                               "base_model": scratch_base()})
    result = run(ctx)
    tok = AutoTokenizer.from_pretrained(result["tokenizer_uri"])
    assert len(tok) <= tiny.vocab_size
    text = f"{USER}How are you?{BOT}我很好，谢谢。{EOS}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids(USER) in ids
    sizes = {k: len(pd.read_parquet(v)) for k, v in result["splits"].items()}
    assert sizes == result["rows"] and sum(sizes.values()) == len(frame)


def test_too_little_data_is_a_clear_error(home):
    path = home / "masked.parquet"
    pd.DataFrame({"prompt": ["a"], "response": ["b"], "language": ["english"]}).to_parquet(path)
    ctx = StageContext(stage="preprocess", dag_id="d", run_id="r", config=LifecycleConfig(),
                       inputs={"validate": {"dataset_uri": str(path)},
                               "base_model": scratch_base()})
    with pytest.raises(ValueError, match="split '.*' is empty"):
        run(ctx)
