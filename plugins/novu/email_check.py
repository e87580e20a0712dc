"""Whether Novu takes an email address: validator.js ``isEmail`` with its default options, the
check class-validator's ``IsEmail`` runs on Novu's subscriber requests.

A looser check let ``a@b.c``, ``john..doe@gmail.com`` or ``user@gmail.com.`` through, and Novu
then answered 422 to the whole identify (the re-check of the vendor audit, against
class-validator 0.15 in Node). Every pattern here is a character class between anchors: linear
in the length of the text.
"""

from __future__ import annotations

import re

MAX_EMAIL = 254
MAX_LOCAL_BYTES = 64
MAX_LABEL = 63

_LOCAL_PART = re.compile(
    r"[a-z\d!#$%&'*+\-/=?^_`{|}~\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef]+", re.IGNORECASE)
_QUOTED_LOCAL = re.compile(
    r"(?:[\s\x01-\x08\x0b\x0c\x0e-\x1f\x7f\x21\x23-\x5b\x5d-\x7e\u00a0-\ud7ff\uf900-\ufdcf"
    r"\ufdf0-\uffef]|\\[\x01-\x09\x0b\x0c\x0d-\x7f\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef])*",
    re.IGNORECASE)
_TLD = re.compile(r"(?:[a-z\u00a1-\u00a8\u00aa-\ud7ff\uf900-\ufdcf\ufdf0-\uffef]{2,}|xn[a-z0-9-]{2,})",
                  re.IGNORECASE)
# JavaScript's \u00a1-\uffff (no "u" flag) takes the two halves of any character past U+FFFF
_LABEL = re.compile(r"[a-z_\u00a1-\U0010ffff0-9-]+", re.IGNORECASE)
_FULL_WIDTH = re.compile(r"[\uff01-\uff5e]")


def is_email(text: str) -> bool:
    """validator.js ``isEmail(text)`` with its defaults: no display name, a domain with a
    top-level domain, no IP address for a domain."""
    if len(text) > MAX_EMAIL or "@" not in text:
        return False
    local, _, domain = text.rpartition("@")
    if len(local.encode()) > MAX_LOCAL_BYTES or len(domain.encode()) > MAX_EMAIL:
        return False
    if not _is_fqdn(domain.lower()):
        return False
    if local.startswith('"'):
        return len(local) > 1 and local.endswith('"') and bool(_QUOTED_LOCAL.fullmatch(local[1:-1]))
    return all(_LOCAL_PART.fullmatch(part) for part in local.split("."))


def _is_fqdn(domain: str) -> bool:
    """validator.js ``isFQDN`` with its defaults (a top-level domain of letters, no trailing
    dot, no underscores, labels of at most 63 characters not starting or ending with '-')."""
    labels = domain.split(".")
    tld = labels[-1]
    if len(labels) < 2 or not _TLD.fullmatch(tld) or tld.isdigit():
        return False
    return all(
        len(label) <= MAX_LABEL and _LABEL.fullmatch(label) and not _FULL_WIDTH.search(label)
        and not label.startswith("-") and not label.endswith("-") and "_" not in label
        for label in labels
    )
