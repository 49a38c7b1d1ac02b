"""Inter-context knowledge conflicts: pairs of claims among retrieved passages that cannot both be true.

The package is three layers, each importing only the one before it:

- ``claims``: ``Claim``/``Conflict`` (the values that cross module boundaries), sentence splitting
  (``split_claims``) and what the rules read from a sentence (``claim_features``);
- ``rules``: ``rule_hit`` and ``scope_differs`` over two ``ClaimFeatures`` (no model);
- ``detectors``: ``RuleConflictDetector`` (rules plus the MiniLM subject gate), ``NLIConflictDetector``,
  ``ClassifierConflictDetector`` (rules + the classifier ``tether train detector`` trains),
  ``get_detector``, and ``claim_vector_rows`` (the claim vectors ingestion stores).

Every word the rules use is data, in ``retrieval/lexicon.yaml`` (``retrieval.lexicon``). See
docs/CONFLICTS.md.
"""

from retrieval.conflicts.claims import (
    KINDS,
    Claim,
    ClaimFeatures,
    Conflict,
    claim_features,
    claim_from_json,
    split_claims,
    subject_of,
)
from retrieval.conflicts.detectors import (
    ClaimVectorSource,
    ClassifierConflictDetector,
    ConflictDetector,
    NLIConflictDetector,
    RuleConflictDetector,
    claim_vector_rows,
    classifier_card,
    get_detector,
)
from retrieval.conflicts.rules import RuleHit, rule_hit, scope_differs

__all__ = [
    "KINDS",
    "Claim",
    "Conflict",
    "ConflictDetector",
    "ClaimVectorSource",
    "claim_vector_rows",
    "RuleConflictDetector",
    "NLIConflictDetector",
    "ClassifierConflictDetector",
    "classifier_card",
    "ClaimFeatures",
    "RuleHit",
    "claim_features",
    "rule_hit",
    "scope_differs",
    "split_claims",
    "subject_of",
    "get_detector",
    "claim_from_json",
]
