"""Scoring answers against references: exact match, containment, and math answers in \\boxed{...}.

Text normalization (exact_match, contains): strip, collapse every whitespace run to one space, and
case-fold unless `ignore_case=False`.

Math answers (boxed_match): the content of the LAST `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed x`
without braces) of the prediction, found with balanced braces (escaped `\\{` `\\}` do not count),
against the reference's last box, or the whole reference when it has none. Both are normalized by
`normalize_math`, this documented set and nothing more:
  - drop `$` (and `\\$`), `\\left`, `\\right`, spacing commands (`\\,` `\\;` `\\:` `\\!` `\\quad`
    `\\qquad`), `\\%`, `^\\circ`/`^{\\circ}` and all whitespace; a trailing period;
  - unwrap `\\text{}`, `\\textbf{}`, `\\mathrm{}`, `\\mathbf{}`, `\\displaystyle`; `\\dfrac`/`\\tfrac` ->
    `\\frac`; `\\frac{a}{b}` (nested, balanced) and `\\frac ab` -> `(a)/(b)` with single-token parts
    left unparenthesized;
  - thousands separators in numbers like `1,234,567`.
Then, if both sides read as rational numbers (integer, decimal, or a/b of those, optional sign),
they are compared as exact fractions (`0.5` == `1/2` == `\\frac{1}{2}`, `2.0` == `2`); otherwise
the normalized strings are compared.
"""
from __future__ import annotations

import re
from fractions import Fraction


def normalize_text(s: str, ignore_case: bool = True) -> str:
    s = " ".join(s.split())
    return s.casefold() if ignore_case else s


def exact_match(prediction: str, reference: str, ignore_case: bool = True) -> bool:
    return normalize_text(prediction, ignore_case) == normalize_text(reference, ignore_case)


def contains(prediction: str, reference: str, ignore_case: bool = True) -> bool:
    """The normalized reference occurs in the normalized prediction (an empty reference never does)."""
    ref = normalize_text(reference, ignore_case)
    return bool(ref) and ref in normalize_text(prediction, ignore_case)


def _braced(s: str, i: int) -> tuple[str, int] | None:
    """s[i] == "{": (content up to the matching "}", index after it), or None when unbalanced."""
    depth, j = 0, i
    while j < len(s):
        ch = s[j]
        if ch == "\\":
            j += 2                            # an escaped character, \{ and \} included
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1:j], j + 1
        j += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} / \\fbox{...} / `\\boxed x` in text, else None."""
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text))):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            got = _braced(text, i)
            if got is not None:
                return got[0]
        elif i > m.end():                     # "\boxed 5": up to whitespace or "$"
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group(0)
    return None


def _replace_frac(s: str) -> str:
    out, i = [], 0
    while True:
        j = s.find("\\frac", i)
        if j < 0:
            return "".join(out) + s[i:]
        out.append(s[i:j])
        k = j + len("\\frac")
        parts = []
        for _ in range(2):
            if k < len(s) and s[k] == "{":
                got = _braced(s, k)
                if got is None:
                    break
                parts.append(_replace_frac(got[0]))
                k = got[1]
            elif k < len(s) and s[k] != "\\":
                parts.append(s[k])            # \frac12 shorthand: one character per part
                k += 1
        if len(parts) < 2:                    # malformed: keep the rest verbatim
            return "".join(out) + s[j:]
        wrap = [p if re.fullmatch(r"[-\w.]+", p) and not p.startswith("-") else f"({p})" for p in parts]
        out.append(f"{wrap[0]}/{wrap[1]}")
        i = k


def _unwrap(s: str, command: str) -> str:
    while (j := s.find(command + "{")) >= 0:
        got = _braced(s, j + len(command))
        if got is None:
            break
        s = s[:j] + got[0] + s[got[1]:]
    return s


def normalize_math(s: str) -> str:
    for cmd in ("\\text", "\\textbf", "\\mathrm", "\\mathbf"):
        s = _unwrap(s, cmd)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for junk in ("\\left", "\\right", "\\displaystyle", "\\qquad", "\\quad", "\\,", "\\;", "\\:", "\\!",
                 "^{\\circ}", "^\\circ", "\\%", "\\$", "$"):
        s = s.replace(junk, "")
    s = "".join(s.split())
    s = _replace_frac(s)
    s = re.sub(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d])", lambda m: m.group(1).replace(",", ""), s)
    return s.rstrip(".")


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"


def as_rational(s: str) -> Fraction | None:
    """`s` (normalized) as an exact number: 3, -0.25, 1/2, (1)/(2); else None."""
    m = re.fullmatch(rf"\(?({_NUMBER})\)?(?:/\(?({_NUMBER})\)?)?", s)
    if not m:
        return None
    num = Fraction(m.group(1))
    if m.group(2) is None:
        return num
    den = Fraction(m.group(2))
    return num / den if den else None


def math_equal(a: str, b: str) -> bool:
    na, nb = normalize_math(a), normalize_math(b)
    ra, rb = as_rational(na), as_rational(nb)
    if ra is not None and rb is not None:
        return ra == rb
    return na == nb


def boxed_match(prediction: str, reference: str) -> bool:
    """The prediction's last box equals the reference's last box (or the whole reference)."""
    pred = last_boxed(prediction)
    if pred is None:
        return False
    ref = last_boxed(reference)
    return math_equal(pred, reference if ref is None else ref)
