"""Qwen3.5's byte-level BPE tokenizer, a streaming detokenizer and stop-string matching.

One `Tokenizer` reads a Hugging Face `tokenizer.json` (a checkpoint's file, or the blob a model
file embeds) and encodes with one of two backends that give identical ids:

* `tokenizers` (Rust, fast; the `tokenizer` extra) where it installs;
* a pure-Python byte-level BPE (NFC, the split regex rebuilt for the stdlib `re` module, the
  merges replayed by rank) for boards and Termux, where `tokenizers` may not build.

Both backends only encode ordinary text. Added tokens (`<|im_start|>` ...) are matched here, and
only when the caller allows it: text typed by a user is encoded as text, so a user cannot
forge control tokens (`encode(text)` vs `encode(text, allowed_special=True)`). Decoding maps ids
to bytes here too, so both backends decode identically and the streaming detokenizer never
emits half a UTF-8 character.

Used by `generate.py` (prompts, streaming output, stop strings), `chat.py` and the CLI.
"""

from __future__ import annotations

import codecs
import heapq
import itertools
import json
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from ..errors import TokenizerError

BACKENDS = ("auto", "tokenizers", "python")
# Unicode White_Space, which `\s` means in the regex engines of tokenizers and tiktoken. Python's
# `\s` also matches U+001C..U+001F, so the stdlib pattern spells the class out.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


# --- byte-level mapping -------------------------------------------------------------------------
@lru_cache(maxsize=1)
def byte_to_char() -> tuple[str, ...]:
    """GPT-2's map of the 256 byte values to printable characters (byte-level BPE vocabularies)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = [], 0
    for b in range(256):
        if b in printable:
            table.append(chr(b))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return tuple(table)


@lru_cache(maxsize=1)
def _char_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(byte_to_char())}


def clean_text(text: str) -> str:
    """Replaces lone surrogates (not encodable as UTF-8) with U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # Via UTF-16 so that a surrogate pair split into two code points is joined, not replaced.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# --- the pre-tokenizer regex for the stdlib `re` module -----------------------------------------
_CLASS_RE = re.compile(r"\\p\{([LMN])\}")


@lru_cache(maxsize=1)
def _unicode_classes() -> dict[str, str]:
    # Character-class bodies for \p{L}, \p{M}, \p{N} from this Python's unicodedata. Letters,
    # marks and digits live below U+40000 and in the variation selectors at U+E0100.
    classes: dict[str, list[str]] = {"L": [], "M": [], "N": []}
    for lo, hi in ((0, 0x40000), (0xE0000, 0xE1000)):
        majors = [c[0] for c in map(unicodedata.category, map(chr, range(lo, hi)))]
        cp = lo
        for major, run in itertools.groupby(majors):
            n = sum(1 for _ in run)
            if major in classes:
                first, last = re.escape(chr(cp)), re.escape(chr(cp + n - 1))
                classes[major].append(first if n == 1 else f"{first}-{last}")
            cp += n
    return {k: "".join(v) for k, v in classes.items()}


def stdlib_pattern(pattern: str) -> re.Pattern[str]:
    """Rewrites a tokenizer split regex (Oniguruma/Rust syntax) for Python's `re` module.

    `\\p{L}`, `\\p{M}`, `\\p{N}` become explicit character classes and `\\s`/`\\S` become Unicode
    White_Space; everything else in the Qwen patterns (scoped `(?i:...)`, lookahead) is common
    syntax. Raises TokenizerError for other `\\p{...}` classes.
    """
    classes = _unicode_classes()
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            esc = pattern[i : i + 2]
            if esc == "\\p":
                m = _CLASS_RE.match(pattern, i)
                if m is None:
                    raise TokenizerError(
                        f"unsupported class in split regex at {pattern[i : i + 8]!r}"
                    )
                body = classes[m.group(1)]
                out.append(body if in_class else f"[{body}]")
                i = m.end()
                continue
            if esc in ("\\s", "\\S"):
                neg = esc == "\\S"
                if in_class and neg:
                    raise TokenizerError("\\S inside a character class is not supported")
                out.append(_WHITE_SPACE if in_class else f"[{'^' if neg else ''}{_WHITE_SPACE}]")
            else:
                out.append(esc)
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return re.compile("".join(out))


