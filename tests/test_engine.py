"""The engine seam on the real CPU backend: prefix reuse, stop conditions, ending early (done)
and cancellation."""

from __future__ import annotations

import threading
import time

import pytest

from reference import backend_greedy
from support.stubs import IdsTokenizer
from wizardcoder_tpu.inference.backends.cpu import CPUBackend
from wizardcoder_tpu.inference.engine import CancelToken, Engine, GenerationParams
from wizardcoder_tpu.inference.errors import ContextOverflowError, InferenceError
from wizardcoder_tpu.inference.loader import load_engine
from wizardcoder_tpu.inference.postprocess import SINGLE, Surroundings, should_stop
from wizardcoder_tpu.inference.weights import open_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_model_factory):
    return open_checkpoint(tiny_model_factory("gpt_bigcode_mq"))


@pytest.fixture(scope="module")
def tiny_engine(tiny_checkpoint) -> Engine:
    return Engine(CPUBackend(tiny_checkpoint), IdsTokenizer())


@pytest.fixture(scope="module")
def cold_backend(tiny_checkpoint) -> CPUBackend:
    """A second backend on the same weights: the cold-run reference for prefix reuse."""
    return CPUBackend(tiny_checkpoint)


@pytest.fixture(scope="module")
def default_engine(smollm2_model) -> Engine:
    """SmolLM2-135M (the tiny named model; the default until Qwen2.5-Coder): these tests were
    written against its completions, and it loads in seconds."""
    return load_engine(str(smollm2_model))


def test_prefix_reuse_gives_cold_tokens_and_feeds_only_new(tiny_engine, cold_backend):
    backend = tiny_engine.backend
    first = list(range(1, 200))
    extended = first + [7, 8, 9, 10, 11]  # the user typed five more tokens
    params = GenerationParams(max_new_tokens=16, speculate=0)  # decode feeds one token a step: countable

    tiny_engine.reset()
    tiny_engine.generate(first, params)
    fed_before = backend.tokens_fed
    warm = tiny_engine.generate(extended, params)
    fed_prompt = backend.tokens_fed - fed_before - (len(warm.token_ids) - 1)

    cold = backend_greedy(cold_backend, extended, 16)
    assert warm.token_ids == cold
    assert warm.reused_tokens == len(first)
    assert fed_prompt == 5  # only the new tokens went through the model


def test_prompt_that_edits_the_middle_reuses_only_the_common_prefix(tiny_engine, cold_backend):
    tiny_engine.reset()
    tiny_engine.generate(list(range(1, 100)), GenerationParams(max_new_tokens=4))
    edited = list(range(1, 50)) + [3] + list(range(51, 100))
    result = tiny_engine.generate(edited, GenerationParams(max_new_tokens=4))
    assert result.reused_tokens == 49
    assert result.token_ids == backend_greedy(cold_backend, edited, 4)


def test_same_prompt_twice_feeds_one_token(tiny_engine):
    prompt = list(range(3, 60))
    tiny_engine.reset()
    first = tiny_engine.generate(prompt, GenerationParams(max_new_tokens=8))
    fed = tiny_engine.backend.tokens_fed
    again = tiny_engine.generate(prompt, GenerationParams(max_new_tokens=8, speculate=0))  # one token a step
    assert again.token_ids == first.token_ids
    assert again.reused_tokens == len(prompt) - 1
    assert tiny_engine.backend.tokens_fed - fed == 1 + len(again.token_ids) - 1


@pytest.fixture(scope="module")
def slotted_engine(tiny_checkpoint) -> Engine:
    """Three KV-cache slots, one prompt each."""
    return Engine(CPUBackend(tiny_checkpoint, slots=3), IdsTokenizer())


def prompt_fed(engine: Engine, prompt: list[int], new_tokens: int = 4) -> tuple[int, list[int]]:
    """Generate; the prompt tokens that went through the model (decode steps subtracted), and the ids."""
    fed = engine.backend.tokens_fed
    result = engine.generate(prompt, GenerationParams(max_new_tokens=new_tokens))
    decode_steps = max(len(result.token_ids) - 1, 0)
    return engine.backend.tokens_fed - fed - decode_steps, result.token_ids


def test_switching_documents_and_back_prefills_only_what_changed(slotted_engine, cold_backend):
    doc_a = [1] + list(range(10, 160))  # two documents that share only their first token (a prompt header)
    doc_b = [1] + list(range(200, 350))
    slotted_engine.reset()
    assert prompt_fed(slotted_engine, doc_a)[0] == len(doc_a)
    assert prompt_fed(slotted_engine, doc_b)[0] == len(doc_b)  # a slot of its own: doc_a's stays
    typed_a = doc_a + [7, 8, 9]  # back to doc_a, three tokens typed
    fed, ids = prompt_fed(slotted_engine, typed_a)
    assert fed == 3 and ids == backend_greedy(cold_backend, typed_a, 4)
    edited_b = doc_b[:100] + [5, 6] + doc_b[100:]  # doc_b edited in the middle
    fed, ids = prompt_fed(slotted_engine, edited_b)
    assert fed == len(edited_b) - 100 and ids == backend_greedy(cold_backend, edited_b, 4)
    assert prompt_fed(slotted_engine, typed_a)[0] == 1  # and doc_a once more: only the token for its logits
    assert [slot["tokens"] for slot in slotted_engine.slot_use()].count(0) == 1


