"""A tokenizer that counts words, for fake engines: the fake engine counts a prompt's words as its tokens.

guidellm needs a tokenizer to shape synthetic prompts and count tokens; a fake engine has no
model to take one from, and the HF hub is not asked. This one is a Hugging Face
`tokenizer.json` (WordLevel, split on whitespace), so prompt lengths the tool asks for are the
lengths the fake engine sees. For a real model give its own tokenizer (`--tokenizer`).
"""

from __future__ import annotations

import json
from pathlib import Path

from mipart.fsutil import write_atomic

UNKNOWN = "[UNK]"

TOKENIZER = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [
        {
            "id": 0,
            "content": UNKNOWN,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    ],
    "normalizer": None,
    "pre_tokenizer": {"type": "WhitespaceSplit"},
    "post_processor": None,
    "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},  # joins tokens with spaces
    "model": {"type": "WordLevel", "vocab": {UNKNOWN: 0, "word": 1}, "unk_token": UNKNOWN},
}
CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": UNKNOWN, "model_max_length": 1_000_000}


def word_tokenizer(directory: Path) -> Path:
    """`directory`, holding the word tokenizer (written when absent or different)."""
    for name, content in (("tokenizer.json", TOKENIZER), ("tokenizer_config.json", CONFIG)):
        text = json.dumps(content, indent=1) + "\n"
        path = directory / name
        if not path.is_file() or path.read_text() != text:
            write_atomic(path, text)
    return directory
