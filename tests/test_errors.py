"""Bad input gets a specific exception that says what was expected."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlm_lens import (
    DeviceMismatchError,
    HookedVLM,
    HookNameError,
    ImageTokenMismatchError,
    InputError,
    LayerIndexError,
    UnsupportedModelError,
)


def test_more_images_than_prompts(model, images):
    with pytest.raises(ImageTokenMismatchError, match="2 image entries for 1 prompts"):
        model.prepare(images=images, prompts=["is there a square ?"])


def test_placeholders_and_images_disagree(model, images):
    tag = model.processor.image_token
    with pytest.raises(ImageTokenMismatchError, match="has no image placeholder"):
        model.prepare(images=[images[0]], prompts=["is there a square ?"], template=False)
    with pytest.raises(ImageTokenMismatchError, match="2 image"):
        model.prepare(images=[images], prompts=[f"{tag} is there a square ?"], template=False)
    with pytest.raises(ImageTokenMismatchError, match="already contains"):
        model.prepare(images=[images[0]], prompts=[f"{tag} is there a square ?"])


def test_forward_tensors_without_image_tokens(model, inputs):
    ids = inputs.input_ids.clone()
    ids[ids == model.cfg.image_token_id] = 5
    with pytest.raises(ImageTokenMismatchError, match="missing its image placeholder"):
        model(**{**inputs.tensors, "input_ids": ids})


def test_forward_tensors_with_too_few_image_tokens(model, inputs):
    ids = inputs.input_ids.clone()
    first = inputs.image_spans[0][0].start
    ids[0, first] = 5
    with pytest.raises(ImageTokenMismatchError):
        model(**{**inputs.tensors, "input_ids": ids})


@pytest.mark.parametrize("image", [Image.new("RGBA", (32, 32)), Image.new("L", (32, 32)), Image.new("RGB", (0, 32))])
def test_bad_images(model, image):
    with pytest.raises(InputError, match="mode|size 0"):
        model.prepare(images=[image], prompts=["is there a square ?"])


def test_not_an_image(model):
    with pytest.raises(InputError, match="expected a PIL image"):
        model.prepare(images=["cat.jpg"], prompts=["is there a square ?"])


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=10)
    )
    with pytest.raises(UnsupportedModelError, match="LlavaForConditionalGeneration.*PaliGemma.*Qwen2VL"):
        HookedVLM.from_hf(llama)


def test_unknown_hook_name_lists_closest(model, inputs):
    with pytest.raises(HookNameError) as raised:
        model.run_with_hooks(inputs, fwd_hooks=[("blocks.1.hook_resid_pots", lambda a, h: None)])
    message = str(raised.value)
    assert message.startswith("unknown hook name 'blocks.1.hook_resid_pots'")
    assert "Closest valid names: ['blocks.1.hook_resid_post'," in message  # the nearest name first
    assert message.endswith("model.hook_names() lists them all.")


def test_layer_out_of_range(model, inputs):
    with pytest.raises(LayerIndexError, match="layer 9 is out of range; this model has 2 language layers"):
        model.run_with_hooks(inputs, fwd_hooks=[("blocks.9.hook_resid_post", lambda a, h: None)])
    with pytest.raises(LayerIndexError, match="vision"):
        model.run_with_cache(inputs, names_filter="vision.blocks.5.hook_resid_post")
    _, cache = model.run_with_cache(inputs, names_filter="blocks.1.hook_resid_post")
    with pytest.raises(LayerIndexError):
        cache["resid_post", 2]
    with pytest.raises(HookNameError, match="not cached"):
        cache["resid_post", 0]


def test_inputs_on_wrong_dtype_or_device(model, inputs):
    with pytest.raises(DeviceMismatchError, match="float64"):
        model(inputs.to("cpu", torch.float64))
    with pytest.raises(DeviceMismatchError, match="meta"):
        model(inputs.to("meta"))


def test_hook_returning_wrong_shape(model, inputs):
    with pytest.raises(ValueError, match="returned shape"):
        model.run_with_hooks(inputs, fwd_hooks=[("blocks.0.hook_resid_post", lambda a, h: a[:, :1])])


def test_generate_refuses_right_padding(model, images):
    inputs = model.prepare(
        images=images, prompts=["is there a red square in the image ?", "how many"], padding_side="right"
    )
    with pytest.raises(InputError, match="padding_side='left'"):
        model.generate(inputs, max_new_tokens=2)


@pytest.mark.parametrize("cut", ["batch", "pos"])
def test_attention_mask_of_another_shape_is_refused(model, inputs, cut):
    mask = inputs.tensors["attention_mask"]
    wrong = mask[:1] if cut == "batch" else mask[:, 1:]
    with pytest.raises(
        InputError, match=r"attention_mask has shape .* but input_ids .*one attention_mask entry per token"
    ):
        model.as_inputs(**{**inputs.tensors, "attention_mask": wrong})
