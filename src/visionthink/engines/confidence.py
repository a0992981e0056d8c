"""How sure a model is of the answer it wrote: the least probability it gave any token of the answer.

A direct answer whose confidence is under a threshold (`Request.escalate_below`) is withdrawn and `resize_image` is
called in its place (`engines.base`): the model answers again on the full-resolution view. At the first turn P(tool)
says whether the model thinks it needs a closer look; the answer's confidence says whether what it then wrote is
likely right (on the ladder world's coarse questions the first tells right from wrong answers no better than chance,
the second does: docs/ladder.md).
"""

from __future__ import annotations

from collections.abc import Sequence

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's own text (special tokens kept), as `answer_confidence` and OpenAI's `logprobs` take them."""
    return tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)


def answer_confidence(pieces: Sequence[str], probs: Sequence[float]) -> float | None:
    """The least probability among the tokens that write the answer's text (between `<answer>` and `</answer>`, or to
    the end when the turn stops without closing it). `pieces[i]` is token i's text, `probs[i]` its probability. None
    where the turn holds no answer or an empty one."""
    if len(pieces) != len(probs):
        raise ValueError(f"{len(pieces)} token texts for {len(probs)} probabilities")
    text, starts = "", []
    for piece in pieces:
        starts.append(len(text))
        text += piece
    open_at = text.find(ANSWER_OPEN)
    if open_at < 0:
        return None
    begin = open_at + len(ANSWER_OPEN)
    close_at = text.find(ANSWER_CLOSE, begin)
    end = len(text) if close_at < 0 else close_at
    if not text[begin:end].strip():
        return None
    inside = [p for start, piece, p in zip(starts, pieces, probs, strict=True)
              if start < end and start + len(piece) > begin and piece.strip()]
    return min(inside) if inside else None
