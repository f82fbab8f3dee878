import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.data.preprocess import make_tokenizer, split_frame
from tasks.data.source import load_demo
from tasks.train.data import batch_indices
from tasks.train.loop import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    frame = load_demo(["english", "chinese"]).sample(n=400, random_state=0)
    splits = split_frame(frame, 1, 0.1, 0.1)
    out = tmp_path_factory.mktemp("tok")
    make_tokenizer(None, splits["train"], 400, out / "tok")
    return splits, AutoTokenizer.from_pretrained(out / "tok")


def _weights(path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_training_beats_the_untrained_model(corpus, tiny, tmp_path):
    splits, tok = corpus
    result = train(tiny, splits["train"], splits["validation"], tok, tmp_path)
    assert result["val_perplexity"] < 0.5 * result["untrained_val_perplexity"]
    model = AutoModelForCausalLM.from_pretrained(result["model_uri"])
    assert model.config.n_layer == tiny.n_layer and model.config.n_embd == tiny.n_embd
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-00000030", "step-00000040"]


def test_resume_from_newest_complete_checkpoint_matches_uninterrupted_run(corpus, tiny, tmp_path):
    splits, tok = corpus
    full = train(tiny, splits["train"], splits["validation"], tok, tmp_path / "a")
    train(tiny, splits["train"], splits["validation"], tok, tmp_path / "b")
    ckpts = tmp_path / "b" / "checkpoints"
    # Simulate a crash after step 30: the step-40 checkpoint and the model are gone, and a
    # half-written checkpoint (no meta.json) is left behind.
    shutil.rmtree(ckpts / "step-00000040")
    shutil.rmtree(tmp_path / "b" / "model")
    (ckpts / ".step-00000040.tmp-dead").mkdir()
    (ckpts / "step-00000050").mkdir()
    resumed = train(tiny, splits["train"], splits["validation"], tok, tmp_path / "b")
    assert resumed["resumed_from_step"] == 30
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-5)
    a, b = _weights(full["model_uri"]), _weights(resumed["model_uri"])
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_batch_order_is_a_pure_function_of_the_step():
    n, bs = 10, 4
    seen = torch.cat([batch_indices(s, n, bs, 3) for s in range(5)])
    # The first 10 draws are one permutation of all blocks (no repeats within an epoch).
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert torch.equal(batch_indices(3, n, bs, 3), batch_indices(3, n, bs, 3))
    assert not torch.equal(batch_indices(0, n, bs, 3), batch_indices(0, n, bs, 4))

