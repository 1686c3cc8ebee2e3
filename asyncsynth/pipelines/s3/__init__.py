"""S3, "Let's Synthesize Step by Step" (Wang, Zhou, Sachan; EMNLP 2023 Findings).

Synthesize a seed set from rationales, train a small local student, and for every gold
example it gets wrong ask the LLM for a new example like it, with its gold label; repeat,
then train the final student on everything. See :func:`run_s3` and the README.
"""

from .cleaning import Cleaner, CleaningCounts, CleaningSettings, NearDuplicateIndex
from .pipeline import GoldData, Reviewer, ReviewSample, S3Error, S3Result, load_gold, run_s3
from .settings import LabelSpec, RationaleSettings, S3Settings, load_s3_settings, s3_settings
from .tasks import PromptSet, load_prompt_set, parse_rationales

__all__ = [
    "Cleaner",
    "CleaningCounts",
    "CleaningSettings",
    "GoldData",
    "LabelSpec",
    "NearDuplicateIndex",
    "PromptSet",
    "RationaleSettings",
    "ReviewSample",
    "Reviewer",
    "S3Error",
    "S3Result",
    "S3Settings",
    "load_gold",
    "load_prompt_set",
    "load_s3_settings",
    "parse_rationales",
    "run_s3",
    "s3_settings",
]
