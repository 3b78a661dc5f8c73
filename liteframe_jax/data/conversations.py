"""Instruction data in the LLaVA-Video style and its tokenization for LMA.

A row is a JSON object with a video path and a `conversations` list of alternating human/gpt turns, one or
several question/answer pairs; a marker in a human turn (`<video>`, or LLaVA's `<image>` as the
LLaVA-Video-178K release writes it) says where the frames go:
    {"id": "q1", "data_source": "0_30_s_academic_v0_1", "video": "academic_source/Charades/A1B2C.mp4",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the ball?"},
                       {"from": "gpt", "value": "red"},
                       {"from": "human", "value": "Where does it roll?"},
                       {"from": "gpt", "value": "Off the table."}]}
Videos resolve as `<root>/<data_source>/<video>` (the release's layout) or `<root>/<video>`.
Files are JSON lists or JSONL. Bad rows are reported with their row number and skipped; rows whose video
is missing or unreadable are skipped and counted.

Prompts are rendered with the tokenizer's chat template; `<video>` becomes one placeholder token per visual
token, grouped per temporal slice with optional separators ('frame': "Frame 3: ", 'timestamp': "1.5s: ").
Only the gpt turns (answer text plus the template's end-of-turn tokens) carry loss.

Context-length rule: a row that does not fit in `max_length` tokens is refused (skipped and counted),
never truncated, since the visual tokens are a fixed-size block and the answer must stay whole.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from liteframe_jax.core import paths
from liteframe_jax.data import bad_data, video, video_index

VIDEO_MARKER = "<video>"
# One visual group, for prompts that put text between parts of the video (LongVideoBench's subtitles
# between clips): a run of adjacent markers becomes those groups as the whole video block writes them.
GROUP_MARKER = "<video_group>"
VIDEO_MARKERS = ("<video>", "<image>")  # LLaVA-Video-178K puts LLaVA's <image> where the frames go
ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}


@dataclasses.dataclass(frozen=True)
class QARow:
    row: int
    id: str
    video: str
    turns: tuple[tuple[str, str], ...]  # (role 'user' | 'assistant', text)
    extra: tuple = ()  # (key, value) pairs kept from the row (task_type, num_options, ...)

    def get(self, key, default=None):
        return dict(self.extra).get(key, default)


def read_rows(path: str) -> list[dict]:
    if not paths.isfile(path):
        raise FileNotFoundError(f"annotation file {path!r} does not exist")
    with paths.open(path) as f:
        text = f.read()
    if path.endswith(".jsonl"):
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {i + 1} is not valid JSON: {e}") from None
        return rows
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of rows (or a .jsonl file)")
    return rows


class OutsideRoot(ValueError):
    """An annotation row whose video path leaves the data root (absolute, `..`, or a link out of it)."""


def resolve_video(row: dict, video_root: str) -> str:
    """The row's video file under the root. A LLaVA-Video-178K row names its subset in `data_source` and its
    video relative to that subset's folder (`<root>/<data_source>/<video>`); where that file is absent but
    `<root>/<video>` exists, the latter is used. A path that leaves the root is refused (`OutsideRoot`): an
    annotation file must not make the run read any file it can name."""
    name = row["video"]
    if paths.isabs(name):
        raise OutsideRoot(f"video {name!r} is an absolute path; videos are read only under the data root "
                          f"{video_root} (data.video_root)")
    flat = os.path.join(video_root, name)
    chosen = flat
    source = row.get("data_source")
    if isinstance(source, str) and source:
        nested = os.path.join(video_root, source, name)
        chosen = flat if not paths.exists(nested) and paths.exists(flat) else nested
    if not paths.within(video_root, chosen):
        raise OutsideRoot(f"video {name!r} resolves outside the data root {video_root} (through '..' or a "
                          "symbolic link); point data.video_root at the folder that really holds the videos")
    return chosen


def parse_row(i: int, row, video_root: str, markers: tuple[str, ...] = VIDEO_MARKERS) -> QARow:
    """A QARow, or ValueError naming the row number and what is wrong. Any one of `markers` (LLaVA-Video
    rows use `<image>`) says where the frames go; it becomes `<video>` in the returned turns."""
    where = f"row {i}" + (f" (id {row.get('id')})" if isinstance(row, dict) and "id" in row else "")
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a JSON object")
    if not isinstance(row.get("video"), str) or not row["video"]:
        raise ValueError(f"{where}: no 'video' path")
    conv = row.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        raise ValueError(f"{where}: 'conversations' must be a list of at least one human and one gpt turn")
    turns = []
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in ROLES:
            raise ValueError(f"{where}: turn {j} needs 'from' (human/gpt) and a string 'value'")
        role = ROLES[turn["from"]]
        want = "user" if j % 2 == 0 else "assistant"
        if role != want:
            raise ValueError(f"{where}: the conversation does not alternate human/gpt (turn {j} is {turn['from']})")
        turns.append((role, turn["value"]))
    if turns[-1][0] != "assistant":
        raise ValueError(f"{where}: the conversation ends with a human turn (nothing to learn)")
    found = sum(text.count(m) for _, text in turns for m in markers)
    if found != 1 or any(m in text for role, text in turns if role == "assistant" for m in markers):
        raise ValueError(f"{where}: expected exactly one video marker ({' or '.join(markers)}) in a human turn, "
                         f"found {found}")
    for m in markers:
        turns = [(role, text.replace(m, VIDEO_MARKER)) for role, text in turns]
    extra = tuple((k, v) for k, v in row.items() if k not in ("video", "conversations", "id")
                  and isinstance(v, (str, int, float)))
    try:
        video_path = resolve_video(row, video_root)
    except OutsideRoot as e:
        raise OutsideRoot(f"{where}: {e}") from None
    return QARow(i, str(row.get("id", i)), video_path, tuple(turns), extra)


@dataclasses.dataclass
class QAIndex:
    rows: list[QARow]
    infos: dict[str, video.VideoInfo]
    bad_rows: list[str]
    missing_videos: dict[str, str]
    too_long: int = 0
    outside_root: list[str] = dataclasses.field(default_factory=list)  # rows whose video leaves the data root
    token_lengths: list[int] = dataclasses.field(default_factory=list)  # per row, once tokenized for training
    rows_in_file: int = 0
    rows_without_video: int = 0  # rows skipped because their video is missing or unreadable

    def report(self) -> str:
        lines = [f"{len(self.rows)} rows; {len(self.bad_rows)} malformed, {len(self.outside_root)} with a video "
                 f"outside the data root, {len(self.missing_videos)} missing/unreadable videos, {self.too_long} too "
                 "long: skipped"]
        lines += [f"  {problem}" for problem in (self.bad_rows + self.outside_root)[:10]]
        lines += [f"  video {p}: {why}" for p, why in list(self.missing_videos.items())[:10]]
        return "\n".join(lines)

    def skipped_rows(self) -> int:
        return self.rows_in_file - len(self.rows)

    def check_ceiling(self, annotation: str, max_fraction: float) -> None:
        """Stop when more than `max_fraction` of the file's rows were skipped, for whatever reason."""
        if self.rows_in_file and self.skipped_rows() > max_fraction * self.rows_in_file:
            raise bad_data.TooMuchBadData(
                f"{annotation}: {self.skipped_rows()} of {self.rows_in_file} rows "
                f"({self.skipped_rows() / self.rows_in_file:.1%}) cannot be used ({len(self.bad_rows)} malformed, "
                f"{len(self.outside_root)} outside the data root, {self.rows_without_video} whose video is missing "
                f"or unreadable, {self.too_long} too long), more than data.max_bad_fraction={max_fraction:g} "
                "allows. Fix them, or raise --config.data.max_bad_fraction to train on the rest.\n" + self.report())