# --- backends -----------------------------------------------------------------------------------
def merge_lowest(symbols: list[Any], rank: Callable[[Any, Any], int | None]) -> Iterator[Any]:
    """Byte-pair merging in place: repeatedly joins the adjacent pair of lowest `rank` (leftmost
    on ties, Hugging Face's BPE order) until no pair has a rank; yields each pair it joins."""
    ranks = [rank(a, b) for a, b in itertools.pairwise(symbols)]
    while True:
        best, best_rank = -1, None
        for i, r in enumerate(ranks):
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best_rank is None:
            return
        yield symbols[best], symbols[best + 1]
        symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
        del ranks[best]
        if best > 0:
            ranks[best - 1] = rank(symbols[best - 1], symbols[best])
        if best < len(symbols) - 1:
            ranks[best] = rank(symbols[best], symbols[best + 1])


class TokenizerBackend(Protocol):
    """Encodes ordinary text (no added tokens) and names token ids."""

    name: str
    vocab_size: int  # ordinary (BPE) tokens, without the added ones

    def encode_ordinary(self, text: str) -> list[int]: ...

    def id_to_token(self, token_id: int) -> str | None: ...

    def added_tokens(self) -> list[tuple[str, int, bool]]:
        """(content, id, special) of every added token."""
        ...


class PythonBPE:
    """Pure-Python byte-level BPE over a `tokenizer.json` (NFC, Split regex, ByteLevel, BPE)."""

    name = "python"
    _LONG_WORD = 48  # above this many symbols the heap algorithm beats rescanning

    def __init__(self, spec: dict[str, Any]):
        model = spec.get("model") or {}
        if model.get("type") != "BPE":
            raise TokenizerError(f"tokenizer.json: model type {model.get('type')!r}, not BPE")
        self.vocab: dict[str, int] = model["vocab"]
        self.ignore_merges = bool(model.get("ignore_merges", False))
        self.merges: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(model["merges"]):
            a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
            self.merges.setdefault((a, b), rank)
        self._inverse: list[str | None] | None = None
        self._nfc = _check_normalizer(spec.get("normalizer"))
        self._split = stdlib_pattern(_split_regex(spec.get("pre_tokenizer")))
        self._byte_chars = byte_to_char()
        self._cache: dict[str, list[int]] = {}
        self.vocab_size = max(self.vocab.values(), default=-1) + 1
        self._added = [
            (str(e["content"]), int(e["id"]), bool(e.get("special")))
            for e in spec.get("added_tokens") or []
        ]

    def added_tokens(self) -> list[tuple[str, int, bool]]:
        return list(self._added)

    def encode_ordinary(self, text: str) -> list[int]:
        if self._nfc:
            text = unicodedata.normalize("NFC", text)
        ids: list[int] = []
        cache, table = self._cache, self._byte_chars
        for piece in self._split.findall(text):
            word = "".join(table[b] for b in piece.encode("utf-8"))
            got = cache.get(word)
            if got is None:
                got = self._bpe(word)
                if len(cache) > 100_000:
                    cache.clear()
                cache[word] = got
            ids.extend(got)
        return ids

    def id_to_token(self, token_id: int) -> str | None:
        if self._inverse is None:
            inverse: list[str | None] = [None] * (max(self.vocab.values()) + 1)
            for token, i in self.vocab.items():
                inverse[i] = token
            self._inverse = inverse
        return self._inverse[token_id] if 0 <= token_id < len(self._inverse) else None

    def _bpe(self, word: str) -> list[int]:
        vocab = self.vocab
        if (self.ignore_merges and word in vocab) or len(word) == 1:
            return [vocab[word]]
        symbols = self._merge_heap(word) if len(word) > self._LONG_WORD else self._merge(word)
        return [vocab[s] for s in symbols]

    def _merge(self, word: str) -> list[str]:
        merges = self.merges
        symbols = list(word)
        for _ in merge_lowest(symbols, lambda a, b: merges.get((a, b))):
            pass
        return symbols

    def _merge_heap(self, word: str) -> list[str]:
        # The same order with a heap of (rank, position) over a linked list: O(n log n).
        merges = self.merges
        symbols: list[str | None] = list(word)
        nxt = list(range(1, len(word) + 1))
        prv = list(range(-1, len(word) - 1))
        heap = [
            (r, i)
            for i in range(len(word) - 1)
            if (r := merges.get((word[i], word[i + 1]))) is not None
        ]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            left = symbols[i]
            if left is None or j >= len(word):
                continue
            right = symbols[j]
            if right is None or merges.get((left, right)) != rank:
                continue  # stale: one side has changed since this pair was pushed
            symbols[i] = left + right
            symbols[j] = None
            nxt[i] = nxt[j]
            if nxt[j] < len(word):
                prv[nxt[j]] = i
            if prv[i] >= 0 and (r := merges.get((symbols[prv[i]], symbols[i]))) is not None:
                heapq.heappush(heap, (r, prv[i]))
            if nxt[i] < len(word) and (r := merges.get((symbols[i], symbols[nxt[i]]))) is not None:
                heapq.heappush(heap, (r, i))
        return [s for s in symbols if s is not None]


