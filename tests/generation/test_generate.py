"""Generation on the tiny random-weight model with the real tokenizer: the loop against a manual
argmax loop, stop rules, context limits, prefix reuse, interruption, config, load errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.backends.reference import ReferenceModel
from qwen_edge.errors import (
    ContextLengthError,
    GenerationConfigError,
    MemoryLimitError,
    QwenEdgeError,
    TokenizerError,
)
from qwen_edge.generation.llm import LLM, ModelAssets, load
from qwen_edge.generation.loop import PREFILL_CHUNK, generate, generate_step, stream_generate
from qwen_edge.generation.sampling import Sampler
from qwen_edge.generation.settings import GenerationConfig, SamplingParams

VALID = 248_077  # tokens the tokenizer knows; the model has 248,320 rows
IM_END = 248_046
GREEDY = {"temperature": 0.0, "presence_penalty": 0.0}


@pytest.fixture(scope="module")
def llm(tiny_chat_checkpoint: Path) -> LLM:
    return load(tiny_chat_checkpoint)


def fresh(llm: LLM, model: object = None) -> LLM:
    """Another LLM on the same weights and tokenizer, with its own prefix cache."""
    assets = ModelAssets(llm.tokenizer, llm.chat_template, llm.generation_config, llm.source)
    return LLM(model or llm.model, assets)  # type: ignore[arg-type]


def manual_greedy(
    model: ReferenceModel, prompt: list[int], n: int
) -> tuple[list[int], list[float]]:
    """Greedy decoding written out with the reference model's two entry points."""
    state = model.new_state()
    logits = model.forward(prompt, state)
    out, logprobs = [], []
    for _ in range(n):
        z = logits[:VALID].astype(np.float64)
        token = int(np.argmax(z))
        full = logits.astype(np.float64)
        logprobs.append(float(full[token] - full.max() - np.log(np.exp(full - full.max()).sum())))
        out.append(token)
        logits = model.step(token, state)
    return out, logprobs


def test_greedy_equals_a_manual_loop(llm: LLM) -> None:
    prompt = llm.encode("The capital of France is")
    expected, expected_lp = manual_greedy(llm.model, prompt, 12)
    result = llm.generate(prompt, max_tokens=12, stop_token_ids=(), logprobs=True, **GREEDY)
    assert result.tokens == expected
    assert np.allclose(result.logprobs, expected_lp, atol=1e-3)
    assert result.finish_reason == "length" and result.stop is None
    assert result.text == llm.decode(expected, skip_special_tokens=True)
    assert result.prompt_tokens == prompt


def test_stream_concatenates_to_the_result(llm: LLM) -> None:
    kwargs = {"max_tokens": 20, "seed": 3, "temperature": 1.0}
    result = llm.generate("Once upon a time", **kwargs)
    responses = list(llm.generate("Once upon a time", stream=True, **kwargs))
    assert "".join(r.text for r in responses) == result.text
    assert [r.token for r in responses if r.token is not None] == result.tokens
    assert [r.finish_reason for r in responses[:-1]] == [None] * (len(responses) - 1)
    assert responses[-1].finish_reason == "length"
    assert all(t < VALID for t in result.tokens)


def test_stop_token(llm: LLM) -> None:
    prompt = llm.encode("Count: one, two")
    tokens = llm.generate(prompt, max_tokens=8, stop_token_ids=(), **GREEDY).tokens
    result = llm.generate(prompt, max_tokens=8, stop_token_ids=(tokens[3],), **GREEDY)
    assert result.tokens == tokens[:3] and result.finish_reason == "stop"
    assert result.stop == tokens[3]
    # <|im_end|> forced by a logit bias ends at once with no text
    forced = llm.generate(prompt, max_tokens=8, logit_bias={IM_END: 100.0}, **GREEDY)
    assert (forced.tokens, forced.text, forced.stop) == ([], "", IM_END)


def test_stop_string_across_tokens(llm: LLM) -> None:
    prompt = llm.encode("Hello")
    full = llm.generate(prompt, max_tokens=16, stop_token_ids=(), **GREEDY)
    # A stop string of the last character of token i and the first of token i+1, at the first
    # boundary where that pair does not occur earlier in the text.
    for i in range(1, len(full.tokens) - 1):
        b = len(llm.decode(full.tokens[: i + 1]))
        if "\ufffd" in llm.decode(full.tokens[: i + 2]):
            continue
        stop = full.text[b - 1 : b + 1]
        if len(stop) == 2 and full.text.index(stop) == b - 1:
            break
    else:
        pytest.fail(f"no usable token boundary in {full.text!r}")
    result = llm.generate(
        prompt, max_tokens=16, stop_token_ids=(), stop=["\x00never", stop], **GREEDY
    )
    assert result.text == full.text[: b - 1]
    assert (result.finish_reason, result.stop) == ("stop", stop)
    assert len(result.tokens) == i + 2  # stopped on the token that completed the stop string
    stream = llm.generate(
        prompt, stream=True, max_tokens=16, stop_token_ids=(), stop=[stop], **GREEDY
    )
    assert "".join(r.text for r in stream) == full.text[: b - 1]


