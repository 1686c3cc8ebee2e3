"""S3, "Let's Synthesize Step by Step" (Wang, Zhou, Sachan; EMNLP 2023 Findings).

Synthesize a seed set from rationales, train a small local student, and for every gold
example it gets wrong ask the LLM for a new example like it, with its gold label; repeat,
then train the final student on everything. See :func:`run_s3` and the README.
"""

from .cleaning import Cleaner, CleaningCounts, CleaningSettings, NearDuplicateIndex
from .context import Reviewer, ReviewSample, S3Error
from .gold import GoldData, load_gold
from .pipeline import S3Result, run_s3
from .prompts import PromptSet, load_prompt_set
from .rationales import parse_rationales
from .settings import LabelSpec, RationaleSettings, S3Settings, load_s3_settings, s3_settings
from .tasks import ClassificationTask, QATask, Task, make_task

__all__ = [
    "ClassificationTask",
    "Cleaner",
    "CleaningCounts",
    "CleaningSettings",
    "GoldData",
    "LabelSpec",
    "NearDuplicateIndex",
    "PromptSet",
    "QATask",
    "RationaleSettings",
    "ReviewSample",
    "Reviewer",
    "S3Error",
    "S3Result",
    "S3Settings",
    "Task",
    "load_gold",
    "load_prompt_set",
    "load_s3_settings",
    "make_task",
    "parse_rationales",
    "run_s3",
    "s3_settings",
]
