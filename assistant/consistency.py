"""Intra-memory consistency: does the model answer the same question the same way when it is asked
from memory (no sources) in three phrasings? (Xu et al. 2024, "Knowledge Conflicts for LLMs".)

Tether asks the generator the question and two paraphrases without sources, compares the three
closed-book answers with each other (intra-memory agreement) and with the grounded answer
(context-memory agreement), and reports both. Disagreement is flagged, never hidden: a model whose
memory is inconsistent, or contradicts the documents, is exactly where the grounded answer matters.

Paraphrases are made by rules (no second model ships offline): a request form and an
"According to company policy" form; both keep every word of the question.
"""

from __future__ import annotations

import itertools
from typing import Any

from assistant.generators.base import GenParams, generate
from assistant.prompts import build_context_free_messages
from tether.text.quantities import missing_values
from tether.text.sentences import strip_citations

AGREE_SIMILARITY = 0.75  # answers closer than this (MiniLM cosine) agree, unless their numbers differ


def paraphrases(question: str) -> list[str]:
    """Two rephrasings of ``question`` that keep its meaning."""
    q = " ".join(question.split()).rstrip("?").strip()
    body = q[0].lower() + q[1:] if q and not q[:2].isupper() else q
    return [f"Could you tell me: {body}?", f"According to company policy, {body}?"]


def agree(a: str, b: str, similarity: float) -> bool:
    """Two answers agree when they state the same values, if any ("3 weeks" and "21 days" are one
    value; ``tether.text.quantities`` reads them), and say similar things."""
    if missing_values(a, b) or missing_values(b, a):
        return False
    return similarity >= AGREE_SIMILARITY


def check_consistency(
    generator, question: str, grounded_answer: str, embedder, params: GenParams | None = None
) -> dict[str, Any]:
    """Closed-book answers to the question and two paraphrases, compared.

    Returns ``{"questions", "answers", "pairwise": [[i, j, sim, agree]], "consistent",
    "agrees_with_context": [bool per closed-book answer], "context_memory_conflict"}``.
    """
    params = params or GenParams(max_new_tokens=60)
    questions = [question, *paraphrases(question)]
    answers = [generate(generator, build_context_free_messages(q), params).strip() for q in questions]
    grounded = strip_citations(grounded_answer)
    vecs = embedder.embed_batch(answers + [grounded])
    pairwise = []
    for i, j in itertools.combinations(range(len(answers)), 2):
        sim = float(vecs[i] @ vecs[j])
        pairwise.append([i, j, round(sim, 4), agree(answers[i], answers[j], sim)])
    with_context = [agree(a, grounded, float(vecs[i] @ vecs[-1])) for i, a in enumerate(answers)]
    consistent = all(p[3] for p in pairwise)
    return {
        "questions": questions,
        "answers": answers,
        "pairwise": pairwise,
        "consistent": consistent,
        "agrees_with_context": with_context,
        # the model's memory agrees with itself but not with the documents: a context-memory conflict
        "context_memory_conflict": consistent and not any(with_context),
    }


def summarise(result: dict[str, Any] | None) -> str | None:
    if not result:
        return None
    if not result["consistent"]:
        return "the model answers this question inconsistently from memory (intra-memory conflict)"
    if result["context_memory_conflict"]:
        return "the model's memory disagrees with the documents (context-memory conflict); the answer follows the documents"
    return None
