"""Tokenizers: train a byte-level BPE on report text, with radlvlm's special tokens and chat template.

Hospitals bring a tokenizer with their LM (Vicuna's for LLaVA-Rad); the small embedded model and the tests
use one trained here with the ``tokenizers`` library, nothing downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from radlvlm.errors import ModelError

PAD, BOS, EOS, IMAGE, UNK = "<pad>", "<s>", "</s>", "<image>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IMAGE, UNK]  # ids 0..4, in this order

# Vicuna v1 conversation format, as LLaVA-1.5 and LLaVA-Rad were trained with ("SYSTEM USER: … ASSISTANT: …</s>").
# A message's content is a string, or transformers' structured content (a list of {"type": "image"} and
# {"type": "text", "text": …} parts, what trl and HF chat pipelines send): an image part is "<image>" on a line of its
# own, as ``RadProcessor.chat_prompt`` puts it.
VICUNA_CHAT_TEMPLATE = (
    "{% macro render(content) %}"
    "{% if content is string %}{{ content }}"
    "{% else %}{% for part in content %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endmacro %}"
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ render(message['content']) }} "
    "{% elif message['role'] == 'user' %}USER: {{ render(message['content']) }} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: {{ render(message['content']) }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 4096, min_frequency: int = 2, image_token: bool = True
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``; special tokens take ids 0-4 (pad, bos, eos, image, unk).

    ``image_token=False`` leaves ``<image>`` out (an LM-only tokenizer, as LLaVA's bases have).
    """
    specials = SPECIAL_TOKENS if image_token else [t for t in SPECIAL_TOKENS if t != IMAGE]
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ModelError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256} for a byte-level BPE")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    materialised = [text for text in texts if text]
    if not materialised:
        raise ModelError("cannot train a tokenizer on no text")
    tokenizer.train_from_iterator(materialised, trainer=trainer)
    return wrap_tokenizer(tokenizer, image_token=image_token)


def wrap_tokenizer(tokenizer: Tokenizer, *, image_token: bool = True) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IMAGE] if image_token else [],
        padding_side="left",
    )
    fast.chat_template = VICUNA_CHAT_TEMPLATE
    return fast
