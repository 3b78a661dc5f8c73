"""LLaVA-Video rows: validation with row numbers, loss masks on answers only, the context-length rule."""

import json
import os

import numpy as np
import pytest
from helpers import make_videos

from liteframe_jax.data import conversations, sampling
from liteframe_jax.data.tokenizer import ByteTokenizer


def _rows(video):
    good = {"id": "a", "video": video, "conversations": [
        {"from": "human", "value": "<video>\nWhat colour?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "a disc"}]}
    return [
        good,
        {"id": "b", "video": video, "conversations": [{"from": "human", "value": "no marker"},
                                                      {"from": "gpt", "value": "x"}]},
        {"id": "c", "video": video, "conversations": [{"from": "human", "value": "<video> q"},
                                                      {"from": "human", "value": "again"}]},
        {"id": "d", "video": "missing.mp4", "conversations": good["conversations"]},
        {"id": "e", "conversations": good["conversations"]},
    ]


def test_rows_are_validated_with_row_numbers_and_missing_videos_counted(tmp_path):
    video = os.path.basename(make_videos(tmp_path, count=1)[0])  # relative to the annotation's folder
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(video)))
    index = conversations.build_index(str(path))
    assert [r.id for r in index.rows] == ["a"]
    problems = "\n".join(index.bad_rows)
    assert "row 1 (id b): expected exactly one video marker (<video> or <image>) in a human turn" in problems
    assert "row 2 (id c): the conversation does not alternate" in problems
    assert "row 4 (id e): no 'video' path" in problems
    assert list(index.missing_videos.values()) == ["missing"]
    assert "3 malformed, 0 with a video outside the data root, 1 missing/unreadable videos" in index.report()


def test_videos_outside_the_data_root_are_refused_and_counted(tmp_path):
    """An annotation file names files under its data root only: an absolute path, a `..` and a symbolic link
    out of the root are refused and counted, each row named once; a link inside the root is fine."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    inside = os.path.basename(make_videos(root, count=1)[0])
    outside = make_videos(elsewhere, count=1)[0]
    os.symlink(outside, root / "link_out.mp4")
    os.symlink(root / inside, root / "link_in.mp4")
    os.makedirs(root / "sub")
    good = _rows(inside)[0]
    rows = [dict(good, id=str(i), video=v) for i, v in enumerate(
        [inside, outside, "../elsewhere/v0.mp4", "link_out.mp4", "link_in.mp4", "sub/../" + inside])]
    path = root / "rows.json"
    path.write_text(json.dumps(rows))
    index = conversations.build_index(str(path))
    assert [r.id for r in index.rows] == ["0", "4", "5"]
    assert len(index.outside_root) == 3 and not index.bad_rows
    said = "\n".join(index.outside_root)
    assert "row 1 (id 1): video" in said and "is an absolute path" in said
    assert "row 2 (id 2): video '../elsewhere/v0.mp4' resolves outside the data root" in said
    assert "row 3 (id 3): video 'link_out.mp4' resolves outside the data root" in said
    assert "3 with a video outside the data root" in index.report()
    # nothing usable at all: the error says why
    path.write_text(json.dumps(rows[1:4]))
    with pytest.raises(ValueError, match="0 malformed, 3 outside the data root"):
        conversations.build_index(str(path))


def test_loss_mask_covers_exactly_the_answers():
    tok = ByteTokenizer()
    builder = conversations.PromptBuilder(tok, visual_groups=2, tokens_per_group=3, separators="frame")
    turns = (("user", "<video>\nWhat colour?"), ("assistant", "red"), ("user", "Shape?"), ("assistant", "a disc"))
    ids, mask = builder.training_example(turns)
    assert len(ids) == len(mask)
    answers = tok.decode(ids[mask], skip_special=False)
    assert answers == "red<|im_end|>\na disc<|im_end|>\n"
    assert int((ids == tok.video_token_id).sum()) == 6
    assert "Frame 2: " in tok.decode(ids)
    prompt = builder.generation_prompt(turns[:1])
    assert tok.decode(prompt, skip_special=False).endswith("<|im_start|>assistant\n")


def test_too_long_rows_are_refused():
    tok = ByteTokenizer()
    builder = conversations.PromptBuilder(tok, visual_groups=1, tokens_per_group=4, max_length=30)
    with pytest.raises(conversations.TooLong):
        builder.training_example((("user", "<video>" + "x" * 40), ("assistant", "y")))


def test_timestamps_and_uniform_sampling():
    assert sampling.uniform_indices(100, 4) == (12, 37, 62, 87)
    builder = conversations.PromptBuilder(ByteTokenizer(), visual_groups=2, tokens_per_group=1,
                                          separators="timestamp")
    assert builder.video_block([0.0, 2.5]) == "0.0s: <|video_pad|>\n2.5s: <|video_pad|>\n"
    np.testing.assert_array_equal(ByteTokenizer().encode("hé<|im_end|>"), [104, 195, 169, 258])


def test_internvl_separators_match_transformers_video_prompt():
    tok = ByteTokenizer()
    builder = conversations.PromptBuilder(tok, visual_groups=3, tokens_per_group=2, separators="internvl")
    pad = tok.video_token * 2
    # transformers.InternVLProcessor.replace_video_token, written out
    assert builder.video_block() == "\n".join(f"Frame{i + 1}: <img>{pad}</img>" for i in range(3))
    with pytest.raises(ValueError, match="choose 'none', 'frame', 'timestamp' or 'internvl'"):
        conversations.PromptBuilder(tok, 1, 1, separators="frames").video_block()


def test_llava_video_178k_rows_as_released(tmp_path):
    """LLaVA-Video-178K: `<image>` opens the first human turn, several question/answer turns per row, videos
    under <root>/<data_source>/<video>."""
    source, name = "0_30_s_academic_v0_1", "academic_source/Charades/ZS9XR.mp4"
    os.makedirs(tmp_path / source / os.path.dirname(name))
    video = make_videos(tmp_path / "v", count=1)[0]
    os.link(video, tmp_path / source / name)
    rows = [{"id": "ZS9XR_0", "data_source": source, "video": name, "conversations": [
        {"from": "human", "value": "<image>\nWhat is the person holding?"}, {"from": "gpt", "value": "A broom."},
        {"from": "human", "value": "Where are they?"}, {"from": "gpt", "value": "In a kitchen."},
        {"from": "human", "value": "What happens next?"}, {"from": "gpt", "value": "They sweep."}]},
        {"id": "two", "data_source": source, "video": name, "conversations": [
            {"from": "human", "value": "<image>\n<video>\nWhat?"}, {"from": "gpt", "value": "x"}]}]
    path = tmp_path / "0_30_s_academic_oe_v0_1_qa_processed.json"
    path.write_text(json.dumps(rows))
    index = conversations.build_index(str(path), str(tmp_path))
    (row,) = index.rows
    assert row.video == str(tmp_path / source / name) and row.get("data_source") == source
    assert row.turns[0] == ("user", "<video>\nWhat is the person holding?") and len(row.turns) == 6
    assert "expected exactly one video marker (<video> or <image>) in a human turn, found 2" in index.bad_rows[0]
    builder = conversations.PromptBuilder(ByteTokenizer(), visual_groups=1, tokens_per_group=2)
    ids, mask = builder.training_example(row.turns)
    assert ByteTokenizer().decode(ids[mask], skip_special=False) == \
        "A broom.<|im_end|>\nIn a kitchen.<|im_end|>\nThey sweep.<|im_end|>\n"  # loss on every answer turn
    # with only <video> as the marker (data.video_markers), the first row has none and the second has one
    only_video = conversations.build_index(str(path), str(tmp_path), markers=("<video>",))
    assert [r.id for r in only_video.rows] == ["two"]
    assert "row 0 (id ZS9XR_0): expected exactly one video marker (<video>) in a human turn, found 0" in \
        only_video.bad_rows[0]
