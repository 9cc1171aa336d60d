"""Which evaluation protocol each run's numbers come from (tag `ldm.eval_protocol`), and whether a table may mix them.

Numbers measured under different protocols (another sample count, reference split, extractor weights, sampler)
are not comparable in one column. A table takes rows of one protocol; `ldm report --mixed-protocols` lets it
take several, and then a column names each row's protocol.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import pandas as pd

from ldm.errors import UserError
from ldm.tracking import Tag
from reports.runs import StudyRuns, column_or_missing, tag_column

UNRECORDED = "unrecorded"


def run_protocols(study: StudyRuns) -> dict[str, str]:
    """Run id -> its protocol fingerprint (`unrecorded` for runs evaluated before the tag existed)."""
    tags = column_or_missing(study.finished, tag_column(Tag.EVAL_PROTOCOL))
    return {run: tag if isinstance(tag, str) else UNRECORDED for run, tag in zip(study.finished["run_id"], tags)}


def protocol_letters(protocols: dict[str, str]) -> dict[str, str]:
    """Fingerprint -> a, b, c ... in first-seen order."""
    return {p: string.ascii_lowercase[i % 26] for i, p in enumerate(dict.fromkeys(protocols.values()))}


def check_protocols(study: StudyRuns, mixed: bool) -> dict[str, str]:
    """The runs' protocols; a UserError naming them when there are several and `mixed` was not asked for."""
    protocols = run_protocols(study)
    distinct = list(dict.fromkeys(protocols.values()))
    if len(distinct) > 1 and not mixed:
        raise UserError(f"study '{study.name}' holds runs of {len(distinct)} evaluation protocols "
                        f"({', '.join(distinct)}: tag {Tag.EVAL_PROTOCOL}), whose numbers are not comparable in one "
                        "column; allowed: one protocol, or --mixed-protocols to tabulate them together, each row "
                        "marked with its protocol")
    return protocols


def protocol_note(protocols: dict[str, str]) -> str:
    distinct = list(dict.fromkeys(protocols.values()))
    if not distinct:
        return ""
    if len(distinct) == 1:
        return f"Evaluation protocol {distinct[0]} ({Tag.EVAL_PROTOCOL})."
    letters = protocol_letters(protocols)
    return ("Mixed evaluation protocols, not comparable across rows of different letters: "
            + "; ".join(f"{letter} = {p}" for p, letter in letters.items()) + f" ({Tag.EVAL_PROTOCOL}).")


def row_protocols(protocols: dict[str, str], rows: Sequence[Sequence[str]]) -> pd.Series:
    """Each row's protocol letters (`a`, `a,b`), from the run ids it averages."""
    letters = protocol_letters(protocols)
    return pd.Series([",".join(sorted({letters[protocols[r]] for r in runs})) for runs in rows], dtype=object)