def test_seeded_sampling_is_reproducible(llm: LLM) -> None:
    def run(seed: int) -> list[int]:
        return llm.generate(
            "Tell me", max_tokens=10, temperature=1.0, top_k=0, top_p=0.95, seed=seed
        ).tokens

    assert run(7) == run(7)
    assert len({tuple(run(s)) for s in range(4)}) > 1


def test_context_limits(llm: LLM) -> None:
    small = fresh(llm, ReferenceModel(llm.model.config, llm.model.w, context=16))
    long_prompt = list(range(1000, 1020))
    with pytest.raises(ContextLengthError, match="20 tokens but the context holds 16"):
        small.generate(long_prompt, max_tokens=4)
    with pytest.raises(ContextLengthError):  # raised at the call, not at the first next()
        small.generate(long_prompt, stream=True)
    truncated = small.generate(long_prompt, max_tokens=4, truncate=True, **GREEDY)
    assert truncated.prompt_tokens == long_prompt
    assert truncated.stats.num_prompt_tokens == 12  # room for 4 new tokens
    # 10 prompt tokens: the state fills after 6 fed tokens, the 7th is sampled and ends it
    result = small.generate(long_prompt[:10], max_tokens=100, stop_token_ids=(), **GREEDY)
    assert len(result.tokens) == 16 - 10 + 1 and result.finish_reason == "length"


def test_prefix_reuse_gives_the_same_answers(llm: LLM) -> None:
    cached = fresh(llm)
    history = [{"role": "user", "content": "Hi there"}]
    first = cached.chat(history, max_tokens=6, **GREEDY)
    assert first.stats.num_cached_tokens == 0
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "More"}]
    second = cached.chat(history, max_tokens=6, **GREEDY)
    assert second.stats.num_cached_tokens > 0  # the first turn's prompt was not evaluated again
    again = fresh(llm).chat(history, max_tokens=6, **GREEDY)
    assert again.stats.num_cached_tokens == 0
    assert second.tokens == again.tokens and second.prompt_tokens == again.prompt_tokens


def test_progress_counts_the_prompt_tokens_evaluated(llm: LLM) -> None:
    # A prompt of three prefill chunks, then a turn after it: the second request counts only
    # the tokens the prefix cache did not restore, and each call's counts climb to its total.
    cached = fresh(llm)
    history = [{"role": "user", "content": "word " * 1100}]
    calls: list[tuple[int, int]] = []
    first = cached.chat(history, max_tokens=2, progress=lambda *a: calls.append(a), **GREEDY)
    n = len(first.prompt_tokens)
    assert n > 2 * PREFILL_CHUNK and len(calls) >= 3
    assert [t for _, t in calls] == [n] * len(calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1][0] == n
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "More"}]
    calls.clear()
    second = cached.chat(history, max_tokens=2, progress=lambda *a: calls.append(a), **GREEDY)
    todo = len(second.prompt_tokens) - second.stats.num_cached_tokens
    assert second.stats.num_cached_tokens > n // 2 and calls and calls[-1] == (todo, todo)
    # the same counts through generate, and nothing breaks without a callback
    calls.clear()
    cached.generate(first.prompt_tokens[:700], max_tokens=1, progress=lambda *a: calls.append(a))
    assert calls == [(PREFILL_CHUNK, 700), (700, 700)]


class CountingModel:
    """Forwards to a model, counting calls and raising KeyboardInterrupt (or, from call
    `out_of_memory_at` on, the native runtime's MemoryLimitError) on request."""

    def __init__(self, model: ReferenceModel):
        self.model, self.calls, self.interrupt_at = model, 0, -1
        self.out_of_memory_at = -1
        self.config, self.context = model.config, model.context

    def new_state(self):  # type: ignore[no-untyped-def]
        return self.model.new_state()

    def forward(self, tokens, state, *, all_logits=False):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        if 0 < self.out_of_memory_at <= self.calls:
            raise MemoryLimitError("the state cannot grow")
        return self.model.forward(tokens, state, all_logits=all_logits)

    def logits(self, tokens):  # type: ignore[no-untyped-def]
        return self.model.logits(tokens)


