"""One MoviePy 2.x operation per process, timed without the imports.

Run by bench/media/run.py inside .tools/bench-venv:

    python moviepy_ops.py OP OUTPUT INPUT... [--start S --end E] [--font PATH]
        [--text TEXT]

OP is trim, add_text, concat or extract_audio. The last stdout line is JSON:
{"seconds": <wall time of open + edit + write + close>}. Encoder settings
match the ffmpeg and reelmesh runs: libx264 preset medium, CRF 23, AAC
128 kbit/s at 48 kHz, Opus 96 kbit/s at 48 kHz.
"""

import argparse
import json
import os
import sys
import time

from moviepy import (
    AudioFileClip,
    CompositeVideoClip,
    TextClip,
    VideoFileClip,
    concatenate_videoclips,
)

# The same x264/AAC settings as the ffmpeg commands in run.py.
VIDEO_ARGS = dict(
    codec="libx264",
    preset="medium",
    ffmpeg_params=["-crf", "23"],
    audio_codec="aac",
    audio_bitrate="128k",
    audio_fps=48000,
    logger=None,
)
TEXT_MARGIN_PX = 36


def write_video(clip, output):
    # MoviePy writes the audio to a temporary file first; keep it next to the
    # output instead of the current directory.
    clip.write_videofile(
        output, temp_audiofile_path=os.path.dirname(os.path.abspath(output)), **VIDEO_ARGS
    )


def trim(args):
    source = VideoFileClip(args.inputs[0])
    write_video(source.subclipped(args.start, args.end), args.output)
    source.close()


def add_text(args):
    source = VideoFileClip(args.inputs[0])
    # Without a vertical margin MoviePy 2.2.1 cuts off the bottom of the
    # glyphs (its text box is too short); the margin is then subtracted so the
    # text sits TEXT_MARGIN_PX above the bottom edge, as in the ffmpeg run.
    pad = 10
    text = TextClip(
        font=args.font, text=args.text, font_size=48, color="white", margin=(0, pad)
    )
    text = text.with_duration(source.duration).with_position(
        ("center", source.h - text.h - TEXT_MARGIN_PX + pad)
    )
    write_video(CompositeVideoClip([source, text]), args.output)
    source.close()


def concat(args):
    sources = [VideoFileClip(path) for path in args.inputs]
    write_video(concatenate_videoclips(sources), args.output)
    for source in sources:
        source.close()


def extract_audio(args):
    audio = AudioFileClip(args.inputs[0])
    audio.write_audiofile(args.output, fps=48000, codec="libopus", bitrate="96k", logger=None)
    audio.close()


OPS = {"trim": trim, "add_text": add_text, "concat": concat, "extract_audio": extract_audio}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("op", choices=sorted(OPS))
    parser.add_argument("output")
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--start", type=float)
    parser.add_argument("--end", type=float)
    parser.add_argument("--font")
    parser.add_argument("--text", default="Hello Oslo")
    args = parser.parse_args()
    started = time.perf_counter()
    OPS[args.op](args)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    sys.exit(main())
