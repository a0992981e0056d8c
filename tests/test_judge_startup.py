"""A judge that refuses at start-up stops GRPO with the reason (a real HTTP server on loopback), instead of every
verdict falling back to the rule grade without a word."""

from __future__ import annotations

import contextlib
import json

import pytest
from conftest import QuietHandler, http_server  # tests/ is on sys.path

from visionthink.rewards.http_judge import HTTPJudge, JudgeUnavailable


class _Handler(QuietHandler):
    """Lists two models; `/v1/chat/completions` answers with the server's `status` (the test sets it per server)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.reply(200, {"object": "list", "data": [{"id": "Qwen2.5-72B-Instruct"}, {"id": "judge"}]})

    def do_POST(self):  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(request)
        let_in = self.server.status == 401 and self.headers.get("Authorization") == "Bearer right-key"
        if self.server.status == 200 or let_in:
            self.reply(200, {"choices": [{"message": {"role": "assistant", "content": "Score: 1"}}]})
        else:
            message = {404: f"The model `{request['model']}` does not exist.", 401: "Unauthorized",
                       503: "busy", 400: "bad request"}[self.server.status]
            self.reply(self.server.status, {"error": {"message": message}})


@pytest.fixture()
def judge_server():
    """Starts a judge answering with a given status; gives its /v1 base. All stop when the test ends."""
    with contextlib.ExitStack() as servers:

        def start(status: int) -> str:
            server = servers.enter_context(http_server(_Handler))
            server.status, server.bodies = status, []
            return server.url + "/v1"

        yield start


def test_a_judge_that_answers_404_is_refused_with_the_served_models(judge_server):
    url = judge_server(404)
    with pytest.raises(JudgeUnavailable) as caught:
        HTTPJudge(url, model="gpt-4o", retries=0).check()
    message = str(caught.value)
    assert "HTTP 404" in message and "'gpt-4o'" in message
    assert "Qwen2.5-72B-Instruct, judge" in message and "after '#'" in message


def test_a_judge_that_answers_401_is_refused_and_a_key_lets_it_pass(judge_server, monkeypatch):
    url = judge_server(401)
    monkeypatch.delenv("VISIONTHINK_JUDGE_API_KEY", raising=False)
    with pytest.raises(JudgeUnavailable, match="HTTP 401 .*key"):
        HTTPJudge(url, model="judge").check()
    HTTPJudge(url, model="judge", api_key="right-key").check()


def test_a_working_judge_passes_and_passing_trouble_only_passes(judge_server):
    HTTPJudge(judge_server(200), model="judge").check()
    HTTPJudge(judge_server(503), model="judge").check()  # 5xx: retried later, not a configuration error
    with pytest.raises(JudgeUnavailable, match="HTTP 400"):
        HTTPJudge(judge_server(400), model="judge").check()


def test_a_judge_that_is_not_there_is_refused(free_port):
    with pytest.raises(JudgeUnavailable, match="cannot be reached"):
        HTTPJudge(f"http://127.0.0.1:{free_port()}/v1", model="judge").check(timeout=5)


def test_grpo_start_up_stops_on_a_refusing_judge(judge_server, tmp_path):
    """`train.grpo.start_judge`, what `build_trainer` calls before any model is loaded."""
    from visionthink.train.grpo import start_judge
    from visionthink.train.grpo_config import VisionThinkGRPOConfig

    def config(url: str, **more) -> VisionThinkGRPOConfig:
        return VisionThinkGRPOConfig(output_dir=str(tmp_path), judge=f"http:{url}", report_to="none", **more)

    missing = judge_server(404)
    with pytest.raises(JudgeUnavailable, match="HTTP 404 for model 'gpt-4o'"):  # no '#model': HTTPJudge's default
        start_judge(config(missing))
    with pytest.raises(JudgeUnavailable, match="HTTP 401"):
        start_judge(config(judge_server(401) + "#judge"))
    assert isinstance(start_judge(config(missing, judge_check=False)), HTTPJudge)  # checked only when asked
    good = judge_server(200)
    judge = start_judge(config(good + "#judge"))
    assert isinstance(judge, HTTPJudge) and judge.model == "judge"
    assert start_judge(VisionThinkGRPOConfig(output_dir=str(tmp_path), report_to="none")).name == "rule"


def test_build_trainer_asks_the_judge_before_loading_the_model(judge_server, tmp_path):
    from visionthink.train.grpo import build_trainer
    from visionthink.train.grpo_config import VisionThinkGRPOConfig

    config = VisionThinkGRPOConfig(output_dir=str(tmp_path), judge=f"http:{judge_server(404)}#judge",
                                   model=str(tmp_path / "no-such-model"), report_to="none")
    with pytest.raises(JudgeUnavailable, match="HTTP 404 for model 'judge'"):
        build_trainer(config)
