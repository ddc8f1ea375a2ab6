"""Video inputs (the Qwen-VL families): frames through ``prepare``, spans with a time axis, HF's own forward.

Oracles: HF's forward, generate and vision tower on the same tensors; HF's ``get_rope_index`` (the M-RoPE
(time, row, column) of every video token: where the model itself thinks each token sits) and the processor's
``mm_token_type_ids`` (which tokens are video); HF's image processor for a still video; the tower's patch embedding
layout ([channel, time, patch, patch] per row, ``PatchEmbed``'s ``view``) for the time order of frames.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from analyses.attention_structure import image_grids
from analyses.attribution import attribute, on_grid
from analyses.patch_masking import PatchMask, attention_grids, choose_cells, pixel_mask, token_mask
from analyses.views import answer_attention, attention_view, token_labels
from model_adapters import SPECS
from model_adapters.video import FrameVideoProcessor, video_size
from tests.conftest import FAMILIES, tiny
from vlm_lens import ImageTokenMismatchError, InputError
from vlm_lens.spans import ImageSpan, View

VIDEO_FAMILIES = [f for f in FAMILIES if tiny(f).adapter.video_spans is not None]
_BUILT: dict = {}


def test_the_qwen_families_take_video():
    assert VIDEO_FAMILIES == ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"]


@pytest.fixture(params=VIDEO_FAMILIES)
def vmodel(request):
    if request.param not in _BUILT:
        _BUILT[request.param] = tiny(request.param)
    return _BUILT[request.param]


def clip(n: int = 5, seed: int = 0, size=(16, 16)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def picture(seed: int = 9) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 24, 3), dtype=np.uint8))


def mixed(model):
    """Item 0: an image and a 5-frame video; item 1: a 3-frame video alone."""
    return model.prepare([picture(), None], ["what happens", "and here"], videos=[clip(5), clip(3, seed=1)])


def hf_places(model, inputs, item: int) -> dict[int, tuple[int, int, int]]:
    """Video token position -> (frame, row, col) from HF's own M-RoPE positions (one video per item here)."""
    t = inputs.tensors
    extra = {"second_per_grid_ts": t["second_per_grid_ts"]} if "second_per_grid_ts" in t else {}
    pos, _ = model.hf_model.model.get_rope_index(
        t["input_ids"],
        t["mm_token_type_ids"],
        t.get("image_grid_thw"),
        t["video_grid_thw"],
        attention_mask=inputs.attention_mask,
        **extra,
    )
    video = torch.nonzero(t["mm_token_type_ids"][item] == 2).flatten().tolist()
    when = sorted({int(pos[0, item, p]) for p in video})
    places = {}
    for p in video:
        same = [q for q in video if int(pos[0, item, q]) == int(pos[0, item, p])]
        top, left = min(int(pos[1, item, q]) for q in same), min(int(pos[2, item, q]) for q in same)
        places[p] = (when.index(int(pos[0, item, p])), int(pos[1, item, p]) - top, int(pos[2, item, p]) - left)
    return places


def test_video_spans_sit_where_hf_places_every_video_token(vmodel):
    inputs = mixed(vmodel)
    for item, frames in ((0, 3), (1, 2)):  # 5 frames -> 3 temporal patches (the last repeated), 3 -> 2
        spans = inputs.image_spans[item]
        (video,) = [s for s in spans if s.video]
        places = hf_places(vmodel, inputs, item)
        assert sorted(video.positions) == sorted(places)  # exactly the tokens the processor marks as video
        assert {p: video.locate(p) for p in video.positions} == places
        assert (video.frames, video.image, video.label) == (frames, item, f"video {item}")
    image, video = inputs.image_spans[0]
    assert (image.video, image.label, image.end <= video.start) == (False, "image 0", True)


