"""Gendered pronouns, shared by the data parsers (WinoBias, SynthBias) and the answer parser."""

from __future__ import annotations

PRONOUN_GENDER = {
    "he": "male", "him": "male", "his": "male", "himself": "male",
    "she": "female", "her": "female", "hers": "female", "herself": "female",
}


def pronoun_gender(pronoun: str) -> str:
    """"male" or "female" for a third-person singular pronoun (any case); ValueError otherwise."""
    try:
        return PRONOUN_GENDER[pronoun.strip().lower()]
    except KeyError:
        raise ValueError(f"not a gendered pronoun: {pronoun!r}") from None