def test_memory_running_out_ends_the_answer_as_a_full_context(
    llm: LLM, caplog: pytest.LogCaptureFixture
) -> None:
    """A state that cannot grow while decoding: the answer so far stands, ended with
    finish_reason "length" and a warning; a prompt that cannot be held is refused."""
    prompt = list(range(1000, 1012))
    args = {"max_tokens": 8, "stop_token_ids": (), **GREEDY}
    whole = fresh(llm).generate(prompt, **args)
    model = CountingModel(llm.model)
    model.out_of_memory_at = 4  # the prefill and two decode steps ran: three tokens
    short = fresh(llm, model).generate(prompt, **args)
    assert short.finish_reason == "length" and short.tokens == whole.tokens[:3]
    assert "generation stopped after 3 tokens: the state cannot grow" in caplog.text
    streamed = list(fresh(llm, CountingModel(llm.model)).generate(prompt, stream=True, **args))
    model = CountingModel(llm.model)
    model.out_of_memory_at = 4
    parts = list(fresh(llm, model).generate(prompt, stream=True, **args))
    assert [p.token for p in parts[:3]] == [p.token for p in streamed[:3]]
    assert parts[-1].finish_reason == "length" and parts[-1].token is None
    model = CountingModel(llm.model)
    model.out_of_memory_at = 1
    with pytest.raises(MemoryLimitError):
        fresh(llm, model).generate(prompt, **args)


def test_ctrl_c_and_close_stop_at_once(llm: LLM) -> None:
    model = CountingModel(llm.model)
    wrapped = fresh(llm, model)
    messages = [{"role": "user", "content": "Write a story"}]
    expected = wrapped.chat(messages, max_tokens=10, **GREEDY).tokens

    model.calls, model.interrupt_at = 0, 5
    with pytest.raises(KeyboardInterrupt):
        wrapped.chat(messages, max_tokens=10, **GREEDY)
    model.interrupt_at = -1
    assert wrapped.chat(messages, max_tokens=10, **GREEDY).tokens == expected  # still usable

    stream = wrapped.chat(messages, stream=True, max_tokens=10, **GREEDY)
    got = [next(stream).token for _ in range(3)]
    calls = model.calls
    stream.close()
    assert model.calls == calls  # no forward pass after closing
    assert got == expected[:3]
    assert wrapped.chat(messages, max_tokens=10, **GREEDY).tokens == expected


def test_stats(llm: LLM) -> None:
    result = llm.chat(
        [{"role": "user", "content": "Hi"}], max_tokens=5, stop_token_ids=(), **GREEDY
    )
    s = result.stats
    assert s.num_generated_tokens == 5 and s.num_prompt_tokens == len(result.prompt_tokens)
    assert s.inference_start <= s.prompt_eval_end <= s.first_token <= s.inference_end
    assert s.time_to_first_token > 0 and s.generation_tokens_per_second > 0
    assert 0 <= s.sampling_time <= s.inference_end - s.inference_start
    assert s.model_load_end > s.model_load_start
    d = json.loads(json.dumps(result.to_dict()))
    assert d["stats"]["generated_tokens"] == 5 and d["finish_reason"] == "length"


def test_the_free_functions_on_a_bare_model(llm: LLM) -> None:
    model = llm.model
    prompt = llm.encode("abc")
    config = GenerationConfig().replace(max_tokens=4, stop_token_ids=(), **GREEDY)
    result = generate(model, llm.tokenizer, "abc", config)
    assert result.tokens == manual_greedy(model, prompt, 4)[0]
    ids_only = list(stream_generate(model, None, prompt, config))
    assert [r.token for r in ids_only if r.token is not None] == result.tokens
    assert all(r.text == "" for r in ids_only)
    with pytest.raises(TokenizerError, match="no tokenizer"):
        list(stream_generate(model, None, "text", config))
    steps = generate_step(model, prompt, Sampler(SamplingParams(temperature=0.0), 248_320))
    assert [next(steps)[0] for _ in range(2)] == manual_greedy(model, prompt, 2)[0]


def test_generation_config() -> None:
    c = GenerationConfig.from_hf(
        {"do_sample": False, "top_k": 5, "eos_token_id": [7, 248046], "max_new_tokens": 9,
         "transformers_version": "5.0"}
    )  # fmt: skip
    assert c.sampling.temperature == 0.0 and c.sampling.top_k == 5 and c.max_tokens == 9
    assert c.stop_token_ids == (248046, 248044, 7)
    assert GenerationConfig.from_hf({"temperature": 0.6}).sampling.temperature == 0.6
    assert (
        c.replace(top_k=None, seed=3).sampling.top_k == 5 and c.replace(seed=3).sampling.seed == 3
    )
    assert c.replace(stop="END").stop == ("END",)
    with pytest.raises(GenerationConfigError, match="unknown"):
        c.replace(temprature=1.0)
    with pytest.raises(GenerationConfigError, match="generation_config.json"):
        GenerationConfig.from_hf({"top_p": 0.0})
    with pytest.raises(GenerationConfigError, match="max_tokens"):
        GenerationConfig(max_tokens=-1)
    with pytest.raises(GenerationConfigError, match="max_tokens must be in"):
        GenerationConfig(max_tokens=10**40)
    with pytest.raises(GenerationConfigError, match="stop takes at most"):
        GenerationConfig(stop=tuple(str(i) for i in range(17)))