def test_video_forward_generate_and_tower_match_hf(vmodel):
    inputs = mixed(vmodel)
    hf = vmodel.hf_model
    logits, cache = vmodel.run_with_cache(
        inputs, names_filter=lambda n: n in ("blocks.0.hook_resid_pre", "projector.hook_out")
    )
    with torch.no_grad():
        ref = hf(**inputs.tensors, output_hidden_states=True)
        images = hf.model.get_image_features(inputs.tensors["pixel_values"], inputs.tensors["image_grid_thw"])
        videos = hf.model.get_video_features(inputs.tensors["pixel_values_videos"], inputs.tensors["video_grid_thw"])
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], ref.hidden_states[0], rtol=0, atol=1e-6)
    tower = lambda out: torch.cat(list(out.pooler_output if hasattr(out, "pooler_output") else out))  # noqa: E731
    # the packed tower runs on the images, then on the videos: the cache keeps both, in that order
    torch.testing.assert_close(
        cache["projector.hook_out"], torch.cat([tower(images), tower(videos)]), rtol=0, atol=1e-6
    )
    ours = vmodel.generate(inputs, max_new_tokens=3)
    theirs = hf.generate(**inputs.tensors, max_new_tokens=3, do_sample=False)
    assert torch.equal(ours, theirs)


def test_frames_are_grouped_in_time_as_the_tower_reads_them(vmodel):
    processor = vmodel.processor
    ip, vp = processor.image_processor, processor.video_processor
    # a still video is its picture: HF's image processor copies one frame over the temporal patch
    still = vp([[picture()] * 2])
    image = ip(images=[picture()], size=vp.size, return_tensors="pt")
    torch.testing.assert_close(still["pixel_values_videos"], image["pixel_values"])
    assert still["video_grid_thw"].tolist() == image["image_grid_thw"].tolist()
    # two flat frames: each patch row is [channel, time, patch, patch] (the tower's PatchEmbed view), red then blue
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    rows = vp([[red, blue]])["pixel_values_videos"].view(-1, 3, vp.temporal_patch_size, vp.patch_size**2)
    mean, std = torch.tensor(ip.image_mean), torch.tensor(ip.image_std)
    for t, colour in enumerate(([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])):
        want = ((torch.tensor(colour) - mean) / std)[None, :, None].expand(rows.shape[0], 3, vp.patch_size**2)
        torch.testing.assert_close(rows[:, :, t], want, rtol=0, atol=1e-5)
    # an odd count repeats the last frame; arrays are frames too
    three = np.stack([np.asarray(f) for f in clip(3)])
    out = vp([three])
    square = ip(images=clip(1), size=vp.size, return_tensors="pt")["image_grid_thw"]
    assert out["video_grid_thw"].tolist() == [[2, *square[0, 1:].tolist()]]
    last = out["pixel_values_videos"].view(2, -1, 3, vp.temporal_patch_size, vp.patch_size**2)[1]
    torch.testing.assert_close(last[:, :, 0], last[:, :, 1])


def test_repeat_and_token_labels_name_frames(vmodel):
    one = vmodel.prepare(None, "what happens", videos=[clip(4)])
    batch = vmodel.repeat(one, 3)
    assert [[s.image for s in spans] for spans in batch.image_spans] == [[0], [1], [2]]
    logits = vmodel(batch)
    torch.testing.assert_close(logits[0], logits[2])
    torch.testing.assert_close(logits[0], vmodel(one)[0])
    labels = token_labels(vmodel, one)
    places = hf_places(vmodel, one, 0)
    for position, (t, r, c) in places.items():
        assert labels[position] == f"<vid 0 t{t} {r},{c}>"
    strs = vmodel.to_str_tokens(one)[0]
    assert all(strs[p] == f"<video 0 t{t} r{r} c{c}>" for p, (t, r, c) in places.items())
    span = one.image_spans[0][0]
    for p in span.separators:  # Qwen3-VL's time stamps between frames keep their text
        assert not labels[p].startswith("<vid")


