"""The model library every stage shares: load any artifact the lifecycle produces (a
transformers folder, a LoRA-merged model, an INT8 module or exported graph, ONNX), generate
with a key/value cache, and score likelihood and perplexity — written once, for any
transformers causal LM.

Training, registry, compression, evaluation, serving and feedback import it; it imports none
of them. Another modality (an image generator) plugs into the same stages by giving its
loaded models the `GenerativeModel` shape below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from tasks.lm.generate import Generated, Sampling
    from tasks.lm.likelihood import Likelihood


class GenerativeModel(Protocol):
    """What serving, evaluation, the MLflow pyfunc and the benchmarks ask of a loaded model."""

    def generate_rows(self, prompts: Sequence[str], sampling: Sequence[Sampling],
                      generators: Sequence[torch.Generator]) -> list[Generated]:
        """One batch, each row with its own settings and generator."""
        ...

    def likelihood(self, pairs: Sequence[tuple[str, str]], batch_size: int = 16,
                   window: int | None = None) -> Likelihood:
        """How likely the model finds each reference output given its prompt (within
        `window` tokens of context)."""
        ...
