"""The tiny model's tokenizer: a byte-level-free BPE trained with Hugging Face ``tokenizers``.

Numbers such as ``0.25`` and whole words are kept as single pre-tokens, spaces are
tokens of their own, and every printable ASCII character is in the base alphabet, so
any English text can be encoded (rare words fall back to characters).
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
# digits-with-decimals | digits | words | single other character (space included)
PRETOKENIZE_PATTERN = r"\d+\.\d+|\d+|[A-Za-z]+|[^A-Za-z\d]"


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train the BPE tokenizer on ``corpus`` and wrap it as a transformers fast tokenizer."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated")
    tok.decoder = decoders.BPEDecoder()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=list(string.printable),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
