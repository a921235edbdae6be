"""Task datasets for causal experiments (activation patching) and language steering."""

from workbench.tasks.ioi import (
    NAMES,
    OBJECTS,
    PLACES,
    TEMPLATES,
    VARIANTS,
    PatchPair,
    ioi_pairs,
    ioi_prompt,
    single_token_names,
)
from workbench.tasks.language import (
    ENGLISH_STOPWORDS,
    SPANISH_STOPWORDS,
    detect_language,
    en_es_topics,
    language_token_ids,
    load_en_es_pairs,
    spanish_score,
    unicode_token_ids,
)

__all__ = ["NAMES", "OBJECTS", "PLACES", "TEMPLATES", "VARIANTS", "PatchPair", "ioi_pairs", "ioi_prompt",
           "single_token_names", "ENGLISH_STOPWORDS", "SPANISH_STOPWORDS", "detect_language", "en_es_topics",
           "language_token_ids", "load_en_es_pairs", "spanish_score", "unicode_token_ids"]