def test_grids_over_a_video_frame_and_summed_over_frames(vmodel):
    inputs = mixed(vmodel)
    layers = range(vmodel.cfg.n_layers)
    _, cache = vmodel.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern_rows"))
    places = hf_places(vmodel, inputs, 1)
    rows, cols = inputs.image_spans[1][0].grid
    by_hand = np.zeros((2, len(layers), rows, cols))
    for layer in layers:
        pattern = cache[f"blocks.{layer}.attn.hook_pattern_rows"][1].float().mean(dim=(0, 1))  # key
        for p, (t, r, c) in places.items():
            by_hand[t, layer, r, c] = float(pattern[p])
    for frame in (0, 1):
        np.testing.assert_allclose(image_grids(cache, image=0, frame=frame)[1], by_hand[frame], atol=1e-6)
    np.testing.assert_allclose(image_grids(cache, image=0)[1], by_hand.sum(0), atol=1e-6)


def test_attention_view_draws_one_frame_and_says_which(vmodel):
    inputs = vmodel.prepare(None, "what happens", videos=[clip(4)])
    maps, tokens = answer_attention(vmodel, inputs, frame=1, max_new_tokens=2)
    _, cache = vmodel.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern_rows"))
    places = {p: v for p, v in hf_places(vmodel, inputs, 0).items() if v[0] == 1}
    for layer in range(vmodel.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern_rows"][0, :, -1]  # head key: the first answer token's row
        for p, (_, r, c) in places.items():
            np.testing.assert_allclose(maps[0, layer, :, r, c], pattern[:, p].numpy(), atol=1e-5)
    fig = attention_view(vmodel, inputs, image=clip(4)[2], frame=1, max_new_tokens=2)
    assert "(video 0, frame 1)" in fig.layout.title.text
    with pytest.raises(InputError, match="has 2 frames: pass frame="):
        answer_attention(vmodel, inputs)


def test_masking_a_place_hides_it_in_every_frame(vmodel):
    inputs = vmodel.prepare(None, "what happens", videos=[clip(4)])
    span = inputs.image_spans[0][0]
    places = hf_places(vmodel, inputs, 0)
    cols = span.grid[1]
    want = sorted(p for p, (_, r, c) in places.items() if (r, c) in ((0, 1), (1, 0)))
    edit = token_mask(inputs, [[1, cols]])
    assert sorted(edit.positions[0]) == want  # (0, 1) and (1, 0) in both frames
    masked = pixel_mask(vmodel, inputs, [[1]])
    before, after = inputs.tensors["pixel_values_videos"], masked.tensors["pixel_values_videos"]
    changed = torch.nonzero((before != after).any(-1)).flatten().tolist()
    m2 = vmodel.hf_model.config.vision_config.spatial_merge_size**2
    tokens = sorted(places)  # video tokens in sequence order are the packed tokens' order
    assert changed == [tokens.index(p) * m2 + k for p in sorted(want) if places[p][1:] == (0, 1) for k in range(m2)]
    assert torch.equal(before, inputs.tensors["pixel_values_videos"])  # the caller's inputs untouched


def test_attribution_places_video_nodes_on_frames(vmodel):
    clean = vmodel.prepare(None, "what happens", videos=[clip(4)])
    corrupted = vmodel.prepare(None, "what happens", videos=[clip(4, seed=5)])
    metric = lambda logits: logits[0, -1, 3] - logits[0, -1, 4]  # noqa: E731
    result = attribute(vmodel, clean, corrupted, metric, at=["blocks.1.hook_resid_pre"], positions="image")
    places = hf_places(vmodel, clean, 0)
    frame = result.frame.set_index("position")
    for p, (t, r, c) in places.items():
        found = frame.loc[p, ["media", "image_view", "image_row", "image_col"]].tolist()
        assert found == ["video", t, r, c]
    grid = on_grid(result, "blocks.1.hook_resid_pre", video=True, view=1)
    for p, (t, r, c) in places.items():
        if t == 1:
            assert grid[r, c] == pytest.approx(frame.loc[p, "score"])
    with pytest.raises(InputError, match="no scores at image 0"):
        on_grid(result, "blocks.1.hook_resid_pre")


def test_video_errors_are_one_line(vmodel):
    with pytest.raises(InputError, match="frames of different sizes"):
        vmodel.prepare(None, "q", videos=[[picture(), *clip(1)]])
    with pytest.raises(ImageTokenMismatchError, match="prompt 1 has no image and no video"):
        vmodel.prepare([picture(), None], ["a", "b"], videos=[clip(2), None])
    with pytest.raises(ImageTokenMismatchError, match="has no video placeholder but 1 video"):
        vmodel.prepare(None, "no placeholder", videos=[clip(2)], template=False)
    with pytest.raises(InputError, match="a video is a list of frames"):
        vmodel.prepare(None, "q", videos=[["not a frame"]])
    span = vmodel.prepare(None, "q", videos=[clip(2)]).image_spans[0][0]
    with pytest.raises(InputError, match="no base view"):
        span.stitch(torch.zeros(span.end), kind="base")
    with pytest.raises(InputError, match="no base view"):
        span.position_of(0, 0)


def test_a_family_without_video_says_so():
    model = tiny("llava")
    with pytest.raises(InputError, match="the llava family takes no video"):
        model.prepare(None, "q", videos=[clip(2)])


def test_span_checks():
    with pytest.raises(InputError, match="views are its frames"):
        ImageSpan(0, 0, 4, (2, 2), views=(View("base", (0, 1, 2, 3), (2, 2)),), video=True)
    image = ImageSpan(0, 0, 4, (2, 2))
    with pytest.raises(InputError, match="is no video"):
        image.stitch(torch.zeros(4), frame=0)


def test_a_checkpoints_video_settings_are_read(tmp_path):
    _, processor = SPECS["qwen2_vl"].tiny()
    processor.save_pretrained(tmp_path)
    assert video_size(str(tmp_path)) is None
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"min_pixels": 256, "max_pixels": 512}))
    assert video_size(str(tmp_path)) == {"shortest_edge": 256, "longest_edge": 512}
    loaded = tiny("qwen2_vl").adapter.load_processor(str(tmp_path))
    assert isinstance(loaded.video_processor, FrameVideoProcessor)
    assert loaded.video_processor.size == {"shortest_edge": 256, "longest_edge": 512}


