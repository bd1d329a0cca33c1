"""What a generation can be asked for: `SamplingParams` inside `GenerationConfig`, written once.

Every setting is declared here, with its help text and where it may be set from (`cli`: a
command-line flag; `api`: a field of the HTTP API). The command line (`cli/common.py`) and the
server (`serving/openai_api.py`) derive their flags and request fields from `settings()`, so a
new setting is one line here and appears in both, validated by the same `__post_init__`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import GenerationConfigError
from .chat_template import END_OF_TEXT, IM_END

DEFAULT_STOP_TOKENS = (IM_END, END_OF_TEXT)


@dataclass(frozen=True)
class Bounds:
    """The values a numeric setting accepts: [lo, hi], or (lo, hi] when `lo_open`."""

    lo: float
    hi: float
    lo_open: bool = False

    def __contains__(self, x: Any) -> bool:
        return (self.lo < x if self.lo_open else self.lo <= x) and x <= self.hi

    def __str__(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo}, {self.hi}]"


MAX_STOP_STRINGS = 16  # each token is checked against every stop string: keep that cheap
MAX_STOP_CHARS = 1000
LOGIT_BIAS = Bounds(-100, 100)  # OpenAI's range; -100 bans a token, 100 forces it


def _setting(
    default: Any,
    kind: str,
    help: str,
    bounds: Bounds | None = None,
    *,
    cli: bool = True,
    api: bool = True,
    choices: tuple[str, ...] = (),
) -> Any:
    """A dataclass field carrying its range and how the command line and the server expose it.

    kind: "int", "float", "bool", "strings" (one or more strings), "bias" (id -> number) or
        "choice" (one of `choices`, or None).
    bounds: the range of an "int" or "float" setting (finite numbers only).
    """
    meta = {"kind": kind, "help": help, "bounds": bounds, "cli": cli, "api": api}
    meta["choices"] = choices
    if isinstance(default, (dict, tuple)) and not default:
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Setting:
    """One user-facing setting: its name, kind, help and default."""

    name: str
    kind: str
    help: str
    bounds: Bounds | None
    default: Any
    cli: bool
    api: bool
    choices: tuple[str, ...] = ()


_INTS = (int, np.integer)
_NUMBERS = (*_INTS, float, np.floating)


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def _check_fields(obj: Any) -> None:
    """Checks the type, finiteness and range of every numeric setting of a dataclass."""
    for f in dataclasses.fields(obj):
        kind, bounds = f.metadata.get("kind"), f.metadata.get("bounds")
        value = getattr(obj, f.name)
        if kind == "choice" and value is not None and value not in f.metadata["choices"]:
            choices = ", ".join(f.metadata["choices"])
            raise GenerationConfigError(f"{f.name} must be one of {choices}, got {value!r}", f.name)
        if bounds is None or value is None:
            continue
        if not _is(value, _INTS if kind == "int" else _NUMBERS):
            what = "an integer" if kind == "int" else "a number"
            raise GenerationConfigError(f"{f.name} must be {what}, got {value!r}", f.name)
        # Huge ints are compared exactly (no float conversion); NaN fails every comparison.
        if value not in bounds:
            raise GenerationConfigError(f"{f.name} must be in {bounds}, got {value!r}", f.name)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token (applied in this order by `sampling.Sampler`).

    Attributes:
        temperature: 0 means greedy (argmax); otherwise logits are divided by it.
        top_k: keep the k most likely tokens (0: off).
        top_p: keep the most likely tokens whose mass reaches top_p (1: off).
        min_p: drop tokens below min_p times the top token's probability (0: off).
        repetition_penalty: divide positive / multiply negative logits of every token already
            in the prompt or output (1: off), as transformers does.
        presence_penalty: subtract from the logit of every token already generated (0: off).
        frequency_penalty: subtract this times the token's count in the output (0: off).
        logit_bias: token id -> value added to its logit (OpenAI's `logit_bias`).
        seed: seed of the random generator; None draws fresh entropy.
    """

    temperature: float = _setting(1.0, "float", "0 = greedy", Bounds(0, 100))
    top_k: int = _setting(0, "int", "keep the k most likely tokens (0 = off)", Bounds(0, 1_000_000))
    top_p: float = _setting(
        1.0, "float", "keep the smallest set of tokens with this mass", Bounds(0, 1, lo_open=True)
    )
    min_p: float = _setting(
        0.0, "float", "drop tokens under min-p x the top probability", Bounds(0, 1)
    )
    repetition_penalty: float = _setting(
        1.0, "float", "penalise tokens already seen (1 = off)", Bounds(0, 10, lo_open=True)
    )
    presence_penalty: float = _setting(
        0.0, "float", "subtract from generated tokens' logits", Bounds(-2, 2)
    )
    frequency_penalty: float = _setting(
        0.0, "float", "subtract this x each token's count", Bounds(-2, 2)
    )
    logit_bias: Mapping[int, float] = _setting(
        {}, "bias", "token id -> value added to its logit", cli=False
    )
    seed: int | None = _setting(None, "int", "makes sampling reproducible", Bounds(0, 2**64 - 1))

    def __post_init__(self) -> None:
        _check_fields(self)
        for k, v in self.logit_bias.items():
            if not _is(k, _INTS) or k < 0 or not _is(v, _NUMBERS) or v not in LOGIT_BIAS:
                raise GenerationConfigError(
                    f"logit_bias must map token ids to numbers in {LOGIT_BIAS}: {k!r}: {v!r}",
                    "logit_bias",
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


# The Qwen3.5 cards' non-thinking "general" settings (docs/model.md §7.3).
QWEN35_SAMPLING = SamplingParams(temperature=0.7, top_k=20, top_p=0.8, presence_penalty=1.5)


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling and stopping settings of one generation.

    The defaults are the Qwen3.5 cards' non-thinking settings; a model's
    `generation_config.json` overrides them (`from_hf`), and call arguments override both
    (`replace`, which takes sampling fields by name too: `replace(temperature=0)`).

    Attributes:
        sampling: how tokens are picked (`SamplingParams`).
        max_tokens: most tokens to generate.
        stop: stop strings; the text ends before the first one found.
        stop_token_ids: tokens that end the generation (not part of the text).
        truncate: if the prompt does not fit the context, drop its oldest tokens instead of
            raising ContextLengthError.
        skip_special_tokens: leave control tokens (`<|im_start|>` ...) out of the text.
        logprobs: report each token's log-probability (costs a pass over the vocabulary).
        speculative: "mtp" drafts tokens with the model's MTP head and verifies them in one
            forward (docs/speculative.md): the same tokens, faster when drafts are accepted;
            "auto" (default) does so for greedy decoding only, where it pays (it does not at the
            cards' sampling temperature); "off" (or None) decodes token by token. Models
            without an MTP head decode plainly (`speculates`).
        draft_tokens: the most tokens the MTP head drafts per verification (the length adapts
            to the acceptance).
    """

    sampling: SamplingParams = QWEN35_SAMPLING
    max_tokens: int = _setting(512, "int", "most tokens to generate", Bounds(0, 2**31 - 1))
    stop: tuple[str, ...] = _setting((), "strings", "stop string (repeatable)")
    stop_token_ids: tuple[int, ...] = field(default=DEFAULT_STOP_TOKENS)
    truncate: bool = _setting(False, "bool", "drop the oldest prompt tokens to fit", api=False)
    skip_special_tokens: bool = True
    logprobs: bool = _setting(False, "bool", "report each token's log-probability", cli=False)
    speculative: str | None = _setting(
        "auto", "choice",
        "draft with the model's MTP head, verify in one pass (same output): auto = for greedy "
        "decoding", choices=("auto", "mtp", "off"), api=False,
    )  # fmt: skip
    draft_tokens: int = _setting(
        2, "int", "most tokens drafted per verification (--speculative)", Bounds(1, 16), api=False
    )

    def __post_init__(self) -> None:
        _check_fields(self)
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if len(self.stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in self.stop):
            raise GenerationConfigError(
                f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS}"
                " characters",
                "stop",
            )
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def speculates(self) -> bool:
        """Whether these settings ask for MTP speculation: "mtp" always, "auto" for greedy
        decoding (docs/speculative.md, "On by default for greedy decoding")."""
        return self.speculative == "mtp" or (self.speculative == "auto" and self.sampling.greedy)

    def replace(self, **overrides: Any) -> GenerationConfig:
        """A copy with the given fields changed, sampling fields included; None values are
        ignored (handy for CLIs).

        Raises:
            GenerationConfigError: an unknown field or a value out of range.
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        own = {f.name for f in dataclasses.fields(self)}
        sampling_names = {f.name for f in dataclasses.fields(SamplingParams)}
        unknown = sorted(set(overrides) - own - sampling_names)
        if unknown:
            raise GenerationConfigError(f"unknown generation settings: {', '.join(unknown)}")
        sampling = {k: overrides.pop(k) for k in list(overrides) if k in sampling_names}
        if sampling:
            overrides["sampling"] = dataclasses.replace(
                overrides.get("sampling", self.sampling), **sampling
            )
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_hf(
        cls, config: Mapping[str, Any], base: GenerationConfig | None = None
    ) -> GenerationConfig:
        """Reads a Hugging Face `generation_config.json` dict (unknown keys are ignored).

        `do_sample: false` means greedy; `eos_token_id` adds stop tokens to the default two;
        `max_new_tokens` sets `max_tokens`.
        """
        base = base or cls()
        values: dict[str, Any] = {}
        for key in (
            "temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
            "frequency_penalty",
        ):  # fmt: skip
            if isinstance(config.get(key), (int, float)):
                values[key] = float(config[key])
        if isinstance(config.get("top_k"), int):
            values["top_k"] = int(config["top_k"])
        if isinstance(config.get("max_new_tokens"), int):
            values["max_tokens"] = int(config["max_new_tokens"])
        if config.get("do_sample") is False:
            values["temperature"] = 0.0
        eos = config.get("eos_token_id")
        eos_ids = [eos] if isinstance(eos, int) else [e for e in (eos or []) if isinstance(e, int)]
        values["stop_token_ids"] = tuple(dict.fromkeys([*base.stop_token_ids, *eos_ids]))
        try:
            return base.replace(**values)
        except GenerationConfigError as e:
            raise GenerationConfigError(f"generation_config.json: {e}") from e


def settings() -> list[Setting]:
    """Every user-facing setting of `GenerationConfig`, sampling fields included, in order."""
    out = []
    for cls, default in ((SamplingParams, QWEN35_SAMPLING), (GenerationConfig, None)):
        for f in dataclasses.fields(cls):
            if "kind" in f.metadata:
                value = getattr(default, f.name) if default is not None else _default(f)
                out.append(Setting(f.name, **{k: f.metadata[k] for k in _META}, default=value))
    return out


_META = ("kind", "help", "bounds", "cli", "api", "choices")


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]