def build_index(annotation: str, video_root: str | None = None,
                markers: tuple[str, ...] = VIDEO_MARKERS, probe=None) -> QAIndex:
    """The usable rows of an annotation file and their videos' infos. `probe` (list of paths -> {path:
    VideoInfo or why unreadable}, e.g. a run's video index) defaults to probing them all here."""
    root = video_root if video_root is not None else os.path.dirname(paths.resolve(annotation))
    rows, bad, outside = [], [], []
    for i, raw in enumerate(read_rows(annotation)):
        try:
            rows.append(parse_row(i, raw, root, tuple(markers)))
        except OutsideRoot as e:
            outside.append(str(e))
            logging.warning("%s: %s", annotation, e)
        except ValueError as e:
            bad.append(str(e))
            logging.warning("%s: %s", annotation, e)
    results = (probe or video_index.probe_all)(sorted({r.video for r in rows}))
    infos = {p: r for p, r in results.items() if isinstance(r, video.VideoInfo)}
    missing = {p: r if paths.exists(p) else "missing" for p, r in results.items() if p not in infos}
    kept = [r for r in rows if r.video in infos]
    if not kept:
        raise ValueError(f"{annotation}: no usable row ({len(bad)} malformed, {len(outside)} outside the data root "
                         f"{root}, {len(missing)} videos missing or unreadable)"
                         + ("\n  " + "\n  ".join((bad + outside)[:5]) if bad or outside else ""))
    return QAIndex(kept, infos, bad, missing, outside_root=outside, rows_in_file=len(rows) + len(bad) + len(outside),
                   rows_without_video=len(rows) - len(kept))


class TooLong(ValueError):
    pass


