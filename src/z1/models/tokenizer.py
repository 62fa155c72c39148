"""Prompt building, state binning and tokenizers (docs/model.md#prompt-and-tokenizer).

pi0.5 puts the normalized, unpadded robot state into the text prompt as 256-bin integers:

    "Task: {clean instruction}, State: {d0 d1 ...};\\nAction: "

encoded with BOS and no EOS, right-padded with id 0 (mask False) to `max_token_len`.

Two tokenizers share the `Tokenizer` protocol:
- `BuiltinTokenizer`: word-level, no files, for the tiny/small presets. The state bins -1..255 own dedicated
  ids, so they never collide with words; every other word is hashed with blake2b (stable across processes
  and machines, unlike Python's `hash`).
- `SentencePieceTokenizer`: the PaliGemma `tokenizer.model` supplied by the user (needed for real pi0.5).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from z1.config import PolicyConfig

NUM_STATE_BINS = 256
_STATE_BIN_EDGES = np.linspace(-1.0, 1.0, NUM_STATE_BINS + 1)[:-1]  # (256,) left edges


def discretize_state(state_norm: np.ndarray) -> np.ndarray:
    """Normalized state (..., s) -> int64 bins (..., s) as openpi: digitize(s, linspace(-1,1,257)[:-1]) - 1.

    Values below -1 give -1 (no clipping, as in openpi); values >= 1 - 2/256 give 255.
    """
    x = np.asarray(state_norm, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"discretize_state: the normalized state has non-finite values: {x}")
    return (np.digitize(x, bins=_STATE_BIN_EDGES) - 1).astype(np.int64)


def clean_text(s: str) -> str:
    """openpi's cleaning: strip, then '_' -> ' ', then newline -> ' '."""
    return s.strip().replace("_", " ").replace("\n", " ")


def build_prompt(instruction: str, state_norm: np.ndarray | None) -> str:
    """The pi0.5 prompt "Task: {text}, State: {d0 d1 ...};\\nAction: ".

    With `state_norm=None` (openpi's `discrete_state_input=False`, e.g. pi05_libero) openpi uses the pi0
    format instead: the cleaned text followed by a newline, "{text}\\n".
    """
    text = clean_text(instruction)
    if state_norm is None:
        return f"{text}\n"
    bins = discretize_state(np.asarray(state_norm).reshape(-1))
    return f"Task: {text}, State: {' '.join(str(int(b)) for b in bins)};\nAction: "


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int
    pad_id: int

    def encode(self, text: str, add_bos: bool) -> list[int]: ...


# ------------------------------------------------------------------------------------------ builtin
_INT_RE = re.compile(r"-?\d+")
_WORD_RE = re.compile(r"(?<![\w-])-?\d+(?!\w)|\w+|\n|[^\w\s]")


class BuiltinTokenizer:
    """Word-level tokenizer with no files.

    Ids: 0 pad, 1 eos, 2 bos, 3 newline; 4..260 the integers -1..255 (state bins); the rest are hashed
    words and punctuation (lower-cased, blake2b). Words may collide with each other (the vocabulary is
    small) but never with the state bins or the special ids.
    """

    pad_id = 0
    eos_id = 1
    bos_id = 2
    newline_id = 3
    _int_base = 4  # id of the integer -1
    _first_word_id = _int_base + NUM_STATE_BINS + 1  # 261
    min_vocab_size = _first_word_id + 64

    def __init__(self, vocab_size: int):
        if vocab_size < self.min_vocab_size:
            raise ValueError(
                f"BuiltinTokenizer needs vocab_size >= {self.min_vocab_size} (257 ids are reserved for the "
                f"state bins -1..255 and 4 for specials), got {vocab_size}; raise PolicyConfig.vocab_size"
            )
        self.vocab_size = int(vocab_size)
        self._num_word_ids = self.vocab_size - self._first_word_id
        self._cache: dict[str, int] = {}  # word -> id memo (pure function of the word)

    def word_id(self, word: str) -> int:
        i = self._cache.get(word)
        if i is None:
            i = self._word_id(word)
            if len(self._cache) < 1 << 16:
                self._cache[word] = i
        return i

    def _word_id(self, word: str) -> int:
        if word == "\n":
            return self.newline_id
        if _INT_RE.fullmatch(word):
            v = int(word)
            if -1 <= v < NUM_STATE_BINS and word == str(v):  # "007" is a word, "7" a bin
                return self._int_base + v + 1
        digest = hashlib.blake2b(word.lower().encode("utf-8"), digest_size=8).digest()
        return self._first_word_id + int.from_bytes(digest, "little") % self._num_word_ids

    def split(self, text: str) -> list[str]:
        return _WORD_RE.findall(text)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [self.word_id(w) for w in self.split(text)]
        return [self.bos_id, *ids] if add_bos else ids