def test_the_least_recently_used_slot_is_reused_first(slotted_engine):
    docs = [[1] + list(range(100 * k, 100 * k + 80)) for k in range(1, 5)]  # four documents, three slots
    slotted_engine.reset()
    for doc in docs[:3]:
        prompt_fed(slotted_engine, doc)
    prompt_fed(slotted_engine, docs[0])  # the first is used again: the second is now the oldest
    assert prompt_fed(slotted_engine, docs[3])[0] == len(docs[3]) - 1  # takes the second's slot (and its header)
    assert prompt_fed(slotted_engine, docs[0])[0] == 1
    assert prompt_fed(slotted_engine, docs[2])[0] == 1
    assert prompt_fed(slotted_engine, docs[1])[0] == len(docs[1]) - 1  # evicted: prefilled again


def test_cancel_from_another_thread_stops_within_one_step(tiny_engine):
    cancel = CancelToken()
    seen: list[int] = []
    cancelled_after: list[int] = []

    def on_text(text: str) -> bool:
        seen.append(len(text.split()))
        if len(seen) == 5:
            threading.Thread(target=lambda: (cancel.cancel(), cancelled_after.append(len(seen)))).start()
            time.sleep(0.05)  # let the canceller run while the engine is mid-generation
        return True

    tiny_engine.reset()
    result = tiny_engine.generate(list(range(1, 20)), GenerationParams(max_new_tokens=400), cancel, on_text)
    assert result.stop_reason == "cancelled"
    assert len(result.token_ids) <= cancelled_after[0] + 1


def test_cancel_before_start_runs_nothing(tiny_engine):
    cancel = CancelToken()
    cancel.cancel()
    fed = tiny_engine.backend.tokens_fed
    result = tiny_engine.generate([1, 2, 3], GenerationParams(max_new_tokens=10), cancel)
    assert result.stop_reason == "cancelled" and result.token_ids == []
    assert tiny_engine.backend.tokens_fed == fed


def test_on_text_ends_a_generation_as_done_not_cancelled(tiny_engine, cold_backend):
    """The caller's "I have what I need" is its own event: the text so far is the result, the
    cancel token stays unset, and the cache holds what was fed, so the next prompt reuses it."""
    prompt = list(range(3, 40))
    cancel = CancelToken()
    tiny_engine.reset()
    done = tiny_engine.generate(prompt, GenerationParams(max_new_tokens=50), cancel,
                                on_text=lambda text: len(text.split()) < 6)
    assert done.stop_reason == "done" and not cancel.cancelled
    assert done.token_ids == backend_greedy(cold_backend, prompt, 6)
    assert done.text == " ".join(map(str, done.token_ids))
    again = tiny_engine.generate(prompt + done.token_ids, GenerationParams(max_new_tokens=2))
    assert again.reused_tokens == len(prompt) + 5  # the last token was never fed
    with pytest.raises(TypeError, match="whether to go on"):  # a callback that answers nothing is a bug
        tiny_engine.generate(prompt, GenerationParams(max_new_tokens=4), on_text=lambda text: None)
    assert tiny_engine.generate(prompt, GenerationParams(max_new_tokens=6)).token_ids == done.token_ids


def test_deadline_stops_generation(tiny_engine):
    result = tiny_engine.generate([1, 2, 3], GenerationParams(max_new_tokens=500, deadline=time.monotonic() + 0.05))
    assert result.stop_reason == "deadline"
    assert 0 < len(result.token_ids) < 500


def test_stop_string_cuts_the_text(tiny_engine):
    full = tiny_engine.generate([5, 6, 7], GenerationParams(max_new_tokens=12))
    stop = " " + str(full.token_ids[3]) + " "
    cut = tiny_engine.generate([5, 6, 7], GenerationParams(max_new_tokens=12, stop_strings=(stop,)))
    assert cut.stop_reason == "stop_string"
    assert stop not in cut.text and full.text.startswith(cut.text)


def test_context_limits(tiny_engine):
    with pytest.raises(ContextOverflowError):
        tiny_engine.generate(list(range(2000)), GenerationParams())
    with pytest.raises(InferenceError):
        tiny_engine.generate([], GenerationParams())
    near_end = [1] * (tiny_engine.max_context - 3)
    result = tiny_engine.generate(near_end, GenerationParams(max_new_tokens=10))
    assert result.stop_reason == "context" and len(result.token_ids) == 3


def test_default_model_completes_code_and_post_processing_ends_a_single_line(default_engine):
    """Single-line completion: post-processing's stream check ends the generation at the token
    that holds the line break (done, the text kept whole for post-processing to cut)."""
    prefix = "def is_prime(n: int) -> bool:\n    "
    ids = default_engine.tokenizer.encode(prefix)
    multi = default_engine.generate(ids, GenerationParams(max_new_tokens=48))
    assert "return" in multi.text or "if" in multi.text
    around = Surroundings.of(prefix, "")
    single = default_engine.generate(ids, GenerationParams(max_new_tokens=48),
                                     on_text=lambda text: not should_stop(text, around, SINGLE))
    assert single.stop_reason == "done"
    assert multi.token_ids[: len(single.token_ids)] == single.token_ids
    assert "\n" in single.text and "\n" not in default_engine.tokenizer.decode(single.token_ids[:-1])


def test_default_model_stops_at_eos(default_engine):
    tokenizer = default_engine.tokenizer
    start, end = tokenizer.require("<|im_start|>"), tokenizer.require("<|im_end|>")
    chat = [start, *tokenizer.encode("user\nSay OK."), end, *tokenizer.encode("\n"), start,
            *tokenizer.encode("assistant\n")]
    result = default_engine.generate(chat, GenerationParams(max_new_tokens=64))
    assert result.stop_reason == "eos"
    assert "<|im_end|>" not in result.text


def test_streaming_reports_growing_text(default_engine):
    pieces: list[str] = []
    ids = default_engine.tokenizer.encode("# a function that adds two numbers\ndef add(")
    result = default_engine.generate(ids, GenerationParams(max_new_tokens=20),
                                     on_text=lambda text: pieces.append(text) or True)
    assert pieces and pieces[-1] == result.text
    assert all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))