@dataclasses.dataclass
class PromptBuilder:
    """Rows -> token ids with a loss mask, through the tokenizer's chat template."""

    tokenizer: object
    visual_groups: int  # temporal slices of the visual tokens (T')
    tokens_per_group: int  # visual tokens per slice (H' * W')
    separators: str = "none"  # 'none' | 'frame' | 'timestamp' | 'internvl'
    max_length: int = 4096
    system_prompt: str | None = None
    max_answer_tokens: int = 0  # > 0: rows with more loss (answer) tokens are refused, as TooLong

    def video_block(self, group_times: list[float] | None = None, groups: range | None = None) -> str:
        """The placeholders of `groups` (default: all) with their separators."""
        pad = self.tokenizer.video_token * self.tokens_per_group
        groups = range(self.visual_groups) if groups is None else groups
        if self.separators == "none":
            return pad * len(groups)
        if self.separators == "frame":
            return "".join(f"Frame {g + 1}: {pad}\n" for g in groups)
        if self.separators == "timestamp":
            times = group_times or [0.0] * self.visual_groups
            return "".join(f"{times[g]:.1f}s: {pad}\n" for g in groups)
        if self.separators == "internvl":  # InternVL's own video prompt (transformers InternVLProcessor)
            return "\n".join(f"Frame{g + 1}: <img>{pad}</img>" for g in groups)
        raise ValueError(f"unknown video separators {self.separators!r}; "
                         "choose 'none', 'frame', 'timestamp' or 'internvl'")

    def _video(self, text: str, group_times) -> str:
        """`text` with its video marker, or its group markers, replaced by the placeholders."""
        if GROUP_MARKER not in text:
            return text.replace(VIDEO_MARKER, self.video_block(group_times))
        pieces = text.split(GROUP_MARKER)
        if VIDEO_MARKER in text or len(pieces) - 1 != self.visual_groups:
            raise ValueError(f"a prompt with {GROUP_MARKER} markers holds one per visual group and no {VIDEO_MARKER}: "
                             f"{len(pieces) - 1} markers for {self.visual_groups} groups"
                             + (f" and a {VIDEO_MARKER}" if VIDEO_MARKER in text else ""))
        out, g = pieces[0], 0
        for k, piece in enumerate(pieces[1:], 1):
            if piece or k == len(pieces) - 1:  # the end of a run of adjacent markers
                out += self.video_block(group_times, range(g, k)) + piece
                g = k
        return out

    def messages(self, turns, group_times=None, system: str | None = None) -> list[dict]:
        system = system or self.system_prompt
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + [{"role": role, "content": self._video(text, group_times)} for role, text in turns]

    def training_example(self, turns, group_times=None) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32, loss_mask bool): the mask is True on assistant tokens (answers and end-of-turn)."""
        msgs = self.messages(turns, group_times)
        full = self.tokenizer.apply_chat_template(msgs)
        spans = []
        first = 1 if self.system_prompt else 0
        for k in range(first, len(msgs)):
            if msgs[k]["role"] != "assistant":
                continue
            start = self.tokenizer.apply_chat_template(msgs[:k], add_generation_prompt=True)
            end = self.tokenizer.apply_chat_template(msgs[:k + 1])
            if not (full.startswith(start) and full.startswith(end)):
                raise ValueError("the chat template does not render conversations as growing prefixes; "
                                 "answer tokens cannot be located")
            spans.append((len(start), len(end)))
        ids, mask, pos = [], [], 0
        for start, end in spans:
            head = self.tokenizer.encode(full[pos:start])
            answer = self.tokenizer.encode(full[start:end])
            ids += head + answer
            mask += [False] * len(head) + [True] * len(answer)
            pos = end
        tail = self.tokenizer.encode(full[pos:])
        ids += tail
        mask += [False] * len(tail)
        self._check(ids)
        if self.max_answer_tokens and sum(mask) > self.max_answer_tokens:
            raise TooLong(f"{sum(mask)} answer tokens > max_answer_tokens {self.max_answer_tokens}")
        return np.asarray(ids, np.int32), np.asarray(mask, bool)

    def generation_prompt(self, turns, group_times=None, *, system: str | None = None,
                          assistant_prefix: str = "") -> np.ndarray:
        """Token ids of the conversation up to (not including) the final assistant turn, then
        `assistant_prefix` (the start of the answer, which generation continues). `system` replaces the
        builder's system prompt."""
        if turns and turns[-1][0] == "assistant":
            turns = turns[:-1]
        text = self.tokenizer.apply_chat_template(self.messages(turns, group_times, system),
                                                  add_generation_prompt=True)
        ids = self.tokenizer.encode(text + assistant_prefix)
        self._check(ids)
        return np.asarray(ids, np.int32)

    def _check(self, ids):
        n_video = sum(1 for i in ids if i == self.tokenizer.video_token_id)
        if n_video != self.visual_groups * self.tokens_per_group:
            raise ValueError(f"prompt holds {n_video} video placeholders, the encoder gives "
                             f"{self.visual_groups * self.tokens_per_group} visual tokens")
        if len(ids) > self.max_length:
            raise TooLong(f"{len(ids)} tokens > max_length {self.max_length}")
