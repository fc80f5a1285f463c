"""Tiny HF processors built in-process (no download): a byte-level BPE tokenizer trained here, with the image
token and a chat template, behind a LLaVA-style and a Qwen2-VL-style processor."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

CHAT_TEMPLATE = (
    "{%- macro render(message) -%}{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}IMAGE"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}{%- endmacro -%}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ render(message) }}<|im_end|>{% endgeneration %}{% else %}{{ render(message) }}"
    "<|im_end|>{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML, each image (IMAGE) as the processor's image token (Qwen2-VL wraps it in vision start/end), the
assistant turns marked `{% generation %}` so that HF's own `return_assistant_tokens_mask` is a reference."""

LLAVA_SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<image>"]
QWEN_SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
CORPUS = [f"user\nquestion {i} answer {i} context {i} assistant system describe the image." for i in range(200)]


def tokenizer(specials: list[str], corpus: Iterable[str] = CORPUS, vocab_size: int = 320
              ) -> PreTrainedTokenizerFast:
    """A byte-level BPE (as Qwen's and Llama 3's) trained on `corpus`, `specials` added as special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   additional_special_tokens=specials[1:])


def llava_processor(size: int = 28) -> LlavaProcessor:
    """LLaVA-1.5's layout at `size` pixels: CLIP resize-shortest + centre crop, 14-pixel patches."""
    images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    template = CHAT_TEMPLATE.replace("IMAGE", "<image>")
    return LlavaProcessor(images, tokenizer(LLAVA_SPECIALS), patch_size=14, num_additional_image_tokens=1,
                          vision_feature_select_strategy="default", chat_template=template)


def qwen2vl_processor(min_pixels: int = 28 * 28 * 2, max_pixels: int = 28 * 28 * 12) -> Qwen2VLProcessor:
    """Qwen2-VL's layout (smart_resize to multiples of 28, 14-pixel patches merged 2x2), few pixels."""
    images = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    videos = Qwen2VLVideoProcessor()
    template = CHAT_TEMPLATE.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
    return Qwen2VLProcessor(images, tokenizer(QWEN_SPECIALS), videos, chat_template=template)


def tiny_llava(processor: LlavaProcessor, seed: int = 0) -> Any:
    """A randomly initialised LLaVA (one-layer CLIP vision tower, two-layer Llama) for `processor`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    size = processor.image_processor.crop_size["height"]
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=size, patch_size=14)
    text = LlamaConfig(vocab_size=len(processor.tokenizer), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=256, pad_token_id=processor.tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=processor.image_token_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu")
    return LlavaForConditionalGeneration(config)


def tiny_qwen2vl(processor: Qwen2VLProcessor, seed: int = 0) -> Any:
    """A randomly initialised Qwen2-VL (one vision block, two text layers) for `processor`."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    tok = processor.tokenizer
    config = Qwen2VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                         "mrope_section": [2, 3, 3]},
                     "bos_token_id": None, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2},
        image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    return Qwen2VLForConditionalGeneration(config)


def llava_next_processor() -> Any:
    """LLaVA-NeXT's anyres layout, small: a 28-pixel base tile and a grid chosen from the stored image size."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    images = LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                     image_grid_pinpoints=[[28, 56], [56, 28], [56, 56]])
    template = CHAT_TEMPLATE.replace("IMAGE", "<image>")
    return LlavaNextProcessor(images, tokenizer(LLAVA_SPECIALS), patch_size=14, num_additional_image_tokens=1,
                              vision_feature_select_strategy="default", chat_template=template)
