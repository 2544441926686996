"""The code-quality options (the ``quality:`` section, and the same flags): defined here with the other options, read
by the quality scorer in qrl.rewards.quality."""

from __future__ import annotations

from dataclasses import dataclass, field

from qrl.data.records import UserError


class QualityError(UserError):
    """Quality scoring cannot run (ruff missing, a bad option); printed as one line."""


@dataclass
class QualityConfig:
    """Options of the quality scores; field names are unique so that they can become flags."""

    ruff_select: list[str] = field(
        default_factory=lambda: ["E", "F", "W", "B", "C4", "SIM", "N"],
        metadata={"help": "ruff rules counted as style violations (pycodestyle, pyflakes, bugbear, "
                          "comprehensions, simplify, pep8-naming)."},
    )
    ruff_ignore: list[str] = field(default_factory=list, metadata={"help": "ruff rules not counted."})
    max_line_length: int = field(default=100, metadata={"help": "Longest line before a violation (ruff E501; Q)."})
    style_half_rate: float = field(
        default=0.1, metadata={"help": "Violations per code line (not blank, not comment) at which style is 0.5."}
    )
    docs_min_words: int = field(default=3, metadata={"help": "Shorter docstrings lose part of their credit."})
    docs_max_words: int = field(default=150, metadata={"help": "Longer docstrings lose part of their credit."})
    cc_good: int = field(default=5, metadata={"help": "Worst cyclomatic complexity up to which the CC part scores 1."})
    cc_bad: int = field(default=25, metadata={"help": "Worst cyclomatic complexity from which the CC part scores 0."})
    mi_good: float = field(
        default=50.0, metadata={"help": "radon maintainability index from which the MI part scores 1."}
    )
    mi_bad: float = field(
        default=10.0, metadata={"help": "radon maintainability index up to which the MI part scores 0."}
    )
    mi_share: float = field(
        default=0.3, metadata={"help": "Share of the maintainability index in the complexity score (rest: CC)."}
    )
    q_nesting_good: int = field(default=4, metadata={"help": "Q bracket nesting depth up to which complexity is 1."})
    q_nesting_bad: int = field(default=8, metadata={"help": "Q bracket nesting depth from which complexity is 0."})
    q_max_function_lines: int = field(default=15, metadata={"help": "Q functions longer than this are a violation."})
    q_comment_ratio: float = field(
        default=0.2, metadata={"help": "Q comment lines per code line that earn full comment density credit."}
    )
    q_comment_max_ratio: float = field(
        default=2.0, metadata={"help": "Q comment lines per code line beyond which credit falls (comment padding)."}
    )
    style_weight: float = field(default=0.4, metadata={"help": "Weight of style in the total quality score."})
    docs_weight: float = field(default=0.3, metadata={"help": "Weight of documentation in the total quality score."})
    complexity_weight: float = field(default=0.3, metadata={"help": "Weight of complexity in the total quality score."})

    def validate(self) -> None:
        """Catch settings that would make every score meaningless, as one line naming the option."""
        weights = {"style_weight": self.style_weight, "docs_weight": self.docs_weight,
                   "complexity_weight": self.complexity_weight, "mi_share": self.mi_share}
        for name, value in weights.items():
            if value < 0:
                raise QualityError(f"--{name} must not be negative (got {value})")
        if self.style_weight + self.docs_weight + self.complexity_weight <= 0:
            raise QualityError("--style_weight, --docs_weight and --complexity_weight must not all be 0")
        if self.mi_share > 1:
            raise QualityError(f"--mi_share must be at most 1 (got {self.mi_share})")
        positive = {"max_line_length": self.max_line_length, "style_half_rate": self.style_half_rate,
                    "docs_min_words": self.docs_min_words, "q_max_function_lines": self.q_max_function_lines,
                    "q_comment_ratio": self.q_comment_ratio}
        for name, value in positive.items():
            if not value > 0:
                raise QualityError(f"--{name} must be greater than 0 (got {value})")
        ordered = [("docs_min_words", "docs_max_words"), ("cc_good", "cc_bad"), ("mi_bad", "mi_good"),
                   ("q_nesting_good", "q_nesting_bad"), ("q_comment_ratio", "q_comment_max_ratio")]
        for low, high in ordered:
            if not getattr(self, low) < getattr(self, high):
                raise QualityError(f"--{low} must be less than --{high} "
                                   f"(got {getattr(self, low)} and {getattr(self, high)})")
