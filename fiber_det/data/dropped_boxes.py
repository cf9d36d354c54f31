"""Counts of training boxes dropped because their phrase falls past the token limit.

A box whose class name or phrase is cut off by MAX_QUERY_LEN has no token to be matched to, so
the mapper removes it; this counter makes that visible: per dataset, a warning each time the
count doubles, and an error once more than half of a dataset's boxes (at least MIN_BOXES seen)
were dropped: a prompt policy or caption length that loses most of the data is a setup error.
"""

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

MIN_BOXES = 20
MAX_DROPPED_SHARE = 0.5


@dataclass
class DroppedBoxCounter:
    """Per-dataset (seen, dropped) box counts of one mapper (one per data-loader worker)."""

    max_query_len: int
    seen: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def add(self, dataset: str, seen: int, dropped: int, example: str = "") -> None:
        """Count one record's boxes; log the first drop and each time the dataset's dropped count
        passes a power of two; raise when more than half of its boxes were dropped."""
        before = self.dropped.get(dataset, 0)
        self.seen[dataset] = self.seen.get(dataset, 0) + seen
        self.dropped[dataset] = total = before + dropped
        if dropped and total.bit_length() > before.bit_length():
            logger.warning(
                f"{dataset}: {total} of {self.seen[dataset]} training boxes so far dropped "
                f"because their phrase falls past INPUT.TEXT.MAX_QUERY_LEN={self.max_query_len} "
                f"tokens (latest: {example})"
            )
        if self.seen[dataset] >= MIN_BOXES and total > MAX_DROPPED_SHARE * self.seen[dataset]:
            raise ValueError(
                f"{dataset}: {total} of {self.seen[dataset]} training boxes dropped because "
                f"their phrase falls past INPUT.TEXT.MAX_QUERY_LEN={self.max_query_len} tokens "
                f"(latest: {example}); shorten the captions or class names, raise the limit, or "
                "use the positives_negatives prompt policy"
            )
