"""The data model shared by every dataset: examples, a task with its metric, answer scoring."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
SCORINGS = ("number", "label", "contains")


@dataclass(frozen=True)
class Example:
    """One instruction example; ``label`` is its topic (and the class for classification).

    ``messages`` is the conversation before the response as (role, content) turns, for
    models with a chat template; empty means one user turn holding ``prompt``, the plain-text
    form used without a template.
    """

    prompt: str
    response: str
    label: str
    messages: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TaskData:
    """A dataset split into train and eval, with the rule that scores generated answers.

    ``scoring`` picks the rule: "number" (final number, GSM8K style), "label" (first label
    word in the text) or "contains" (the reference answer appears in the text). Left empty
    it follows the metric: exact_match -> number, accuracy -> label.
    """

    name: str
    train: list[Example]
    eval: list[Example]
    metric: str
    labels: list[str]
    scoring: str = ""
    _label_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        scoring = self.scoring or ("number" if self.metric == "exact_match" else "label")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring: unknown {scoring!r}; allowed: {', '.join(SCORINGS)}")
        object.__setattr__(self, "scoring", scoring)
        if self.labels:
            # Longest first ("sea lion" before "sea"); boundaries keep "plant" out of "planted".
            words = sorted(self.labels, key=len, reverse=True)
            pattern = r"(?<!\w)(" + "|".join(re.escape(w) for w in words) + r")(?!\w)"
            object.__setattr__(self, "_label_re", re.compile(pattern, re.IGNORECASE))

    def answer(self, ex: Example) -> str:
        """The gold answer string the metric compares against."""
        if self.scoring == "number":
            return extract_number(ex.response)
        if self.scoring == "label":
            return ex.label
        return normalize(ex.response)

    def extract(self, generated: str) -> str:
        """Parse a model's generated text into an answer string ("" when none is found)."""
        if self.scoring == "number":
            return extract_number(generated)
        if self.scoring == "label":
            match = self._label_re.search(generated) if self._label_re else None
            if match is None:
                return ""
            lowered = {w.lower(): w for w in self.labels}
            return lowered[match.group(1).lower()]
        return normalize(generated)

    def is_correct(self, ex: Example, generated: str) -> bool:
        """Whether the generated text answers the example correctly under this task's metric."""
        gold, got = self.answer(ex), self.extract(generated)
        if self.scoring == "contains":
            return bool(gold) and gold in got
        return bool(got) and got == gold


def extract_number(text: str) -> str:
    """The number after the last "####", else the last number in the text, canonicalised."""
    head, sep, tail = text.rpartition("####")
    found = _NUMBER.findall(tail) if sep else []
    number = found[0] if found else (_NUMBER.findall(head + sep + tail) or [""])[-1]
    number = number.replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    # int() drops leading zeros and "-0" so "007" and "7" compare equal.
    return str(int(number)) if re.fullmatch(r"-?\d+", number) else number


def normalize(text: str) -> str:
    """Lower-case with whitespace runs collapsed, for containment checks."""
    return " ".join(text.lower().split())
