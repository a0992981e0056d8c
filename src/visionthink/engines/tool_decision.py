"""The first-turn decision: the probability the model gives the tool path, and a threshold that picks the path.

After its reasoning (`</think>`), a first turn opens either the answer (`<answer>`) or a tool call (`<tool_call>`).
At the first token that opens either, P(tool) is the probability of the tool's opening token normalised over both
alternatives' opening tokens. With a threshold T the path is chosen by it: the tool when P(tool) >= T (T = 0: always,
T > 1: never), else the likeliest answer opening; the rest of the turn is the model's own. Without a threshold the
token the decoder chose stays, so greedy episodes are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
TOOL_OPEN = "<tool_call>"


@dataclass(frozen=True)
class PathTokens:
    """The token ids that open each path at the decision."""

    tool_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer) -> PathTokens:
        """`<tool_call>`'s id, and every token whose text (leading whitespace aside) begins `<answer>` or is the start
        of it: the tiny vocabulary's `<answer>`, a BPE's `<` or `<answer`."""
        tool = tokenizer.convert_tokens_to_ids(TOOL_OPEN)
        special = set(tokenizer.all_special_ids)
        answer = []
        for token, index in tokenizer.get_vocab().items():
            if index in special or index == tool:
                continue
            text = tokenizer.convert_tokens_to_string([token]).lstrip()
            if text and (ANSWER_OPEN.startswith(text) or text.startswith(ANSWER_OPEN)):
                answer.append(index)
        if tool is None or tool == tokenizer.unk_token_id or not answer:
            raise ValueError("this tokenizer has no <tool_call> token or no token that opens <answer>")
        return cls((tool,), tuple(sorted(answer)))

    def p_tool(self, logits: torch.Tensor) -> float:
        """P(tool) from one position's logits, normalised over the two paths' opening tokens."""
        tool = torch.logsumexp(logits[list(self.tool_ids)].float(), 0)
        answer = torch.logsumexp(logits[list(self.answer_ids)].float(), 0)
        return float(torch.sigmoid(tool - answer))

    def best_answer(self, logits: torch.Tensor) -> int:
        """The likeliest token that opens the answer."""
        ids = list(self.answer_ids)
        return ids[int(logits[ids].argmax())]


class Decisions:
    """The first-turn decision of each row of one decode call: P(tool) is recorded where it is met and, for a row
    with a threshold, the path is chosen by it.

    `thresholds[row]`: None records only. `watch[row]` False: that row makes no decision here (a forbidden call).
    `decode` turns a row's written ids into text (to see that its reasoning is closed)."""

    def __init__(self, paths: PathTokens, thresholds: list[float | None], watch: list[bool],
                 decode: Callable[[list[int]], str]):
        self.paths = paths
        self.thresholds = list(thresholds)
        self.watch = list(watch)
        self.decode = decode
        self.p_tool: list[float | None] = [None] * len(thresholds)
        self._openers = set(paths.tool_ids) | set(paths.answer_ids)

    def pending(self, row: int) -> bool:
        """Whether `row` has a decision still to make here."""
        return self.watch[row] and self.p_tool[row] is None

    def review(self, row: int, logits: torch.Tensor, token: int, written: list[int]) -> int:
        """The token `row` writes after `written`, given the decoder chose `token` from `logits` (one position)."""
        if not self.pending(row) or token not in self._openers:
            return token
        if THINK_CLOSE not in self.decode(written):
            return token
        p_tool = self.paths.p_tool(logits)
        self.p_tool[row] = p_tool
        threshold = self.thresholds[row]
        if threshold is None:
            return token
        if p_tool >= threshold:
            return self.paths.tool_ids[0] if token not in self.paths.tool_ids else token
        return token if token in self.paths.answer_ids else self.paths.best_answer(logits)
