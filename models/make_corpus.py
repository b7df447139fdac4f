#!/usr/bin/env python3
"""Builds the demo training corpus from the Debian package fortunes (and fortunes-min):
/usr/share/games/fortunes/<file>, fortunes separated by lines holding '%'.

Each fortune becomes one paragraph: attribution lines ('-- author') dropped, whitespace
collapsed, ASCII only, 30..400 characters. Paragraphs are separated by a blank line, in
file order (files in the order listed below), so the output is a function of the package.

  make_corpus.py OUT_CORPUS [--prompts TRAIN EVAL]

With --prompts, also writes prompt files: the first 3 words of fortunes; every 10th
fortune's opening goes to EVAL (the held-out set), the others to TRAIN; duplicates removed,
capped at 400 train / 60 eval prompts."""
import re
import sys

SRC = "/usr/share/games/fortunes"
FILES = ["cookie", "people", "wisdom", "work", "love", "men-women", "literature", "fortunes",
         "humorists", "platitudes", "miscellaneous", "education", "food", "kids", "politics",
         "science", "pets", "magic", "medicine", "sports", "tao", "law", "riddles", "goedel"]


def fortunes():
    for name in FILES:
        with open(f"{SRC}/{name}", "rb") as f:
            raw = f.read().decode("latin-1")
        for block in raw.split("\n%\n"):
            lines = [l for l in block.split("\n") if not re.match(r"^\s*--", l) and l.strip() != "%"]
            text = re.sub(r"\s+", " ", " ".join(lines)).strip()
            if not text or not all(32 <= ord(c) < 127 for c in text):
                continue
            if 30 <= len(text) <= 400:
                yield text


def main():
    items = list(fortunes())
    with open(sys.argv[1], "w") as f:
        f.write("\n\n".join(items) + "\n")
    print(f"{sys.argv[1]}: {len(items)} fortunes, {sum(len(t) for t in items)} characters")
    if len(sys.argv) == 5 and sys.argv[2] == "--prompts":
        train, evl, seen = [], [], set()
        for i, t in enumerate(items):
            words = t.split(" ")
            if len(words) < 6 or not re.match(r"^[A-Za-z][A-Za-z',]*$", words[0]):
                continue
            p = " ".join(words[:3]).rstrip(",;:")
            if p in seen or not re.match(r"^[A-Za-z' ,]+$", p):
                continue
            seen.add(p)
            (evl if i % 10 == 0 else train).append(p)
        for path, lst, cap in ((sys.argv[3], train, 400), (sys.argv[4], evl, 60)):
            with open(path, "w") as f:
                f.write("\n".join(lst[:cap]) + "\n")
            print(f"{path}: {min(cap, len(lst))} prompts")


main()