class HFBackend:
    """The `tokenizers` library on a `tokenizer.json`.

    Ordinary text goes through the normalizer, pre-tokenizer and BPE model directly, so added
    tokens are never matched there (this class matches them itself, when allowed).
    """

    name = "tokenizers"

    def __init__(self, text: str):
        from ..errors import require

        tokenizers = require("tokenizers", "tokenizer")
        try:
            self._tok = tokenizers.Tokenizer.from_str(text)
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise TokenizerError(f"not a valid tokenizer.json (tokenizers: {e})") from e
        self._normalizer = self._tok.normalizer
        self._pre_tokenizer = self._tok.pre_tokenizer
        self._model = self._tok.model
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=False))

    def encode_ordinary(self, text: str) -> list[int]:
        if self._normalizer is not None:
            text = self._normalizer.normalize_str(text)
        pieces = (
            [p for p, _ in self._pre_tokenizer.pre_tokenize_str(text)]
            if self._pre_tokenizer is not None
            else [text]
        )
        tokenize = self._model.tokenize
        return [t.id for piece in pieces for t in tokenize(piece)]

    def id_to_token(self, token_id: int) -> str | None:
        if token_id >= self.vocab_size:
            return None  # added tokens are not byte-level; the Tokenizer names them
        return self._tok.id_to_token(token_id)

    def added_tokens(self) -> list[tuple[str, int, bool]]:
        return [
            (t.content, int(i), bool(t.special))
            for i, t in sorted(self._tok.get_added_tokens_decoder().items())
        ]


def _check_normalizer(normalizer: dict[str, Any] | None) -> bool:
    if normalizer is None:
        return False
    if normalizer.get("type") == "NFC":
        return True
    raise TokenizerError(f"tokenizer.json: unsupported normalizer {normalizer.get('type')!r}")


def _split_regex(pre_tokenizer: dict[str, Any] | None) -> str:
    # The shape Qwen uses: Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)].
    steps = (pre_tokenizer or {}).get("pretokenizers") or []
    kinds = [s.get("type") for s in steps]
    if (
        kinds != ["Split", "ByteLevel"]
        or steps[0].get("behavior") != "Isolated"
        or steps[0].get("invert")
        or "Regex" not in steps[0].get("pattern", {})
        or steps[1].get("use_regex")
        or steps[1].get("add_prefix_space")
    ):
        raise TokenizerError(
            "tokenizer.json: unsupported pre-tokenizer (expected Split(Regex, Isolated) then "
            f"ByteLevel without regex or prefix space), found {kinds}"
        )
    return str(steps[0]["pattern"]["Regex"])


