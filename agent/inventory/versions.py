"""Product versions and which CAL version covers which server version.

R07: a CAL must be the same version as, or later than, the server it accesses.
R08: R2 releases accept the previous CAL version (a 2012 CAL covers 2012 R2).
Microsoft server products are versioned by year ("2022", "2012 R2"); other products in the register
(antivirus, subscriptions) by release numbers ("11", "10.1").  Both compare numerically.
"""

from __future__ import annotations

import re

_VERSION = re.compile(r"^\s*(\d+(?:\.\d+)*)\s*(R2)?\s*$", re.IGNORECASE)

Version = tuple[tuple[int, ...], int]


def parse_version(text: str) -> Version:
    """``"2012 R2"`` -> ((2012,), 1); ``"2022"`` -> ((2022,), 0); ``"10.1"`` -> ((10, 1), 0)."""
    match = _VERSION.match(str(text))
    if match is None:
        raise ValueError(f"not a product version: {text!r} (expected a year such as 2022, 2012 R2, or a number "
                         "such as 11 or 10.1)")
    numbers = tuple(int(part) for part in match.group(1).split("."))
    while len(numbers) > 1 and numbers[-1] == 0:  # 10.0 == 10
        numbers = numbers[:-1]
    return numbers, 1 if match.group(2) else 0


def version_covers(cal_version: str, server_version: str) -> bool:
    """True when a CAL of ``cal_version`` licenses access to a server of ``server_version``."""
    cal, server = parse_version(cal_version), parse_version(server_version)
    if cal >= server:
        return True
    return cal[0] == server[0] and server[1] == 1  # R08: 2012 covers 2012 R2


def normalise_version(text: str) -> str:
    match = _VERSION.match(str(text))
    if match is None:
        parse_version(text)  # raises with the explanation
    return match.group(1) + (" R2" if match.group(2) else "")
