"""Royalty arithmetic of DESIGN.md, "Settlement": fees under a grant's terms and lineage royalties.

Exact rationals inside, floored once per posting to integer micros. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from ledger.values import MICROS

ZERO = Fraction(0)


def _price(decimal: str) -> Fraction:
    """A price in currency units per usage unit, as exact micros per unit."""
    return Fraction(decimal) * MICROS


def tiered_charge(units: int, tiers: Sequence[Mapping[str, Any]]) -> Fraction:
    """Graduated tiers within one cycle: each unit priced by the tier its cumulative count is in."""
    charge, floor = ZERO, 0
    for tier in tiers:
        up_to = tier.get("up_to")
        top = units if up_to is None else min(units, int(up_to))
        if top > floor:
            charge += (top - floor) * _price(str(tier["per_unit"]))
            floor = top
        if up_to is not None and units <= int(up_to):
            break
    return charge


def per_unit_charge(units: int, terms: Mapping[str, Any]) -> Fraction:
    if "tiers" in terms:
        return tiered_charge(units, terms["tiers"])
    if "per_unit" in terms:
        return units * _price(str(terms["per_unit"]))
    return ZERO


def usage_fee(terms: Mapping[str, Any], units: int, revenue: int) -> int:
    """Step 1: tiered per-unit price on summed units + share x summed revenue, floored once,
    raised to the cycle's minimum if lower."""
    share = Fraction(str(terms.get("share", "0")))
    fee = per_unit_charge(units, terms) + share * revenue
    floored = fee.numerator // fee.denominator
    return max(floored, int(terms.get("minimum", 0)))


def royalty(value: int, weight: Fraction, share: Fraction) -> int:
    """Step 2: floor(V x w x s) micros, computed exactly."""
    num = value * weight.numerator * share.numerator
    return num // (weight.denominator * share.denominator)