# --- the tokenizer ------------------------------------------------------------------------------
def _resolve(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend != "auto":
        return backend
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return "python"
    return "tokenizers"


class Tokenizer:
    """A byte-level BPE tokenizer with added (special) tokens.

    Args:
        spec: the parsed `tokenizer.json`.
        backend: "auto" (`tokenizers` if importable, else "python"), "tokenizers" or "python".
    """

    def __init__(self, spec: dict[str, Any], backend: str = "auto"):
        if _resolve(backend) == "tokenizers":
            self._setup(HFBackend(json.dumps(spec)))
        else:
            try:
                self._setup(PythonBPE(spec))
            except (KeyError, TypeError, AttributeError, ValueError) as e:
                if isinstance(e, TokenizerError):
                    raise
                raise TokenizerError(f"not a valid tokenizer.json ({type(e).__name__}: {e})") from e

    def _setup(self, backend: TokenizerBackend) -> None:
        self.backend = backend
        # content -> id of every added token, and the ids of control ("special") tokens
        added = backend.added_tokens()
        self.added_tokens: dict[str, int] = {content: i for content, i, _ in added}
        self.special_ids: frozenset[int] = frozenset(i for _, i, special in added if special)
        self.vocab_size = max([backend.vocab_size - 1, *self.added_tokens.values()]) + 1
        self._added_by_id = {i: t for t, i in self.added_tokens.items()}
        by_length = sorted(self.added_tokens, key=len, reverse=True)
        self._added_re = re.compile("|".join(map(re.escape, by_length)) or "(?!)")
        self._bytes: dict[int, bytes] = {}
        self._char_to_byte = _char_to_byte()

    @classmethod
    def from_file(cls, path: str | Path, backend: str = "auto") -> Tokenizer:
        """Reads a `tokenizer.json` file."""
        path = Path(path)
        try:
            return cls.from_json(path.read_bytes(), backend)
        except OSError as e:
            raise TokenizerError(f"{path}: cannot read the tokenizer ({e.strerror})") from e
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from e

    @classmethod
    def from_json(cls, data: str | bytes, backend: str = "auto") -> Tokenizer:
        """Parses `tokenizer.json` text (e.g. the blob a model file embeds)."""
        if _resolve(backend) == "tokenizers":
            # Straight from the text: parsing 10 MB of JSON in Python as well would double the
            # load time.
            try:
                text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
            except UnicodeDecodeError as e:
                raise TokenizerError(f"not a valid tokenizer.json (not UTF-8: {e})") from e
            tok = cls.__new__(cls)
            tok._setup(HFBackend(text))
            return tok
        try:
            spec = json.loads(data)
        except ValueError as e:
            raise TokenizerError(f"not a valid tokenizer.json ({e})") from e
        if not isinstance(spec, dict):
            raise TokenizerError("not a valid tokenizer.json (not a JSON object)")
        return cls(spec, "python")

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # --- encoding ---
    def encode(
        self, text: str | bytes, *, allowed_special: bool | Collection[str] = False
    ) -> list[int]:
        """Token ids of `text`; no BOS/EOS is added (Qwen adds none).

        Args:
            text: a str (lone surrogates become U+FFFD, as in tiktoken) or UTF-8 bytes.
            allowed_special: which added-token texts become their token: False (none: the text
                is encoded as ordinary text, as user input must be), True (all) or a set.

        Raises:
            TokenizerError: `text` is bytes that are not valid UTF-8.
        """
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise TokenizerError(
                    f"input is not valid UTF-8: byte {e.start} ({bytes(text)[e.start]:#04x}) "
                    f"{e.reason}"
                ) from e
        text = clean_text(text)
        if not allowed_special or not self.added_tokens:
            return self.backend.encode_ordinary(text) if text else []
        allowed = None if allowed_special is True else set(allowed_special)
        ids: list[int] = []
        start = 0
        for m in self._added_re.finditer(text):
            if allowed is not None and m.group() not in allowed:
                continue
            if m.start() > start:
                ids += self.backend.encode_ordinary(text[start : m.start()])
            ids.append(self.added_tokens[m.group()])
            start = m.end()
        if start < len(text):
            ids += self.backend.encode_ordinary(text[start:])
        return ids

    def encode_segments(self, segments: Iterable[tuple[str, bool]]) -> list[int]:
        """Encodes (text, is_control) segments: control segments are added-token texts.

        Consecutive ordinary segments are joined before encoding so a split point does not change
        the tokens (chat templates use this for user text next to template control tokens).
        """
        ids: list[int] = []
        pending: list[str] = []
        for text, control in segments:
            if not control:
                pending.append(text)
                continue
            if pending:
                ids += self.encode("".join(pending))
                pending = []
            if text not in self.added_tokens:
                raise TokenizerError(f"{text!r} is not an added token of this tokenizer")
            ids.append(self.added_tokens[text])
        if pending:
            ids += self.encode("".join(pending))
        return ids

    # --- decoding ---
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (an added token's UTF-8 text).

        Raises:
            TokenizerError: the id is not in this tokenizer's vocabulary.
        """
        got = self._bytes.get(token_id)
        if got is not None:
            return got
        added = self._added_by_id.get(token_id)
        if added is not None:
            got = added.encode("utf-8")
        else:
            token = self.backend.id_to_token(token_id) if token_id >= 0 else None
            if token is None:
                raise TokenizerError(
                    f"token id {token_id} is not in the vocabulary (0..{self.vocab_size - 1})"
                )
            try:
                got = bytes(self._char_to_byte[c] for c in token)
            except KeyError as e:
                raise TokenizerError(f"token {token_id} {token!r} is not byte-level") from e
        self._bytes[token_id] = got
        return got

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; invalid UTF-8 (a sequence cut mid-character) decodes to U+FFFD."""
        return self.decode_bytes(ids, skip_special_tokens=skip_special_tokens).decode(
            "utf-8", "replace"
        )

    def decode_bytes(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> bytes:
        special = self.special_ids if skip_special_tokens else ()
        return b"".join(self.token_bytes(int(i)) for i in ids if int(i) not in special)

    def token_text(self, token_id: int) -> str:
        """A readable form of one token for debugging (`tokenize --json`)."""
        return self.token_bytes(token_id).decode("utf-8", "backslashreplace")


# --- streaming ----------------------------------------------------------------------------------
class StreamingDetokenizer:
    """Turns token ids into text one token at a time without ever splitting a character.

    Bytes of a character cut across tokens are held back until it is complete; invalid bytes
    become U+FFFD exactly as in `Tokenizer.decode`, so the concatenated output always equals
    the full decode.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.tokens: list[int] = []
        self._text: list[str] = []

    def add(self, token_id: int) -> str:
        """Adds one token; returns the newly completed text (often "", never half a character)."""
        token_id = int(token_id)
        self.tokens.append(token_id)
        if self.skip_special_tokens and token_id in self.tokenizer.special_ids:
            return ""
        piece = self._decoder.decode(self.tokenizer.token_bytes(token_id))
        if piece:
            self._text.append(piece)
        return piece

    def finish(self) -> str:
        """Flushes held-back bytes (an unfinished character becomes U+FFFD)."""
        piece = self._decoder.decode(b"", final=True)
        if piece:
            self._text.append(piece)
        return piece

    @property
    def text(self) -> str:
        return "".join(self._text)


class StopStrings:
    """Finds stop strings in streamed text, across token boundaries.

    Text that could still be the start of a stop string is held back, so nothing after a stop
    string is ever emitted and the stop string itself never is.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Adds text; returns what is safe to emit. After a match, `matched` is set."""
        if self.matched is not None:
            return ""
        if not self.stops:
            return text
        pending = self._pending + text
        hits = [(i, s) for s in self.stops if (i := pending.find(s)) >= 0]
        if hits:
            index, stop = min(hits)
            self.matched = stop
            self._pending = ""
            return pending[:index]
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(pending)), keep, -1):
                if pending.endswith(stop[:n]):
                    keep = n
                    break
        self._pending = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        """The held-back text, at the end of a generation that did not stop on a string."""
        pending, self._pending = self._pending, ""
        return "" if self.matched is not None else pending


def load_tokenizer(path: str | Path, backend: str = "auto") -> Tokenizer:
    """`Tokenizer.from_file`, naming the folder when the file is missing."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(
            f"{path}: no tokenizer.json; a checkpoint needs one to encode text "
            "(tools/make_tokenizer.py writes the Qwen3.5 one)"
        )
    return Tokenizer.from_file(path, backend)


__all__ = [
    "BACKENDS",
    "HFBackend",
    "PythonBPE",
    "StopStrings",
    "StreamingDetokenizer",
    "Tokenizer",
    "TokenizerBackend",
    "byte_to_char",
    "clean_text",
    "load_tokenizer",
    "stdlib_pattern",
]
