"""The US state (or DC, Puerto Rico, the Virgin Islands) of a ZIP code, from its 3-digit prefix."""

from __future__ import annotations

import bisect
import re

# (first prefix, last prefix, state): USPS ZIP3 allocation. Prefixes not listed are
# unassigned or military (AA 340, AE 090-098, AP 962-966) or shared by several Pacific
# territories (969), and have no state.
ZIP3_RANGES: tuple[tuple[int, int, str], ...] = (
    (5, 5, "NY"),  # Holtsville (IRS)
    (6, 7, "PR"),
    (8, 8, "VI"),
    (9, 9, "PR"),
    (10, 27, "MA"),
    (28, 29, "RI"),
    (30, 38, "NH"),
    (39, 49, "ME"),
    (50, 54, "VT"),
    (55, 55, "MA"),  # Andover (IRS)
    (56, 59, "VT"),
    (60, 69, "CT"),
    (70, 89, "NJ"),
    (100, 149, "NY"),
    (150, 196, "PA"),
    (197, 199, "DE"),
    (200, 200, "DC"),
    (201, 201, "VA"),  # Dulles
    (202, 205, "DC"),
    (206, 219, "MD"),
    (220, 246, "VA"),
    (247, 268, "WV"),
    (270, 289, "NC"),
    (290, 299, "SC"),
    (300, 319, "GA"),
    (320, 339, "FL"),
    (341, 349, "FL"),
    (350, 369, "AL"),
    (370, 385, "TN"),
    (386, 397, "MS"),
    (398, 399, "GA"),
    (400, 427, "KY"),
    (430, 459, "OH"),
    (460, 479, "IN"),
    (480, 499, "MI"),
    (500, 528, "IA"),
    (530, 549, "WI"),
    (550, 567, "MN"),
    (569, 569, "DC"),
    (570, 577, "SD"),
    (580, 588, "ND"),
    (590, 599, "MT"),
    (600, 629, "IL"),
    (630, 658, "MO"),
    (660, 679, "KS"),
    (680, 693, "NE"),
    (700, 714, "LA"),
    (716, 729, "AR"),
    (730, 731, "OK"),
    (733, 733, "TX"),  # Austin (IRS)
    (734, 749, "OK"),
    (750, 799, "TX"),
    (800, 816, "CO"),
    (820, 831, "WY"),
    (832, 838, "ID"),
    (840, 847, "UT"),
    (850, 865, "AZ"),
    (870, 884, "NM"),
    (885, 885, "TX"),  # El Paso
    (889, 898, "NV"),
    (900, 961, "CA"),
    (967, 968, "HI"),
    (970, 979, "OR"),
    (980, 994, "WA"),
    (995, 999, "AK"),
)

# Single ZIPs whose state differs from their prefix's.
ZIP_EXCEPTIONS = {
    "06390": "NY",  # Fishers Island, served from Connecticut
    "83414": "WY",  # Alta, served from Idaho
    "96799": "AS",  # American Samoa, in Hawaii's prefix
}

_STARTS = [first for first, _, _ in ZIP3_RANGES]
_ZIP = re.compile(r"(\d{5})(?:[-\s]?\d{4})?")


def state_of_zip(zip_code: str) -> str | None:
    """`10001` → `NY`; ZIP+4 (`10001-1234`, `100011234`) too; None for anything else."""
    if not isinstance(zip_code, str):
        return None
    match = _ZIP.fullmatch(zip_code.strip())
    if match is None:
        return None
    five = match[1]
    if five in ZIP_EXCEPTIONS:
        return ZIP_EXCEPTIONS[five]
    prefix = int(five[:3])
    index = bisect.bisect_right(_STARTS, prefix) - 1
    if index < 0:
        return None
    first, last, state = ZIP3_RANGES[index]
    return state if first <= prefix <= last else None
