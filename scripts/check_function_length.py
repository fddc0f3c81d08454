#!/usr/bin/env python3
"""Fails when a function in src/ (tests excepted) is longer than 80 lines,
from the first line of its signature to its closing brace.

Functions are found by scanning braces with comments and string literals
blanked out: a '{' opened at namespace or class scope whose head (the text
since the previous ';', '{' or '}') has a parameter list is a function body.
Lambdas and blocks inside functions belong to their function.

    scripts/check_function_length.py [--max N] [--self-test] [paths...]
"""
from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A head that opens a scope, not a function: "namespace x", "class Foo : Bar",
# "template <typename T> struct S", "enum class E : int".
SCOPE = re.compile(r"^(?:template\s*<[^{]*?>\s*)?(?:\[\[[^\]]*\]\]\s*)?"
                   r"(?:inline\s+)?(?:namespace|class|struct|union|enum)\b[^()]*$")
CONTROL = re.compile(r"^\s*(if|for|while|switch|do|else|try|catch|return)\b")


def blank(text: str) -> str:
    """Comments, string and character literals become spaces (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        line_start = i == 0 or text[i - 1] == "\n"
        if line_start and text[i:].lstrip(" ").startswith("#"):  # a preprocessor line
            j = i
            while True:
                j = text.find("\n", j)
                if j < 0 or text[j - 1] != "\\":
                    break
                j += 1
            j = n if j < 0 else j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif text.startswith('R"', i):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            end = text.find(")" + (m.group(1) if m else "") + '"', i)
            j = n if end < 0 else end + len(m.group(1) if m else "") + 2
        elif c in "\"'" and not (c == "'" and i > 0 and text[i - 1].isalnum()):
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            j += 1
        else:
            out.append(c)
            i += 1
            continue
        out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
        i = j
    return "".join(out)


def _initializer(code: str, head_start: int, i: int) -> bool:
    """Whether the '{' at i initializes something rather than opening a
    body: a member in a constructor's initializer list (`) : a_{1}, b_{2} {`),
    where the brace follows a name and the head has ") :"."""
    head = code[head_start:i]
    before = head.rstrip()
    return bool(before) and (before[-1].isalnum() or before[-1] in "_>") and \
        re.search(r"\)\s*:(?!:)", head) is not None and not before.endswith(")")


def functions(text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, head) of every function body in `text`."""
    code = blank(text)
    stack: list[tuple[bool, int, str]] = []  # (is a function body, start line, head)
    found = []
    head_start = 0
    parens = 0  # depth of ( ): braces inside are initializers (`= {}` defaults)
    inits: list[int] = []  # depth of braces that initialize a member or value
    for i, c in enumerate(code):
        if c == "(":
            parens += 1
        elif c == ")":
            parens = max(parens - 1, 0)
        if parens or c not in ";{}":
            continue
        if c == "{" and (inits or _initializer(code, head_start, i)):
            inits.append(i)
            continue
        if c == "}" and inits:
            inits.pop()
            continue
        if c in ";{}":
            if c == "{":
                head = code[head_start:i]
                in_decl = all(not fn for fn, _, _ in stack)
                flat = " ".join(head.split())
                is_fn = (in_decl and "(" in flat and not SCOPE.search(flat)
                         and not CONTROL.match(flat) and not flat.rstrip().endswith("="))
                first = code.count("\n", 0, head_start + len(head) - len(head.lstrip()))
                stack.append((is_fn, first + 1, flat))
            elif c == "}" and stack:
                is_fn, first, flat = stack.pop()
                if is_fn:
                    found.append((first, code.count("\n", 0, i) + 1, flat))
            head_start = i + 1
    return found


def check(paths: list[str], limit: int) -> int:
    bad = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for first, last, head in functions(text):
            if last - first + 1 > limit:
                bad += 1
                name = head.split("(")[0].split()[-1] if head.split("(")[0].split() else head
                print(f"{os.path.relpath(path, ROOT)}:{first}: {name} is {last - first + 1} "
                      f"lines (at most {limit}): split it into helpers", file=sys.stderr)
    print(f"function length: {bad} function(s) over {limit} lines")
    return 1 if bad else 0


def sources() -> list[str]:
    out = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "src")):
        for f in files:
            if f.endswith((".cc", ".h")) and not f.endswith("_test.cc") and "testdata" not in dirpath:
                out.append(os.path.join(dirpath, f))
    return sorted(out)


def self_test() -> int:
    long_body = "\n".join(f"  x += {i};" for i in range(85))
    text = ("#include <x.h>\n#if defined(A)\n#endif\nnamespace a {\nstruct S {\n  int Member(int y) const {\n" + long_body +
            "\n    return y;\n  }\n};\nint F(int x,\n      int y) {\n  auto l = [&] {\n" +
            long_body + "\n  };\n  if (x) {\n  }\n  return \"}\" [0];\n}\n"
            "int Short() { return 1; }  // }\n"
            "template <class T> Result<struct stat> Tpl(T t = {}, int n = T{}) {\n" + long_body +
            "\n}\nS::S(int a) : a_{a}, b_{2} {\n" + long_body + "\n}\n}  // namespace a\n")
    got = [(last - first + 1, head.split("(")[0].split()[-1]) for first, last, head in
           functions(text)]
    ok = got == [(88, "Member"), (93, "F"), (1, "Short"), (87, "Tpl"), (87, "S::S")]
    print(f"self-test: {'ok' if ok else 'FAILED'} {got}")
    return 0 if ok else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max", type=int, default=80)
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("paths", nargs="*")
    a = ap.parse_args()
    if a.self_test:
        sys.exit(self_test())
    sys.exit(check(a.paths or sources(), a.max))