def test_model_defaults_come_from_generation_config(llm: LLM, tiny_chat_checkpoint: Path) -> None:
    gen = json.loads((tiny_chat_checkpoint / "generation_config.json").read_text())
    assert llm.generation_config.sampling.top_k == gen["top_k"]
    assert llm.generation_config.sampling.temperature == gen["temperature"]
    assert llm.generation_config.sampling.presence_penalty == gen["presence_penalty"]


def test_llm_forwards_the_backend_protocol(llm: LLM) -> None:
    ids = llm.encode("one two three")
    state = llm.new_state()
    last = llm.forward(ids, state)
    assert state.position == len(ids)
    assert np.array_equal(llm.logits(ids)[-1], last)


def test_checkpoint_without_tokenizer_works_on_ids(tiny_checkpoint: Path) -> None:
    bare = load(tiny_checkpoint)
    assert bare.tokenizer is None and bare.chat_template is None
    result = bare.generate([1, 2, 3], max_tokens=3, **GREEDY)
    assert len(result.tokens) == 3 and result.text == ""
    with pytest.raises(TokenizerError, match=r"no tokenizer\.json"):
        bare.generate("text")
    with pytest.raises(QwenEdgeError, match="no chat template"):
        bare.chat([{"role": "user", "content": "hi"}])


def test_load_errors(tmp_path: Path, tiny_chat_checkpoint: Path) -> None:
    with pytest.raises(QwenEdgeError, match="does not exist"):
        load(tmp_path / "nope")
    model_file = tmp_path / "m.qe"
    model_file.write_bytes(b"QWENEDGE")
    with pytest.raises(QwenEdgeError):
        load(model_file)
    with pytest.raises(QwenEdgeError, match="export"):
        load(tiny_chat_checkpoint, backend="native")
    with pytest.raises(QwenEdgeError, match="checkpoint folders only"):
        load(model_file, backend="reference")
    with pytest.raises(ValueError, match="backend"):
        load(tiny_chat_checkpoint, backend="gpu")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_chat_checkpoint.iterdir():
        (broken / f.name).symlink_to(f)
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer.json").write_text("{}")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load(broken)


def test_stats_are_frozen(llm: LLM) -> None:
    result = llm.generate([5, 6], max_tokens=1, **GREEDY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.stats.num_generated_tokens = 3  # type: ignore[misc]


def test_model_file_carries_tokenizer_template_and_defaults(
    tmp_path: Path, qwen35_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qwen_edge.cli import main
    from qwen_edge.export import presets
    from qwen_edge.export.tokenizer_files import chat_template
    from qwen_edge.formats import model_file as modelfile
    from qwen_edge.formats.config import ModelConfig
    from qwen_edge.generation.llm import load_assets
    from qwen_edge.generation.tokenizer import Tokenizer

    # A small vocabulary keeps the file small (the tokenizer is only read, not run on it).
    config = ModelConfig.from_hf(presets.hf_config("tiny", vocab_size=512, eos_token_id=511))
    rng = np.random.default_rng(0)
    tensors = [
        (modelfile.TensorSpec(name, "f32", shape), rng.standard_normal(shape).astype(np.float32))
        for name, shape in config.text_tensor_shapes().items()
    ]
    generation = json.loads((qwen35_tokenizer_dir / "generation_config.json").read_text())
    header = {
        "arch": "qwen3_5",
        "config": config.to_dict(),
        "quant": {"recipe": "f32", "overrides": {}},
        "generation": generation,
        "chat_template": chat_template(),
    }
    tokenizer_json = (qwen35_tokenizer_dir / "tokenizer.json").read_bytes()
    path = modelfile.write_model_file(
        tmp_path / "m.qe", header, tensors, [("tokenizer.json", tokenizer_json)]
    )
    assets = load_assets(path)
    reference = Tokenizer.from_file(qwen35_tokenizer_dir / "tokenizer.json")
    assert assets.require_tokenizer().encode("Hello, 世界") == reference.encode("Hello, 世界")
    assert assets.chat_template is not None and assets.chat_template.source == chat_template()
    assert (assets.generation.sampling.top_k, assets.generation.sampling.temperature) == (20, 0.7)
    assert main(["tokenize", str(path), "Hello"]) == 0
    assert [int(t) for t in capsys.readouterr().out.split()] == reference.encode("Hello")
    llm = load(path, context=64)  # the native runtime runs it
    result = llm.generate([1, 2, 3], max_tokens=4, **GREEDY)
    assert len(result.tokens) == 4 and all(t < 512 for t in result.tokens)
