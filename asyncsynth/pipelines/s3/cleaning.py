"""Cleaning of LLM-written examples before they reach a training set.

Cleaning must never drop or cut a legitimate text: every rule is anchored to the form an
assistant uses when it wraps, declines or talks about itself, never to words that reviews,
questions and hypotheses use every day ("Unfortunately, ...", "I'm sorry, but I hated
...", "I can't help but ...", "Sure, it's long, but ...", "The verdict:", "Note: the 3D
version is worse"). ``tests/data/s3_cleaning_corpus.jsonl`` holds the labelled corpus
that proves it. Every completion passes, in order:

1. **stripping** (``strip``; the text is kept, the fix is counted): an echoed prompt (the
   whole prompt as a prefix, or any of its lines), a code fence, an assistant's preamble
   ("Sure! Here is a positive review:", "Here's my attempt:"), a leading "Title:" line,
   trailing remarks about the answer itself ("I hope this helps", "Let me know if ...",
   "Note: I kept the review short", "Explanation: ..."), a "Review:"-style label prefix,
   whole-text markdown bold and quotes wrapped around the whole text (never half a pair);
2. **dropping** (the text is lost, the reason is counted): a failed request, a refusal
   (``builtin_refusals``: "As an AI language model", "I'm sorry, but I can't help with
   that", "I cannot fulfil this request"; plus ``refusal_patterns``), an empty, too short
   or over-long text, a truncated one when ``drop_truncated`` is set, and (``dedup``) a
   copy of a gold example, an exact duplicate and a near duplicate of a text already kept.

``CleaningSettings.none()`` (``cleaning = "none"``) keeps every answer as it came, as the
paper did: only failed requests and empty answers are dropped.

Exact duplicates compare the lower-cased word sequence; near duplicates the Jaccard
similarity of word shingles, found through an index with prefix filtering so that a
large set is not compared pair by pair. Both are scoped: for text pairs and QA only texts
written for the same context are compared. No torch, no embeddings.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Cleaned",
    "Cleaner",
    "CleaningCounts",
    "CleaningSettings",
    "NearDuplicateIndex",
    "is_refusal",
    "strip_wrappers",
    "words",
]

_WORD = re.compile(r"\w+")
_QUOTES = {'"': '"', "“": "”", "„": "“", "«": "»", "‘": "’", "'": "'", "`": "`"}
_FENCE = re.compile(r"\A```[\w+-]*[ \t]*\n?(.*?)\n?```\Z", re.S)
_BOLD = re.compile(r"\A\*\*([^*]+)\*\*\Z", re.S)
# What a chat model says before the text it was asked for. Each form is anchored to the
# assistant's own way of speaking ("Sure! Here is ...", "Here's a positive review:"): words
# that texts use every day ("Okay, so ...", "Absolutely loved it: ...", "The verdict:",
# "Here's the thing: ...") never suffice.
_TOPIC = (
    r"(?:reviews?|sentences?|questions?|hypothes[ie]s|texts?|examples?|versions?|responses?|"
    r"answers?|statements?|passages?|paragraphs?|one|attempt|take|draft)"
)
_INTRO = r"(?:sure|certainly|of course|absolutely|okay|ok|alright|great)(?:[,!.]+|\s*[-–—])"
_HERE = r"here(?:'s| is| are| goes)"
_PREAMBLE_LINE = re.compile(
    rf"^(?:{_INTRO}\s*)?(?:{_HERE}\b[^\n]{{0,100}}?\b{_TOPIC}\b[^\n]{{0,80}}|"
    rf"below (?:is|are)\b[^\n]{{0,100}}|the following (?:is|are)\b[^\n]{{0,100}}|"
    rf"i(?:'ve| have) (?:written|created|come up with)\b[^\n]{{0,100}}|"
    rf"i(?:'d| would) be (?:happy|glad) to\b[^\n]{{0,120}})$"
    r"|^(?:sure|certainly|of course)(?:[,!.]+\s*(?:sure|certainly|of course))?[!.]*$",
    re.I,
)
_PREAMBLE_INLINE = re.compile(
    rf"\A(?:{_INTRO}\s*)?{_HERE}\b[^:\n]{{0,100}}?\b{_TOPIC}\b[^:\n]{{0,60}}:\s+(?=\S)",
    re.I,
)
_TITLE = re.compile(r"^(?:\*\*)?title(?:\*\*)?\s*:", re.I)
# What a chat model says after the text: about its own answer, never about the subject.
_PRODUCT = r"(?:review|text|sentence|question|hypothesis|example|response|answer|output)"
_WRITING = (
    r"\b(?:fictional|fictitious|made[- ]up|as requested|the prompt|word count|the label|"
    r"the instructions|you asked for)\b"
    rf"|\bi (?:kept|wrote|made|chose|aimed to (?:keep|make|write)|tried to (?:keep|make|write)|"
    rf"focused on making) (?:it|the|this|my) (?:\w+ )?{_PRODUCT}"
    r"|\bi (?:kept|made) (?:it|this) (?:short|brief|concise|simple|under \d+)\b"
    rf"|\b(?:this|the above|the|my) (?:new |generated |rewritten )?{_PRODUCT} (?:is|was|has been) "
    r"(?:written|fictional|generated|intended|designed|meant|crafted|created|made up|based on|"
    r"an example|a sample|not (?:based|about|real))\b"
)
_TRAILER = re.compile(
    rf"^\(?(?:note|notes|disclaimer|p\.?s\.?)\s*:.*(?:{_WRITING})"
    r"|^\(?(?:explanation|word count|label|sentiment)\s*:"
    r"|^(?:i hope (?:this|that|it) (?:helps|meets|works|fits|is (?:what|helpful|useful|okay|ok|"
    r"good|suitable))|hope this helps|let me know if|feel free to (?:ask|let me|modify|adjust|"
    r"change|edit|use)|is there anything else|would you like (?:me|another|a different|more)|"
    r"if you(?:'d| would) like (?:me|another|a different|more|any)|"
    r"i can (?:also )?(?:write|make|provide|adjust|create) (?:another|more|a different|it))\b",
    re.I,
)
_PREFIX_NOUNS = (
    "review",
    "sentence",
    "question",
    "hypothesis",
    "answer",
    "text",
    "output",
    "example",
    "response",
    "statement",
)
# Refusals: an assistant declining, or talking about itself as a model. Each pattern is
# anchored to that form (the request, the model, a whole sentence of declining); the words
# reviews, questions and hypotheses use every day ("unfortunately", "sorry", "I can't",
# "I'm afraid", "as an AI researcher") never suffice on their own.
_DECLINE = (
    r"i(?: can't| cannot| can not| won't| will not| am unable to|'m unable to| am not able to|"
    r"'m not able to| must (?:respectfully )?decline to| am not comfortable|'m not comfortable|"
    r" do not feel comfortable| don't feel comfortable| am not going to|'m not going to|"
    r" won't be able to| will not be able to)"
)
_VERB = (
    r"(?:fulfil+(?:ing)?|comply(?:ing)? with|assist(?:ing)? with|help(?:ing)?(?: you)? with|"
    r"provid(?:e|ing)|creat(?:e|ing)|generat(?:e|ing)|writ(?:e|ing)|produc(?:e|ing)|"
    r"complet(?:e|ing)|do(?:ing)?|continu(?:e|ing)|engag(?:e|ing) with|respond(?:ing)? to|"
    r"process(?:ing)?)"
)
_APOLOGY = (
    r"(?:(?:i'm|i am) (?:really |so )?(?:sorry|afraid)|sorry|my apologies|i apologi[sz]e|"
    r"unfortunately)"
)
_REQUEST = r"(?:request|task|prompt|instructions?|query|assignment)"
_REFUSALS = (
    # the model names itself
    r"\bas an? (?:ai|artificial intelligence)(?: (?:language )?model| assistant| chatbot)?"
    r"(?=\s*[,.;:!]|\s+(?:i|developed|created|trained|designed|made)\b)",
    r"\bas an? (?:ai |artificial intelligence )?(?:large )?language model\b",
    r"\bi(?:'m| am) (?:just |only |merely )?(?:an ai|an artificial intelligence|a chatbot|"
    r"a virtual assistant|an ai (?:language model|model|assistant|chatbot)|"
    r"a (?:large )?language model)(?=\s*(?:[,.;:!]|$)|\s+(?:and|so|i|with|developed|created|"
    r"trained|designed|made|that|who|without)\b)",
    r"\bi (?:don't|do not) have (?:personal (?:opinions|feelings|experiences|preferences|beliefs)|"
    r"the (?:ability|capacity) to (?:watch|see|view|experience|access|browse|form))\b",
    r"\bmy (?:training data|knowledge cutoff|programming|guidelines)\b",
    # declining the request
    rf"\b{_DECLINE} (?:\w+ ){{0,3}}?{_VERB}\b[^.!?\n]{{0,60}}?\b(?:this|that|your|the|such|these) "
    rf"(?:(?:kind|type) of )?{_REQUEST}\b",
    rf"\b{_DECLINE} (?:help(?:ing)?|assist(?:ing)?)(?: you)? with (?:that|this|your|creating|"
    r"writing|generating|producing)\b",
    rf"\b{_DECLINE} assist you\b",
    rf"\b{_DECLINE} {_VERB} (?:this|that|such) (?:(?:kind|type|sort) of )?content\b",
    # a whole sentence of declining, with nothing after the object ("I can't do that.")
    rf"^(?:{_APOLOGY},? (?:but )?)?{_DECLINE}(?: to)? (?:help(?! but)|assist|comply|"
    r"(?:do|fulfil+|write|provide|create|generate|produce|complete|answer) (?:that|this|it)|"
    r"help(?: you)? with (?:that|this|it))(?: for you)?(?: right now| at this time)?\s*"
    r"(?:[.!]|$)",
    rf"^(?:{_APOLOGY},? (?:but )?)?{_DECLINE}(?: to)? (?:write|create|generate|produce) "
    r"(?:reviews?|content|texts?|stories|examples?|questions?|sentences?) "
    r"(?:about|of|for|involving|depicting|on) (?:real|actual|specific|copyrighted|existing)\b",
    rf"^{_APOLOGY},? (?:but )?(?:i (?:can't|cannot|won't) (?:do|help with) that|"
    r"that(?:'s| is) not something i can)\b",
)
_REFUSAL = re.compile("|".join(_REFUSALS), re.I | re.M)
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'"})


def words(text: str) -> list[str]:
    """Lower-cased word tokens: the normal form used for duplicate detection."""
    return _WORD.findall(text.casefold())


def is_refusal(text: str, extra: re.Pattern[str] | None = None) -> bool:
    """Whether ``text`` is a model declining or talking about itself instead of answering."""
    head = text.translate(_APOSTROPHES).strip()
    return bool(_REFUSAL.search(head) or (extra is not None and extra.search(head)))


def _line_key(line: str) -> str:
    return " ".join(words(line))


def _unquote(text: str) -> str:
    """``text`` without quotes wrapped around the whole of it (never half a pair of quotes)."""
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
        opening, closing = text[0], text[-1]
        inner = text[1:-1]
        if opening == "'":
            # Apostrophes inside words are fine ("it's"); any other straight single quote
            # may close the opening one ("'Jaws' is ... 'Duel'"), so the text stays whole.
            if _STRAY_SINGLE.search(inner):
                break
        elif opening in inner or closing in inner:
            break
        text = inner.strip()
    return text


_STRAY_SINGLE = re.compile(r"(?<![^\W\d_])'|'(?![^\W\d_])")


def _strip_echo(text: str, prompt: str, fixes: list[str]) -> list[str]:
    """The lines of ``text`` without an echoed prompt (as a prefix, or any of its lines)."""
    if prompt and text.startswith(prompt):
        text = text[len(prompt) :].strip()
        fixes.append("echo")
    if m := _FENCE.match(text):
        text = m.group(1).strip()
        fixes.append("fence")
    lines = [line.strip() for line in text.split("\n")]
    if prompt:
        echoed = {key for line in prompt.splitlines() if len(key := _line_key(line)) >= 12}
        kept = [line for line in lines if not line or _line_key(line) not in echoed]
        if len(kept) != len(lines):
            lines = kept
            if "echo" not in fixes:
                fixes.append("echo")
    return lines


def _strip_lines(lines: list[str], fixes: list[str]) -> list[str]:
    """Without a first line of preamble or title and last lines of trailer."""

    def several() -> bool:
        return sum(1 for line in lines if line) > 1

    while lines and not lines[0]:
        lines.pop(0)
    if several() and _is_preamble(lines[0]):
        lines.pop(0)
        fixes.append("preamble")
        while lines and not lines[0]:
            lines.pop(0)
    if several() and _TITLE.match(lines[0]):
        lines.pop(0)
        fixes.append("title")
    while several():
        while lines and not lines[-1]:
            lines.pop()
        if not _TRAILER.match(lines[-1]):
            break
        lines.pop()
        if "trailer" not in fixes:
            fixes.append("trailer")
    return lines


def _strip_inline(text: str, nouns: tuple[str, ...], fixes: list[str]) -> str:
    """Without an inline preamble, a label prefix, whole-text bold and wrapping quotes."""
    if m := _PREAMBLE_INLINE.match(text):
        text = text[m.end() :]
        fixes.append("preamble")
    if m := _prefix_pattern(nouns).match(text):
        text = text[m.end() :].strip()
        fixes.append("prefix")
    if m := _BOLD.match(text):
        text = m.group(1).strip()
        fixes.append("markdown")
    unquoted = _unquote(text)
    if unquoted != text:
        text = unquoted
        fixes.append("quotes")
    return text


def strip_wrappers(
    completion: str, prompt: str = "", *, nouns: Iterable[str] = ()
) -> tuple[str, list[str]]:
    """The text inside a completion, and the fixes applied (e.g. ``["preamble", "quotes"]``).

    ``prompt`` is the prompt's text (its echoed lines are removed); ``nouns`` adds words
    recognised as a label prefix ("Tweet:") to the built-in ones ("Review:", "Sentence:").
    """
    fixes: list[str] = []
    lines = _strip_echo(completion.replace("\r\n", "\n").strip(), prompt.strip(), fixes)
    lines = _strip_lines(lines, fixes)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    text = re.sub(r"[ \t]+", " ", text)
    return _strip_inline(text, tuple(nouns), fixes), fixes


def _is_preamble(line: str) -> bool:
    return len(line) <= 200 and bool(_PREAMBLE_LINE.match(line))


_PREFIX_WORDS = (
    "new|generated|rewritten|revised|modified|improved|extrapolated|synthetic|sample|final|"
    "similar|another|positive|negative|neutral|movie|film|your|my|the|a|an|example|second"
)
_PREFIX_CACHE: dict[tuple[str, ...], re.Pattern[str]] = {}


def _prefix_pattern(nouns: tuple[str, ...]) -> re.Pattern[str]:
    pattern = _PREFIX_CACHE.get(nouns)
    if pattern is None:
        extra = [re.escape(n.lower()) for noun in nouns for n in noun.split()[-1:]]
        alternatives = "|".join(sorted({*_PREFIX_NOUNS, *extra}, key=len, reverse=True))
        pattern = re.compile(
            rf"\A(?:\*\*)?(?:(?:{_PREFIX_WORDS}) ){{0,2}}(?:{alternatives})(?: ?#?\d+)?(?:\*\*)?"
            r"\s*:(?:\*\*)?\s+",
            re.I,
        )
        _PREFIX_CACHE[nouns] = pattern
    return pattern


# -- duplicates -----------------------------------------------------------------------------


class NearDuplicateIndex:
    """Finds exact and near duplicates (Jaccard of word shingles) among the texts added.

    Near-duplicate candidates come from a prefix-filtering index: every set of ``s``
    shingles is indexed by its first ``s - ceil(threshold * s) + 1`` shingles in a fixed
    global order (longest first, which puts rare words first), a bound that two sets with
    Jaccard >= threshold cannot both miss; only those candidates are compared exactly.
    """

    def __init__(self, threshold: float = 0.9, shingle: int = 1) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if shingle < 1:
            raise ValueError(f"shingle must be >= 1, got {shingle}")
        self.threshold = threshold
        self.shingle = shingle
        self._exact: dict[tuple[str, str], int] = {}
        self._sets: list[frozenset[str]] = []
        self._removed: set[int] = set()
        self._postings: dict[tuple[str, str], list[int]] = {}

    def __len__(self) -> int:
        return len(self._exact)

    def discard(self, text: str, scope: str = "") -> None:
        """Forget ``text`` (added before), as if it had never been added."""
        doc = self._exact.pop((scope, " ".join(words(text))), None)
        if doc is not None:
            self._removed.add(doc)

    def _shingles(self, tokens: list[str]) -> frozenset[str]:
        n = self.shingle
        if len(tokens) <= n:
            return frozenset([" ".join(tokens)]) if tokens else frozenset()
        return frozenset(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))

    def _prefix(self, shingles: frozenset[str]) -> list[str]:
        size = len(shingles)
        keep = size - math.ceil(self.threshold * size - 1e-9) + 1
        return sorted(shingles, key=lambda s: (-len(s), s))[:keep]

    def match(self, text: str, scope: str = "") -> str | None:
        """``"duplicate"``, ``"near_duplicate"`` or ``None`` for ``text`` within ``scope``."""
        tokens = words(text)
        if (scope, " ".join(tokens)) in self._exact:
            return "duplicate"
        shingles = self._shingles(tokens)
        if not shingles:
            return None
        size = len(shingles)
        seen: set[int] = set()
        for s in self._prefix(shingles):
            for doc in self._postings.get((scope, s), ()):
                if doc in seen or doc in self._removed:
                    continue
                seen.add(doc)
                other = self._sets[doc]
                if not self.threshold * size - 1e-9 <= len(other) <= size / self.threshold + 1e-9:
                    continue
                common = len(shingles & other)
                if common / (size + len(other) - common) >= self.threshold - 1e-12:
                    return "near_duplicate"
        return None

    def add(self, text: str, scope: str = "") -> None:
        tokens = words(text)
        key = (scope, " ".join(tokens))
        if key in self._exact:
            return
        doc = len(self._sets)
        self._exact[key] = doc
        shingles = self._shingles(tokens)
        self._sets.append(shingles)
        for s in self._prefix(shingles):
            self._postings.setdefault((scope, s), []).append(doc)


# -- the cleaner ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CleaningSettings:
    """Knobs of :class:`Cleaner` (the ``[s3.cleaning]`` table, or ``cleaning = "none"``)."""

    enabled: bool = True
    """False: keep every answer as it came (the paper's setup); only failed requests and
    empty answers are dropped."""
    strip: bool = True
    """Strip wrappers (echoed prompt, preambles, trailers, prefixes, quotes, fences)."""
    builtin_refusals: bool = True
    """Drop refusals recognised by the built-in patterns (``refusal_patterns`` still apply)."""
    dedup: bool = True
    """Drop copies of gold examples and exact or near duplicates of kept texts."""
    min_chars: int = 5
    max_chars: int = 2000
    near_duplicate: float = 0.9
    """Jaccard similarity of word shingles from which two texts count as near duplicates."""
    shingle: int = 1
    """Words per shingle (1: compare word sets)."""
    drop_truncated: bool = False
    """Drop completions cut off by ``max_tokens`` (finish_reason ``length``)."""
    refusal_patterns: tuple[str, ...] = ()
    """Extra regular expressions (case-insensitive) that mark a refusal."""

    @classmethod
    def none(cls) -> CleaningSettings:
        """No cleaning at all, as the paper did."""
        return cls(enabled=False, strip=False, builtin_refusals=False, dedup=False)


@dataclass(slots=True)
class CleaningCounts:
    """What cleaning did to a batch of completions."""

    received: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    fixed: Counter[str] = field(default_factory=Counter)
    received_by_label: Counter[str] = field(default_factory=Counter)
    """Answers received per label they were asked for (classification tasks)."""
    kept_by_label: Counter[str] = field(default_factory=Counter)

    def count_label(self, label: str | None, kept: bool) -> None:
        """Record one answer asked for ``label`` (``None``: a task without labels)."""
        if label is None:
            return
        self.received_by_label[label] += 1
        if kept:
            self.kept_by_label[label] += 1

    def unkeep(self, reason: str, label: str | None) -> None:
        """A kept text was dropped after all (a reviewer rejected it)."""
        self.kept -= 1
        self.dropped[reason] += 1
        if label is not None:
            self.kept_by_label[label] -= 1

    def add(self, other: CleaningCounts) -> None:
        self.received += other.received
        self.kept += other.kept
        self.dropped.update(other.dropped)
        self.fixed.update(other.fixed)
        self.received_by_label.update(other.received_by_label)
        self.kept_by_label.update(other.kept_by_label)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "received": self.received,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "fixed": dict(sorted(self.fixed.items())),
        }
        if self.received_by_label:
            out["by_label"] = {
                label: {"received": n, "kept": self.kept_by_label[label]}
                for label, n in sorted(self.received_by_label.items())
            }
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CleaningCounts:
        by_label = data.get("by_label", {})
        return cls(
            data["received"],
            data["kept"],
            Counter(data["dropped"]),
            Counter(data["fixed"]),
            Counter({k: v["received"] for k, v in by_label.items()}),
            Counter({k: v["kept"] for k, v in by_label.items()}),
        )


@dataclass(frozen=True, slots=True)
class Cleaned:
    """One completion after cleaning: ``text`` is ``None`` when it was dropped (``reason``)."""

    text: str | None
    reason: str | None = None
    fixes: tuple[str, ...] = ()


class Cleaner:
    """Cleans completions one by one, remembering what it kept to refuse duplicates.

    ``reference`` holds ``(scope, text)`` pairs that must never come back (the gold
    examples: a copy of one would leak it into training); :meth:`remember` registers
    texts already in the training set.
    """

    def __init__(
        self,
        settings: CleaningSettings = CleaningSettings(),
        *,
        reference: Iterable[tuple[str, str]] = (),
        nouns: Iterable[str] = (),
    ) -> None:
        self.settings = settings
        self.nouns = tuple(nouns)
        self._extra = (
            re.compile("|".join(f"(?:{p})" for p in settings.refusal_patterns), re.I | re.M)
            if settings.refusal_patterns
            else None
        )
        self._kept = NearDuplicateIndex(settings.near_duplicate, settings.shingle)
        self._reference = NearDuplicateIndex(settings.near_duplicate, settings.shingle)
        for scope, text in reference:
            self._reference.add(text, scope)

    def remember(self, text: str, scope: str = "") -> None:
        """Count ``text`` as kept, so later duplicates of it are dropped."""
        self._kept.add(text, scope)

    def forget(self, text: str, scope: str = "") -> None:
        """Undo keeping ``text`` (a reviewer rejected it after cleaning)."""
        self._kept.discard(text, scope)

    def clean(
        self,
        completion: str | None,
        *,
        prompt: str = "",
        scope: str = "",
        finish_reason: str | None = None,
        counts: CleaningCounts | None = None,
        label: str | None = None,
    ) -> Cleaned:
        """Clean one completion (``None`` for a failed request) and count the outcome.

        ``label`` is the label the text was asked for (counted per label).
        """
        result = self._clean(completion, prompt, scope, finish_reason)
        if counts is not None:
            counts.received += 1
            counts.fixed.update(result.fixes)
            if result.text is None:
                counts.dropped[result.reason or "dropped"] += 1
            else:
                counts.kept += 1
            counts.count_label(label, result.text is not None)
        return result

    def _refusal(self, text: str) -> bool:
        if self.settings.builtin_refusals and is_refusal(text):
            return True
        return self._extra is not None and bool(self._extra.search(text))

    def _clean(
        self, completion: str | None, prompt: str, scope: str, finish_reason: str | None
    ) -> Cleaned:
        if completion is None:
            return Cleaned(None, "failed")
        settings = self.settings
        if not settings.enabled:
            return Cleaned(completion, None) if completion.strip() else Cleaned(None, "empty")
        fixes: list[str] = []
        text = completion.strip()
        if settings.strip:
            text, fixes = strip_wrappers(completion, prompt, nouns=self.nouns)
        fixed = tuple(fixes)
        if self._refusal(text):
            return Cleaned(None, "refusal", fixed)
        reason = self._size(text, fixes, finish_reason)
        if reason is not None:
            return Cleaned(None, reason, fixed)
        if settings.dedup:
            if self._reference.match(text, scope) is not None:
                return Cleaned(None, "copies_gold", fixed)
            duplicate = self._kept.match(text, scope)
            if duplicate is not None:
                return Cleaned(None, duplicate, fixed)
            self._kept.add(text, scope)
        return Cleaned(text, None, fixed)

    def _size(self, text: str, fixes: list[str], finish_reason: str | None) -> str | None:
        settings = self.settings
        if not text:
            return "echo" if "echo" in fixes else "empty"
        if len(text) < settings.min_chars:
            return "too_short"
        if len(text) > settings.max_chars:
            return "too_long"
        if settings.drop_truncated and finish_reason == "length":
            return "truncated"
        return None