def test_half_precision_keeps_the_time_step_exact():
    model = tiny("qwen2_5_vl")
    model.hf_model.to(torch.bfloat16)
    model.processor.video_processor.fps = 3.0  # 2/3 s per frame group: bfloat16 would round it
    inputs = model.prepare(None, "what happens", videos=[clip(6)])
    seconds = inputs.tensors["second_per_grid_ts"]
    assert seconds.dtype == torch.float32 and inputs.tensors["pixel_values_videos"].dtype == torch.bfloat16
    torch.testing.assert_close(seconds, torch.tensor([2 / 3]))
    assert {p: inputs.image_spans[0][0].locate(p) for p in inputs.image_spans[0][0].positions} == hf_places(
        model, inputs, 0
    )
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), model.hf_model(**inputs.tensors).logits, rtol=0, atol=0)


def test_patch_masking_ranks_a_video_by_its_attention_over_the_frames(vmodel):
    inputs = vmodel.prepare(None, "what happens", videos=[clip(4)])
    (grid,) = attention_grids(vmodel, inputs)  # layers averaged, frames summed
    _, cache = vmodel.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern_rows"))
    places = hf_places(vmodel, inputs, 0)
    by_hand = np.zeros(grid.shape)
    for layer in range(vmodel.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern_rows"][0].float().mean(dim=(0, 1))
        for p, (_, r, c) in places.items():
            by_hand[r, c] += float(pattern[p]) / vmodel.cfg.n_layers
    np.testing.assert_allclose(grid, by_hand, atol=1e-6)
    (cells,) = choose_cells([grid], fraction=0.25)
    chosen = {divmod(int(c), grid.shape[1]) for c in cells}
    hidden = PatchMask(fraction=0.25).hooks(vmodel, inputs)
    edit = token_mask(inputs, [cells])
    assert sorted(edit.positions[0]) == sorted(p for p, (_, r, c) in places.items() if (r, c) in chosen)
    masked = vmodel.run_with_hooks(inputs, fwd_hooks=hidden)
    assert not torch.allclose(masked, vmodel(inputs))
