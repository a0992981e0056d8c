"""Tests for `visionthink.rewards.judges`: the rule judge, the HTTP judge against a real loopback server
that misbehaves on purpose, the local-model judge on a tiny random model, and the parsing helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from conftest import QuietHandler, pick_free_port  # tests/ is on sys.path

from visionthink.rewards.judge_base import JudgeRequest, Verdict
from visionthink.rewards.judges import (
    JUDGE_PROMPT,
    CachedJudge,
    HTTPJudge,
    LocalJudge,
    RuleJudge,
    make_judge,
    parse_choices,
    parse_judgement,
    parse_score,
    render_prompt,
)

REQ = JudgeRequest("What colour is the square?", "red", "crimson red")
TRICKY_REPLY = (
    "The ground truth is 1 word and the answer has 1 extra word; option 1 would be to accept it.\n"
    "Someone might say Score: 1 here, but the colour differs in 1 important way.\n"
    "Score: 0"
)


# ---------------------------------------------------------------- a real OpenAI-compatible server on loopback


class JudgeServer:
    """What the fake backend does (one action per call from `script`, then `default`) and what it saw."""

    def __init__(self):
        self.script: list[tuple] = []
        self.default: tuple = ("reply", "Score: 1")
        self.delay = 0.0
        self.lock = threading.Lock()
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.stop = threading.Event()

    def next_action(self, body: dict) -> tuple:
        with self.lock:
            action = self.script.pop(0) if self.script else self.default
        return action(body) if callable(action) else action


class Handler(QuietHandler):
    def do_POST(self):  # noqa: N802 - the http.server API
        state: JudgeServer = self.server.state
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        except ValueError:
            body = {}
        with state.lock:
            state.calls += 1
            state.active += 1
            state.max_active = max(state.max_active, state.active)
            state.bodies.append(body)
            state.auth.append(self.headers.get("Authorization"))
        try:
            if state.delay:
                state.stop.wait(state.delay)
            kind, value = state.next_action(body)
            if kind == "hang":
                state.stop.wait(value)  # bounded: released when the test ends
                return
            if kind == "status":
                self.reply(value, b'{"error": "boom"}')
            elif kind == "raw":
                self.reply(200, value.encode())
            else:  # "reply": a well-formed chat completion with `value` as its text
                self.reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": value}}]})
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with state.lock:
                state.active -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@contextlib.contextmanager
def judge_server():
    """A running loopback judge backend; yields its `JudgeServer` state (with `url`)."""
    httpd = _Server(("127.0.0.1", 0), Handler)
    httpd.state = JudgeServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield httpd.state
    finally:
        httpd.state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server():
    with judge_server() as state:
        yield state


def closed_port_url() -> str:
    return f"http://127.0.0.1:{pick_free_port()}/v1"


def judge_for(url: str, **kw) -> HTTPJudge:
    options = {"timeout": 2.0, "retries": 2, "backoff": 0.01, "backoff_max": 0.05, "jitter": 0.0, "trust_env": False}
    options.update(kw)
    return HTTPJudge(url, **options)


# ---------------------------------------------------------------- HTTP judge: well-behaved backend


def test_last_score_decides_not_any_one(server):
    server.default = ("reply", TRICKY_REPLY)
    judge = judge_for(server.url, model="judge-model", api_key="sk-test")
    [verdict] = judge.grade([REQ])
    assert verdict == Verdict(0.0, ok=True, raw=TRICKY_REPLY)
    assert judge.stats == {"requests": 1, "cache_hits": 0, "http_calls": 1, "retries": 0, "failures": 0}
    body = server.bodies[0]
    assert body["model"] == "judge-model"
    assert body["temperature"] == 0.0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    prompt = body["messages"][-1]["content"]
    assert REQ.question in prompt and "Ground-truth answer: red" in prompt and "Model's answer: crimson red" in prompt
    assert server.auth == ["Bearer sk-test"]


def test_batch_order_and_per_request_scores(server):
    def grade_by_answer(body):
        answer = body["messages"][-1]["content"].split("Model's answer:")[1].splitlines()[0]
        return ("reply", "Looks right.\nScore: 1" if "dog" in answer else "Different animal.\nScore: 0")

    server.default = grade_by_answer
    judge = judge_for(server.url, concurrency=3)
    requests = [JudgeRequest("Which animal?", "dog", p) for p in ["cat", "dog", "a dog", "horse", "doggo", "cow"]]
    scores = [v.score for v in judge.grade(requests)]
    assert scores == [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert server.auth == [None] * 6


def test_no_prediction_is_wrong_without_a_call(server):
    judge = judge_for(server.url)
    verdicts = judge.grade([JudgeRequest("q", "red", None), JudgeRequest("q", "red", "  ")])
    assert [v.score for v in verdicts] == [0.0, 0.0] and all(v.ok for v in verdicts)
    assert server.calls == 0


# ---------------------------------------------------------------- HTTP judge: misbehaving backend


def test_500_then_success_is_retried(server):
    server.script = [("status", 500), ("status", 503)]
    server.default = ("reply", "Same colour.\nScore: 1")
    judge = judge_for(server.url, retries=3)
    [verdict] = judge.grade([REQ])
    assert verdict.score == 1.0 and verdict.ok and verdict.error is None
    assert server.calls == 3
    assert judge.stats["retries"] == 2 and judge.stats["failures"] == 0 and judge.stats["http_calls"] == 3


def test_persistent_500_falls_back_to_rule(server):
    server.default = ("status", 500)
    judge = judge_for(server.url, retries=2, fallback="rule")
    verdicts = judge.grade([JudgeRequest("q", "red", "Red."), JudgeRequest("q", "red", "blue")])
    assert [v.score for v in verdicts] == [1.0, 0.0]  # what RuleJudge says
    assert all(not v.ok and "HTTP 500" in v.error for v in verdicts)
    assert server.calls == 6
    assert judge.stats["failures"] == 2 and judge.stats["retries"] == 4


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(server, status):
    server.default = ("status", status)
    judge = judge_for(server.url, retries=3, fallback="drop")
    [verdict] = judge.grade([JudgeRequest("q", "red", "red")])
    assert verdict == Verdict(0.0, ok=False, raw='{"error": "boom"}', error=verdict.error)
    assert f"HTTP {status}" in verdict.error
    assert server.calls == 1 and judge.stats["retries"] == 0 and judge.stats["failures"] == 1


def test_hanging_backend_times_out_then_falls_back(server):
    server.default = ("hang", 10.0)
    judge = judge_for(server.url, timeout=0.2, retries=1, fallback="rule")
    start = time.monotonic()
    [verdict] = judge.grade([JudgeRequest("q", "red", "red")])
    assert time.monotonic() - start < 3.0
    assert verdict.score == 1.0 and not verdict.ok and "timed out" in verdict.error
    assert server.calls == 2
    assert judge.stats["failures"] == 1 and judge.stats["retries"] == 1

    drop = judge_for(server.url, timeout=0.2, retries=0, fallback="drop")
    [dropped] = drop.grade([JudgeRequest("q", "red", "red")])
    assert dropped.score == 0.0 and not dropped.ok and "timed out" in dropped.error


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (("reply", "The answer looks plausible, I'd give it a 1 out of 1."), "no 'Score"),
        (("reply", "Score: maybe"), "no 'Score"),
        (("raw", "<html>bad gateway</html>"), "not a chat completion"),
        (("raw", '{"choices": []}'), "not a chat completion"),
    ],
    ids=["no-score", "score-word", "not-json", "no-choices"],
)
def test_garbage_is_retried_then_falls_back(server, action, error):
    server.default = action
    judge = judge_for(server.url, retries=2, fallback="drop")
    [verdict] = judge.grade([JudgeRequest("q", "red", "red")])
    assert verdict.score == 0.0 and not verdict.ok and error in verdict.error
    assert server.calls == 3
    assert judge.stats["failures"] == 1 and judge.stats["retries"] == 2
    rule = judge_for(server.url, retries=0, fallback="rule", retry_unparsed=False)
    [graded] = rule.grade([JudgeRequest("q", "red", "red")])
    assert graded.score == 1.0 and not graded.ok and server.calls == 4


def test_refused_connection_falls_back():
    url = closed_port_url()
    judge = judge_for(url, retries=2, fallback="drop")
    verdicts = judge.grade([JudgeRequest("q", "red", "red"), JudgeRequest("q", "blue", "red")])
    assert [v.score for v in verdicts] == [0.0, 0.0] and all(not v.ok and v.error for v in verdicts)
    assert judge.stats["failures"] == 2 and judge.stats["retries"] == 4 and judge.stats["http_calls"] == 6
    rule = judge_for(url, retries=1, fallback="rule")
    assert [v.score for v in rule.grade([JudgeRequest("q", "red", "red")])] == [1.0]
    assert rule.stats["failures"] == 1


# ---------------------------------------------------------------- cache


def test_cache_hits_and_failures_are_not_cached(server, tmp_path):
    server.default = ("reply", "Score: 1")
    judge = judge_for(server.url)
    first = judge.grade([REQ])
    again = judge.grade([REQ, REQ])
    assert again == first * 2
    assert server.calls == 1
    assert judge.stats["cache_hits"] == 2 and judge.stats["requests"] == 3
    # duplicates inside one batch go out once
    other = JudgeRequest("q", "cat", "kitten")
    judge.grade([other, other, other])
    assert server.calls == 2 and judge.stats["cache_hits"] == 4
    # a failed verdict is not cached: the next grade asks again
    server.script = [("status", 500)]
    flaky = judge_for(server.url, retries=0)
    assert not flaky.grade([REQ])[0].ok
    assert flaky.grade([REQ])[0].ok
    assert server.calls == 4


def test_cache_appends_jsonl_per_batch(server, tmp_path):
    path = tmp_path / "judge-cache.jsonl"
    server.default = ("reply", "Score: 1")
    judge = judge_for(server.url, model="m1", cache_path=path)
    judge.grade([REQ])
    [saved] = [json.loads(line) for line in path.read_text().splitlines()]
    assert saved["judge"] == "m1" and saved["prediction"] == REQ.prediction and saved["score"] == 1.0
    # the next batch appends its new verdicts (one line each) and leaves earlier lines as they are
    before = path.read_text()
    judge.grade([REQ, JudgeRequest("q", "cat", "kitten"), JudgeRequest("q", "cat", "kitty")])
    after = path.read_text()
    assert after.startswith(before) and len(after.splitlines()) == 3
    # a new judge with the same model grades from the file, even with the backend gone
    offline = judge_for(closed_port_url(), model="m1", cache_path=path, fallback="drop")
    assert offline.grade([REQ])[0] == Verdict(1.0, ok=True, raw="Score: 1")
    assert offline.stats["cache_hits"] == 1 and offline.stats["http_calls"] == 0
    # another model does not reuse it
    other = judge_for(closed_port_url(), model="m2", cache_path=path, retries=0, fallback="drop")
    assert not other.grade([REQ])[0].ok
    # a half-written last line (a crash mid-append) is skipped, and the next append starts a fresh line
    path.write_text(before + '{"judge": "m1", "quest')
    resumed = judge_for(server.url, model="m1", cache_path=path)
    assert len(resumed.cache) == 1
    resumed.grade([JudgeRequest("q", "cat", "kitten")])
    assert len(judge_for(server.url, model="m1", cache_path=path).cache) == 2
    # a corrupt file is ignored
    path.write_text("{not json")
    assert len(judge_for(server.url, model="m1", cache_path=path).cache) == 0


def test_cached_judge_wraps_any_judge(tmp_path):
    class Counting(RuleJudge):
        """The rule grade, but a failed verdict for the prediction "fail"; keeps what it was asked."""

        def __init__(self):
            super().__init__()
            self.asked = []

        def grade(self, requests):
            self.asked += requests
            return [Verdict(0.0, ok=False) if r.prediction == "fail" else verdict
                    for r, verdict in zip(requests, super().grade(requests), strict=True)]

    path, inner = tmp_path / "cache.jsonl", Counting()
    requests = [JudgeRequest("q", "3/4", "0.75"), JudgeRequest("q", "red", "red"), JudgeRequest("q", "red", "red")]
    failing = JudgeRequest("q", "red", "fail")
    judge = CachedJudge(inner, path)
    first = judge.grade([*requests, failing])
    assert [(v.score, v.ok) for v in first] == [(1.0, True)] * 3 + [(0.0, False)]
    assert len(inner.asked) == 3  # duplicates asked once
    assert judge.grade(requests[:1]) == first[:1] and len(inner.asked) == 3
    assert not judge.grade([failing])[0].ok and len(inner.asked) == 4  # failures are asked again
    resumed = Counting()  # a resumed run reads the file
    assert CachedJudge(resumed, path).grade(requests) == first[:3] and resumed.asked == []
    assert len(path.read_text().splitlines()) == 2


# ---------------------------------------------------------------- concurrency and event loops


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_limit_is_respected(server, limit):
    server.delay = 0.08
    server.default = ("reply", "Score: 1")
    judge = judge_for(server.url, concurrency=limit)
    requests = [JudgeRequest("q", "red", f"answer {i}") for i in range(7)]
    assert [v.score for v in judge.grade(requests)] == [1.0] * 7
    assert server.calls == 7
    assert server.max_active == limit  # never more than the limit, and the limit is actually used


def test_grade_inside_a_running_loop_and_from_threads(server):
    server.default = ("reply", "Score: 1")
    judge = judge_for(server.url)

    async def main():
        inside = judge.grade([JudgeRequest("q", "a", "x1")])  # sync call with a loop running here
        awaited = await judge.agrade([JudgeRequest("q", "a", "x2")])
        return inside + awaited

    assert [v.score for v in asyncio.run(main())] == [1.0, 1.0]
    results: list = []
    threads = [
        threading.Thread(target=lambda i=i: results.extend(judge.grade([JudgeRequest("q", "a", f"t{i}")])))
        for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert [v.score for v in results] == [1.0] * 3
    assert judge.stats["requests"] == 5 and server.calls == 5


# ---------------------------------------------------------------- parsing and prompt


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Score: 1", 1),
        ("score:0", 0),
        ("SCORE : 1.", 1),
        ("**Score:** 1", 1),
        ("Score: **0**", 0),
        ("Score: 1.0", 1),
        (TRICKY_REPLY, 0),
        ("Score: 0\nOn reflection the answer is right.\nScore: 1", 1),
        ("1 1 1 correct 1", None),
        ("Score: 10", None),
        ("Score: 0.5", None),
        ("Scores: 1", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_score_takes_the_last_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[YES]]", 1),
        ("The answers match. [[no]]", 0),
        ("[[NO]] ... wait, they match. [[YES]]", 1),
        ("Score: 1 but actually [[NO]]", 0),
        ("[[YES]] then Score: 0", 0),
        ("yes yes", None),
    ],
)
def test_parse_judgement_accepts_yes_no(text, expected):
    assert parse_judgement(text) == expected


def test_prompt_asks_for_the_paper_rules():
    prompt = render_prompt(JudgeRequest("Q {truth}?", "T", "P {question}"))
    assert "Question: Q {truth}?" in prompt and "Model's answer: P {question}" in prompt
    lowered = JUDGE_PROMPT.lower()
    for phrase in ("synonym", "paraphrase", "definitive", "unit", '"score: 1"', '"score: 0"'):
        assert phrase in lowered


# ---------------------------------------------------------------- rule judge


@pytest.mark.parametrize(
    ("question", "truth", "prediction", "score"),
    [
        ("q", "The Cat", "cat.", 1),
        ("q", "red", "blue", 0),
        ("q", "red", None, 0),
        ("q", "red", "", 0),
        ("q", "3", "3.0", 1),
        ("q", "3.5", "35", 0),  # the decimal point matters
        ("q", "-3", "3", 0),
        ("q", "1,234", "1234", 1),
        ("q", "0.5", "1/2", 1),
        ("q", "12%", "12", 1),
        ("q", "1.0000001", "1", 1),  # within 1e-6 relative
        ("q", "1.001", "1", 0),
        ("q", "7", "\\boxed{7}", 1),
        ("q", "7", "<think>hmm</think><answer>7</answer>", 1),
        ("Which one? (A) cat (B) dog (C) cow", "B", "dog", 1),
        ("Which one? (A) cat (B) dog (C) cow", "B", "(B)", 1),
        ("Which one? (A) cat (B) dog (C) cow", "B", "B. dog", 1),
        ("Which one? (A) cat (B) dog (C) cow", "(B) dog", "A", 0),
        ("Which one? (A) cat (B) dog (C) cow", "cat", "a", 1),
        ("Which one?\nA. cat\nB. dog", "dog", "B", 1),
        ("Which one?\nA. cat\nB. dog", "A", "dog", 0),
        ("q", "A", "a", 1),
    ],
)
def test_rule_judge(question, truth, prediction, score):
    [verdict] = RuleJudge().grade([JudgeRequest(question, truth, prediction)])
    assert verdict.score == score and verdict.ok


def test_rule_judge_tolerance_is_configurable():
    request = JudgeRequest("q", "100", "101")
    assert RuleJudge().grade([request])[0].score == 0.0
    assert RuleJudge(rel_tol=0.02).grade([request])[0].score == 1.0


def test_parse_choices():
    assert parse_choices("Pick: (A) a red cat (B) dog\n(C) cow") == {"A": "a red cat", "B": "dog", "C": "cow"}
    assert parse_choices("Options:\nA: yes\nB: no") == {"A": "yes", "B": "no"}
    assert parse_choices("What is (x) here?") == {}


# ---------------------------------------------------------------- local model judge


@pytest.fixture(scope="module")
def tiny_lm():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from visionthink.models import build_tiny_tokenizer
    from visionthink.train.sft_data import tokenizer_corpus

    tokenizer = build_tiny_tokenizer(tokenizer_corpus(repeats=1))
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=(len(tokenizer) + 63) // 64 * 64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config).eval(), tokenizer


def test_local_judge_garbage_falls_back(tiny_lm):
    model, tokenizer = tiny_lm
    judge = LocalJudge(model, tokenizer, max_new_tokens=6, fallback="rule")
    requests = [JudgeRequest("q", "red", "red"), JudgeRequest("q", "red", "blue"), JudgeRequest("q", "red", None)]
    verdicts = judge.grade(requests)
    assert all(parse_judgement(v.raw) is None for v in verdicts[:2])  # a random model writes no verdict
    assert [v.score for v in verdicts] == [1.0, 0.0, 0.0]
    assert [v.ok for v in verdicts] == [False, False, True]
    assert "Score" in verdicts[0].error and judge.stats["failures"] == 2
    drop = LocalJudge(model, tokenizer, max_new_tokens=4, fallback="drop")
    assert [(v.score, v.ok) for v in drop.grade(requests[:1])] == [(0.0, False)]


def test_local_judge_parses_crafted_replies(tiny_lm, monkeypatch):
    model, tokenizer = tiny_lm
    judge = LocalJudge(model, tokenizer, batch_size=2)
    replies = iter([["Match. [[YES]]", TRICKY_REPLY], ["1 1 1"]])
    seen: list[list[str]] = []

    def fake_generate(prompts):
        seen.append(list(prompts))
        return next(replies)

    monkeypatch.setattr(judge, "generate", fake_generate)
    requests = [JudgeRequest("q", "red", p) for p in ["crimson", "green", "crimson", "red"]]
    verdicts = judge.grade(requests)
    assert [(v.score, v.ok) for v in verdicts] == [(1.0, True), (0.0, True), (1.0, True), (1.0, False)]
    assert [len(batch) for batch in seen] == [2, 1]  # the duplicate went out once
    assert "<|im_start|>assistant" in seen[0][0] and "Model's answer: crimson" in seen[0][0]
    assert judge.stats == {"requests": 4, "cache_hits": 1, "failures": 1}
    assert judge.grade(requests[:1]) == verdicts[:1] and judge.stats["cache_hits"] == 2

    def broken(prompts):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(judge, "generate", broken)
    [failed] = judge.grade([JudgeRequest("q", "red", "Red")])
    assert failed.score == 1.0 and not failed.ok and "out of memory" in failed.error


def test_local_judge_from_a_folder(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    judge = make_judge(f"local:{tmp_path}", max_new_tokens=3, fallback="drop")
    assert isinstance(judge, LocalJudge)
    [verdict] = judge.grade([JudgeRequest("q", "red", "red")])
    assert verdict.score == 0.0 and not verdict.ok


# ---------------------------------------------------------------- factory


def test_make_judge_specs():
    assert isinstance(make_judge("rule"), RuleJudge)
    assert make_judge("rule", rel_tol=0.5).rel_tol == 0.5
    judge = make_judge("http:http://127.0.0.1:8000/v1#Qwen/Qwen3-1.7B", concurrency=2)
    assert isinstance(judge, HTTPJudge)
    assert judge.url == "http://127.0.0.1:8000/v1/chat/completions"
    assert judge.model == "Qwen/Qwen3-1.7B" and judge.concurrency == 2
    bare = make_judge("https://example.invalid/v1/chat/completions")
    assert bare.url == "https://example.invalid/v1/chat/completions" and bare.model == "gpt-4o"
    for bad in ("gpt", "http:localhost:8000", "local:", ""):
        with pytest.raises(ValueError):
            make_judge(bad)
    with pytest.raises(ValueError, match="fallback"):
        HTTPJudge("http://127.0.0.1:1/v1", fallback="raise")


# ---------------------------------------------------------------- hostile replies (linear parsing, size caps, deadline)


@pytest.mark.parametrize(
    "reply",
    [
        "Score:" + " " * 10_000_000,  # quadratic under the old regex: 32,000 spaces took 21 s
        "Score" + " *" * 5_000_000,
        "Score: " + "*" * 5_000_000 + " " * 5_000_000,
        "Score: 1." + "0" * 10_000_000 + "5",
        "score: " * 1_500_000,
        "[[" + " " * 10_000_000,
    ],
    ids=["spaces", "star-spaces", "stars-then-spaces", "zeros", "many-scores", "brackets"],
)
def test_a_10mb_reply_parses_in_under_a_second(reply):
    assert len(reply) >= 10_000_000
    start = time.perf_counter()
    assert parse_score(reply) is None
    assert parse_judgement(reply) is None
    assert time.perf_counter() - start < 1.0
    tail = reply + "\nScore: 1"
    start = time.perf_counter()
    assert parse_score(tail) == 1 and parse_judgement(tail) == 1
    assert time.perf_counter() - start < 1.0


def test_an_oversized_reply_is_refused_without_retry(server):
    server.default = ("reply", "Score: 1" + " " * 3_000_000)
    judge = judge_for(server.url, retries=3, fallback="rule", max_reply_bytes=1_000_000)
    start = time.monotonic()
    [verdict] = judge.grade([JudgeRequest("q", "red", "red")])
    assert time.monotonic() - start < 5.0
    assert verdict.score == 1.0 and not verdict.ok and "over 1000000 bytes" in verdict.error
    assert server.calls == 1 and judge.stats["retries"] == 0
    assert verdict.raw is None or len(verdict.raw) <= 2000
    # a reply within the cap is graded as usual
    server.default = ("reply", "Fine.\nScore: 1")
    assert judge.grade([JudgeRequest("q", "red", "crimson")])[0] == Verdict(1.0, ok=True, raw="Fine.\nScore: 1")
    with pytest.raises(ValueError, match="max_reply_bytes"):
        HTTPJudge("http://127.0.0.1:1/v1", max_reply_bytes=0)


def test_a_batch_has_one_deadline(server):
    def slow_for_some(body):
        answer = body["messages"][-1]["content"].split("Model's answer:")[1].splitlines()[0]
        return ("hang", 10.0) if "slow" in answer else ("reply", "Score: 1")

    server.default = slow_for_some
    # each request alone may take up to 2 x 3 s; the whole batch gets 0.5 s
    judge = judge_for(server.url, timeout=3.0, retries=1, batch_timeout=0.5, fallback="rule")
    requests = [JudgeRequest("q", "red", p) for p in ("red fast", "red slow", "blue slow")]
    start = time.monotonic()
    verdicts = judge.grade(requests)
    assert time.monotonic() - start < 2.0
    assert verdicts[0] == Verdict(1.0, ok=True, raw="Score: 1")
    assert [(v.score, v.ok) for v in verdicts[1:]] == [(0.0, False), (0.0, False)]  # the rule grade of each
    assert all("batch deadline" in v.error for v in verdicts[1:])
    assert judge.stats["failures"] == 2
    assert judge.cache.keys() == {("q", "red", "red fast")}  # timed-out verdicts are not cached
    with pytest.raises(ValueError, match="batch_timeout"):
        HTTPJudge("http://127.0.0.1:1/v1", batch_timeout=0)


# ---------------------------------------------------------------- retry policy details


def test_429_is_retried(server):
    server.script = [("status", 429), ("status", 429)]
    server.default = ("reply", "Score: 0")
    judge = judge_for(server.url, retries=2, fallback="drop")
    [verdict] = judge.grade([JudgeRequest("q", "red", "blue")])
    assert verdict == Verdict(0.0, ok=True, raw="Score: 0")
    assert server.calls == 3 and judge.stats["retries"] == 2 and judge.stats["failures"] == 0


def test_backoff_doubles_and_is_capped(server, monkeypatch):
    import visionthink.rewards.http_judge as judges_module

    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def record(delay, *args, **kwargs):
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(judges_module.asyncio, "sleep", record)
    server.default = ("status", 503)
    judge = judge_for(server.url, retries=5, backoff=1.0, backoff_max=3.0, jitter=0.0, fallback="drop")
    [verdict] = judge.grade([JudgeRequest("q", "red", "red")])
    assert not verdict.ok and server.calls == 6
    assert slept == [1.0, 2.0, 3.0, 3.0, 3.0]  # 1, 2, then 4 and 8 and 16 capped at 3

    slept.clear()
    jittered = judge_for(server.url, retries=3, backoff=1.0, backoff_max=3.0, jitter=0.5, fallback="drop")
    jittered.grade([JudgeRequest("q", "red", "other")])
    assert len(slept) == 3
    for delay, base in zip(slept, [1.0, 2.0, 3.0], strict=True):
        assert base <= delay <= base * 1.5


@pytest.mark.parametrize(
    "text",
    ["Subscore: 1", "Sub-score 1", "scores: 1", "score_1: 1", "Scorer: 1", "Final subscore: 1\nsubscore: 0",
     "Score 1", "Score: 01"],
)
def test_only_a_whole_word_score_counts(text):
    assert parse_score(text) is None and parse_judgement(text) is None


def test_subscore_after_the_score_does_not_override_it():
    assert parse_score("Score: 0\nSubscore: 1") == 0
    assert parse_judgement("Score: 1\nSubscore: 0") == 1