# ------------------------------------------------------------------------------------ sentencepiece
class SentencePieceTokenizer:
    """A SentencePiece model from a local file, e.g. PaliGemma's `paligemma_tokenizer.model` (257152 ids)."""

    pad_id = 0

    def __init__(self, path: str | Path):
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"SentencePiece tokenizer file not found: {p}. pi0.5 needs PaliGemma's tokenizer.model "
                "(openpi caches it at ~/.cache/openpi/big_vision/paligemma_tokenizer.model; the HF repo "
                "google/paligemma-3b-pt-224 has it as tokenizer.model). Pass its local path."
            )
        try:
            import sentencepiece as spm
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the SentencePiece tokenizer needs the `sentencepiece` package: pip install -e "
                "'.[tokenizer]' in the z1 checkout"
            ) from e
        self.path = p
        self._sp = spm.SentencePieceProcessor(model_file=str(p))
        self.vocab_size = int(self._sp.get_piece_size())
        self.bos_id = int(self._sp.bos_id())
        if self.bos_id < 0:
            raise ValueError(f"SentencePiece model {p} defines no BOS token; pi0.5 prompts start with BOS")

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = list(self._sp.encode(text))
        return [self.bos_id, *ids] if add_bos else ids


# -------------------------------------------------------------------------------------------- API
def tokenize_prompt(
    tok: Tokenizer, instruction: str, state_norm: np.ndarray | None, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """-> ids int64 (l,) right-padded with 0, mask bool (l,), l = max_len. Too-long prompts are truncated
    with a warning (as openpi)."""
    if state_norm is None:  # openpi encodes the text and the newline separately in this format
        ids = tok.encode(clean_text(instruction), add_bos=True) + tok.encode("\n", add_bos=False)
    else:
        ids = tok.encode(build_prompt(instruction, state_norm), add_bos=True)
    if len(ids) > max_len:
        warnings.warn(
            f"prompt has {len(ids)} tokens, more than max_token_len={max_len}; truncating "
            f"(instruction {instruction[:60]!r}). Raise PolicyConfig.max_token_len to keep the whole state.",
            stacklevel=2,
        )
        ids = ids[:max_len]
    out = np.full(max_len, tok.pad_id, dtype=np.int64)
    out[: len(ids)] = ids
    mask = np.zeros(max_len, dtype=bool)
    mask[: len(ids)] = True
    return out, mask


def make_tokenizer(config: PolicyConfig, path: str | Path | None = None) -> Tokenizer:
    """The tokenizer a policy config asks for. SentencePiece configs need `path` (a local tokenizer.model)."""
    if config.tokenizer == "builtin":
        return BuiltinTokenizer(config.vocab_size)
    if config.tokenizer == "sentencepiece":
        if path is None:
            raise ValueError(
                f"policy config {config.name!r} uses a SentencePiece tokenizer; pass the path of a local "
                "tokenizer.model (PaliGemma's paligemma_tokenizer.model for pi0.5)"
            )
        tok = SentencePieceTokenizer(path)
        if tok.vocab_size > config.vocab_size:
            raise ValueError(
                f"tokenizer {path} has {tok.vocab_size} ids but the model's embedding has only "
                f"{config.vocab_size}; use the tokenizer the checkpoint was trained with"
            )
        return tok
    raise ValueError(f"unknown tokenizer kind {config.tokenizer!r}; expected 'builtin' or 'sentencepiece'")
