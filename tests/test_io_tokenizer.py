"""Prompt format, state bins, builtin/SentencePiece tokenizers, padding and truncation."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from fakes import tiny_sentencepiece
from z1.config import policy_preset
from z1.models import tokenizer as tokenizer_module
from z1.models.tokenizer import (
    BuiltinTokenizer,
    SentencePieceTokenizer,
    build_prompt,
    clean_text,
    discretize_state,
    make_tokenizer,
    tokenize_prompt,
)


def reference_bin(v: float) -> int:
    """Brute force: the largest i with -1 + 2i/256 <= v (i in 0..255), or -1 below every edge."""
    best = -1
    for i in range(256):
        if -1.0 + 2.0 * i / 256.0 <= v:
            best = i
    return best


def test_discretize_matches_brute_force_and_edges():
    rng = np.random.default_rng(0)
    xs = np.concatenate(
        [
            rng.uniform(-1.3, 1.3, 500),
            [-5.0, -1.0000001, -1.0, -0.9921875, 0.0, 0.9921874, 0.9921875, 1.0, 7.0],
        ]
    )
    got = discretize_state(xs)
    assert got.dtype == np.int64
    assert got.tolist() == [reference_bin(float(v)) for v in xs]
    assert discretize_state(np.array([-1.5]))[0] == -1  # below -1: no clipping
    assert discretize_state(np.array([-1.0]))[0] == 0
    assert discretize_state(np.array([0.0]))[0] == 128
    assert discretize_state(np.array([0.9921875, 3.0])).tolist() == [255, 255]
    with pytest.raises(ValueError, match="non-finite"):
        discretize_state(np.array([np.nan]))


def test_prompt_exact_string():
    s = np.array([-1.2, -1.0, 0.0, 0.5, 0.999])
    assert (
        build_prompt("  pick_up the\nred cube ", s)
        == "Task: pick up the red cube, State: -1 0 128 192 255;\nAction: "
    )
    assert clean_text(" a_b\nc ") == "a b c"
    assert build_prompt("open drawer", None) == "open drawer\n"


def test_builtin_ids_state_bins_are_dedicated():
    tok = BuiltinTokenizer(1024)
    bin_ids = {tok.word_id(str(v)) for v in range(-1, 256)}
    assert len(bin_ids) == 257  # all distinct
    assert min(bin_ids) == 4 and max(bin_ids) == 260
    words = [f"w{i}" for i in range(3000)] + [
        "Task",
        "State",
        "Action",
        ":",
        ",",
        ";",
        "256",
        "-2",
        "007",
        "1000",
    ]
    word_ids = {tok.word_id(w) for w in words}
    assert not word_ids & bin_ids
    assert not word_ids & {0, 1, 2, 3}
    assert all(261 <= i < 1024 for i in word_ids)
    ids = tok.encode(build_prompt("Pick cube", np.array([-1.5, 0.9999])), add_bos=True)
    # BOS Task : pick cube , State : -1 255 ; \n Action :
    assert ids[0] == tok.bos_id == 2
    assert ids[8] == tok.word_id("-1") == 4 and ids[9] == tok.word_id("255") == 260
    assert ids[11] == tok.newline_id
    assert len(ids) == 14
    assert tok.encode("pick", add_bos=False) == [tok.word_id("pick")]
    assert tok.word_id("Pick") == tok.word_id("pick")  # case-folded
    with pytest.raises(ValueError, match="vocab_size"):
        BuiltinTokenizer(100)


def test_builtin_ids_stable_across_processes():
    # load the module file directly (not the z1.models package, which imports torch) to keep this fast
    code = (
        "import importlib.util as u;"
        f"s = u.spec_from_file_location('tok', {tokenizer_module.__file__!r}); m = u.module_from_spec(s);"
        "s.loader.exec_module(m);"
        "print(m.BuiltinTokenizer(1024).encode('Task: open the drawer, State: 3 -1;\\nAction: ', True))"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outs.add(r.stdout.strip())
    assert len(outs) == 1
    here = BuiltinTokenizer(1024).encode("Task: open the drawer, State: 3 -1;\nAction: ", True)
    assert outs.pop() == str(here)


def test_tokenize_prompt_pad_and_truncate():
    tok = BuiltinTokenizer(512)
    ids, mask = tokenize_prompt(tok, "reach", np.array([0.0]), 16)
    want = tok.encode("Task: reach, State: 128;\nAction: ", True)
    assert ids.dtype == np.int64 and mask.dtype == np.bool_ and ids.shape == mask.shape == (16,)
    assert ids[: len(want)].tolist() == want
    assert (ids[len(want) :] == 0).all() and mask.sum() == len(want) and mask[: len(want)].all()
    with pytest.warns(UserWarning, match="truncating"):
        ids2, mask2 = tokenize_prompt(tok, "reach", np.zeros(20), 16)
    assert mask2.all() and ids2.tolist() == tok.encode(build_prompt("reach", np.zeros(20)), True)[:16]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize_prompt(tok, "reach", np.zeros(2), 16)  # fits: no warning
    # without state: openpi's pi0-style "text" + "\n" encoded separately
    ids3, _ = tokenize_prompt(tok, "reach", None, 16)
    assert ids3[:3].tolist() == [2, tok.word_id("reach"), tok.newline_id]


def test_make_tokenizer_and_sentencepiece(tmp_path):
    tiny = policy_preset("tiny")
    assert isinstance(make_tokenizer(tiny), BuiltinTokenizer)
    with pytest.raises(ValueError, match="tokenizer.model"):
        make_tokenizer(policy_preset("pi05"), None)
    with pytest.raises(FileNotFoundError, match="not found"):
        SentencePieceTokenizer(tmp_path / "nope.model")
    spm = pytest.importorskip("sentencepiece")
    model_file = tiny_sentencepiece(tmp_path)
    cfg = policy_preset("pi05").with_(vocab_size=64)
    tok = make_tokenizer(cfg, model_file)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    assert (
        isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == sp.get_piece_size() and tok.bos_id == 2
    )
    ids, mask = tokenize_prompt(tok, "pick up the red cube", np.array([-0.999, 0.0]), 64)
    want = [2, *sp.encode("Task: pick up the red cube, State: 0 128;\nAction: ")]
    assert ids[: len(want)].tolist() == want and mask.sum() == len(want)
    with pytest.raises(ValueError, match="embedding"):
        make_tokenizer(cfg.with_(vocab_size=10), model_file)
