"""Video-MME's subtitles as lmms-eval puts them in the prompt (task `videomme_w_subtitle`).

The release holds one `subtitle/<videoID>.srt` per video that has speech. lmms-eval's
`videomme_doc_to_text_subtitle` reads it in blocks separated by an empty line (index, `HH:MM:SS,mmm -->
HH:MM:SS,mmm`, text lines joined by a space; a later block with the same times replaces the text of the
earlier), turns each block's times into frame numbers (`int(seconds * fps)`), samples `frame_num` frames
uniformly (`linspace(0, frames - 1, frame_num)`, 32 by the task's yaml, whatever the model sees), keeps every
block that some sampled frame falls in (start <= frame < end) and prints, one per line, the text inside the
first `<font color="white" size=".72c">...</font>` of each (blocks without one are left out). A video with
no subtitle file gets "No subtitles available". The order of the kept blocks is that of a Python set of
their indices, as lmms-eval leaves it.
"""

from __future__ import annotations

import re

import numpy as np

from liteframe_jax.core import paths

NO_SUBTITLES = "No subtitles available"
LMMS_EVAL_SUBTITLE_FRAMES = 32  # videomme_w_subtitle.yaml's default frame_num
_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')


def _seconds(stamp: str) -> float:
    h, m, rest = stamp.split(":")
    s, ms = rest.split(",")
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """(start s, end s, text) per block, as lmms-eval's `load_subtitles` reads an .srt file."""
    blocks = {}
    for section in text.split("\n\n"):
        lines = section.split("\n")
        if section.strip() and len(lines) >= 3:
            start, end = lines[1].split(" --> ")
            blocks[(_seconds(start), _seconds(end))] = " ".join(lines[2:])
    return [(s, e, t) for (s, e), t in blocks.items()]


def videomme_subtitles(srt_path: str, fps: float, num_frames: int, frame_num: int = LMMS_EVAL_SUBTITLE_FRAMES) -> str:
    """The subtitle lines lmms-eval prints for a video of `num_frames` frames at `fps`."""
    if not srt_path or not paths.isfile(srt_path):
        return NO_SUBTITLES
    with paths.open(srt_path, "rb") as f:  # UTF-8 with universal newlines, as lmms-eval opens it
        text = f.read().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    blocks = [(int(s * fps), int(e * fps), t) for s, e, t in parse_srt(text)]
    sampled = np.linspace(0, num_frames - 1, frame_num, dtype=int).tolist()
    hits = [k for f in sampled for k, (s, e, _) in enumerate(blocks) if s <= f < e]
    return "\n".join(found[0] for k in list(set(hits)) if (found := _FONT.findall(blocks[k][2])))
