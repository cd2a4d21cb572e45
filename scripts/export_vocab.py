"""Write SmolLM2's tokenizer files into ``vocab/`` from its GGUF.

    python scripts/export_vocab.py            # vocab/smollm2/{tokenizer.json,vocab.json,merges.txt}

The runtime builds the same tokenizer straight from the GGUF; these files exist so that editors,
other tools and the TPU manifest can use the vocabulary without reading a 93 MB model file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from wizardcoder_tpu.inference.models import model_path
from wizardcoder_tpu.inference.weights import open_checkpoint


def main() -> int:
    out = Path(__file__).resolve().parents[1] / "vocab" / "smollm2"
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = open_checkpoint(model_path("smollm2-135m")).tokenizer()
    tokenizer.save(out / "tokenizer.json")
    model = json.loads(tokenizer.backend.to_str())["model"]
    (out / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
