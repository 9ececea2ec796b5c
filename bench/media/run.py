#!/usr/bin/env python3
"""Media benchmark harness: reelmesh vs the ffmpeg CLI vs MoviePy.

Normally started by bench/media.sh, which installs the tools, builds reelmesh
and starts a dev cluster. It can also be run by hand:

    python3 bench/media/run.py --runs 1 --tools ffmpeg,moviepy

Builds (or reuses) the corpus, runs every operation with every tool (one
warm-up run, then --runs timed runs, the tools taking turns), checks every
output with ffprobe and writes a Markdown report of medians and ratios.
Standard library only.
"""

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import capture, host, revision  # noqa: E402  (bench/machine.py)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
TEXT = "Hello Oslo"
TEXT_SIZE = 48
TEXT_MARGIN_PX = 36  # same bottom margin in the ffmpeg and MoviePy runs
TOOLS = ("reelmesh", "ffmpeg", "moviepy")

# Encoder settings shared by every tool that re-encodes.
X264 = ["-c:v", "libx264", "-preset", "medium", "-crf", "23"]
AAC = ["-c:a", "aac", "-b:a", "128k"]
OPUS = ["-c:a", "libopus", "-b:a", "96k"]
ENCODER_SETTINGS = (
    "H.264: libx264 `-preset medium -crf 23` (ffmpeg, MoviePy; reelmesh: x264 constant "
    "quality 23, preset medium); AAC 128 kbit/s; Opus 96 kbit/s; audio at 48 kHz."
)

# ---------------------------------------------------------------- corpus

CORPUS_ENCODE = [
    "-c:v", "libx264", "-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p",
    "-g", "60", "-keyint_min", "60", "-sc_threshold", "0",
    "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-movflags", "+faststart",
]
# name -> (seconds, video filter after testsrc2, sine frequency). The three
# 10 s clips differ in colour and tone so a concat output shows its seams.
CORPUS = {
    "a.mp4": (10, "null", 440),
    "b.mp4": (10, "hue=h=120:s=1.6", 660),
    "c.mp4": (10, "negate", 880),
    "long.mp4": (60, "null", 330),
}


def corpus_command(name, out):
    seconds, vf, freq = CORPUS[name]
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=48000:duration={seconds}",
        "-vf", vf, *CORPUS_ENCODE, "-shortest", str(out),
    ]


def build_corpus(corpus_dir):
    """Generates the clips unless the cached ones came from the same recipe."""
    corpus_dir.mkdir(parents=True, exist_ok=True)
    recipe = {name: corpus_command(name, name) for name in CORPUS}
    stamp = corpus_dir / "recipe.json"
    cached = stamp.exists() and json.loads(stamp.read_text()) == recipe
    for name in CORPUS:
        path = corpus_dir / name
        if cached and path.exists():
            continue
        log(f"corpus: generating {name}")
        subprocess.run(corpus_command(name, path), check=True)
    stamp.write_text(json.dumps(recipe, indent=1))
    return {name[: -len(".mp4")]: corpus_dir / name for name in CORPUS}


# ---------------------------------------------------------------- operations


@dataclass
class Op:
    key: str
    title: str
    ext: str
    expected_seconds: float
    ffmpeg: callable  # (clips, out, workdir) -> argv
    reelmesh: dict  # job spec
    moviepy: list = None  # moviepy_ops.py arguments before the inputs, or None
    moviepy_inputs: tuple = ()
    moviepy_note: str = ""  # shown instead of a MoviePy time
    moviepy_see: str = ""  # key of the op whose MoviePy time is the same work
    copy: bool = False  # a stream-copy operation: reelmesh should report copied=true


def ffmpeg_base():
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]


def ffmpeg_concat_copy(clips, out, workdir):
    listing = workdir / "concat-list.txt"
    listing.write_text("".join(f"file '{clips[n]}'\n" for n in "abc"))
    return ffmpeg_base() + ["-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(out)]


def ffmpeg_trim_copy(clips, out, workdir):
    return ffmpeg_base() + ["-ss", "10", "-to", "30", "-i", str(clips["long"]), "-c", "copy", str(out)]


def ffmpeg_trim_exact(clips, out, workdir):
    return ffmpeg_base() + ["-ss", "10.5", "-to", "30.5", "-i", str(clips["long"]), *X264, *AAC, str(out)]


def ffmpeg_add_text(clips, out, workdir):
    drawtext = (
        f"drawtext=fontfile={FONT}:text='{TEXT}':fontsize={TEXT_SIZE}:fontcolor=white"
        f":x=(w-text_w)/2:y=h-text_h-{TEXT_MARGIN_PX}"
    )
    return ffmpeg_base() + ["-i", str(clips["a"]), "-vf", drawtext, *X264, *AAC, str(out)]


def ffmpeg_concat_reencode(clips, out, workdir):
    inputs = [arg for n in "abc" for arg in ("-i", str(clips[n]))]
    graph = "[0:v][0:a][1:v][1:a][2:v][2:a]concat=n=3:v=1:a=1[v][a]"
    return ffmpeg_base() + inputs + [
        "-filter_complex", graph, "-map", "[v]", "-map", "[a]", *X264, *AAC, str(out)
    ]


def ffmpeg_extract_audio(clips, out, workdir):
    return ffmpeg_base() + ["-i", str(clips["long"]), "-vn", *OPUS, str(out)]


def asset(name):
    return {"asset": f"in/{name}.mp4"}


ABC = [asset("a"), asset("b"), asset("c")]
OPS = [
    Op("concat_copy", "concat 3×10 s, stream copy", "mp4", 30.0, ffmpeg_concat_copy,
       {"concat": {"inputs": ABC}, "copy": "COPY_MODE_AUTO"},
       moviepy_note="n/a (re-encodes)", moviepy_see="concat_reencode", copy=True),
    Op("trim_copy", "trim 10–30 s of 60 s, copy on keyframes", "mp4", 20.0, ffmpeg_trim_copy,
       {"trim": {"input": asset("long"), "start_seconds": 10, "end_seconds": 30},
        "copy": "COPY_MODE_AUTO"},
       moviepy_note="n/a (re-encodes)", moviepy_see="trim_exact", copy=True),
    Op("trim_exact", "trim 10.5–30.5 s of 60 s, frame-accurate re-encode", "mp4", 20.0,
       ffmpeg_trim_exact,
       {"trim": {"input": asset("long"), "start_seconds": 10.5, "end_seconds": 30.5},
        "copy": "COPY_MODE_NEVER"},
       moviepy=["trim", "--start", "10.5", "--end", "30.5"], moviepy_inputs=("long",)),
    # The same frame-exact result in reelmesh's default mode: a smart cut.
    # ffmpeg and MoviePy have no such path, so they re-encode again here.
    Op("trim_smart", "trim 10.5–30.5 s of 60 s, frame-accurate (reelmesh: smart cut)", "mp4",
       20.0, ffmpeg_trim_exact,
       {"trim": {"input": asset("long"), "start_seconds": 10.5, "end_seconds": 30.5},
        "copy": "COPY_MODE_AUTO"},
       moviepy=["trim", "--start", "10.5", "--end", "30.5"], moviepy_inputs=("long",)),
    Op("add_text", "add_text \"Hello Oslo\" bottom-centre, 10 s", "mp4", 10.0, ffmpeg_add_text,
       {"add_text": {"input": asset("a"),
                     "overlays": [{"text": "Hello {{city}}", "size": TEXT_SIZE}]},
        "fields": {"city": "Oslo"}},
       moviepy=["add_text", "--font", FONT, "--text", TEXT], moviepy_inputs=("a",)),
    Op("concat_reencode", "concat 3×10 s, re-encode", "mp4", 30.0, ffmpeg_concat_reencode,
       {"concat": {"inputs": ABC}, "copy": "COPY_MODE_NEVER"},
       moviepy=["concat"], moviepy_inputs=("a", "b", "c")),
    Op("extract_audio", "extract audio of 60 s to Opus 96k", "opus", 60.0, ffmpeg_extract_audio,
       {"extract_audio": {"input": asset("long")},
        "output": {"container": "CONTAINER_OPUS", "audio_bitrate_kbps": 96}},
       moviepy=["extract_audio"], moviepy_inputs=("long",)),
]

# ---------------------------------------------------------------- runs


@dataclass
class Run:
    seconds: float = None  # the time that counts: server-side for reelmesh, wall otherwise
    wall: float = None  # client wall time (reelmesh: submit + watch; MoviePy: whole process)
    error: str = ""
    note: str = ""  # e.g. where reelmesh's time came from
    copied: bool = None  # reelmesh only: the job's output.copied
    probe: dict = None

    @property
    def ok(self):
        return not self.error


@dataclass
class Cell:
    runs: list = field(default_factory=list)
    warmup: Run = None
    skipped: str = ""

    def ok_runs(self):
        return [r for r in self.runs if r.ok]

    def median(self, attr="seconds"):
        values = [getattr(r, attr) for r in self.ok_runs() if getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    def first_error(self):
        for run in [self.warmup, *self.runs]:
            if run is not None and run.error:
                return run.error
        return self.skipped


def log(message):
    print(message, flush=True)


def one_line(text, limit=300):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_process(argv, timeout, **kwargs):
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - started
    return done, time.perf_counter() - started


X264_KEYS = ("rc", "crf", "bitrate", "ref", "subme", "me", "trellis", "rc_lookahead", "threads")


def x264_settings(path):
    """The rate control and preset-related options x264 wrote into the stream
    (its SEI "x264 - core ... options: ..."), e.g. "rc=crf crf=23.0 ref=3
    subme=7 me=hex ...": shows whether all tools really encoded alike."""
    with open(path, "rb") as f:
        data = f.read(32 << 20)
    start = data.find(b"x264 - core")
    if start < 0:
        return ""
    text = data[start : start + 4096].split(b"\0", 1)[0].decode("latin-1")
    options = dict(
        item.split("=", 1) for item in text.split("options:", 1)[-1].split() if "=" in item
    )
    return " ".join(f"{k}={options[k]}" for k in X264_KEYS if k in options)


def probe(path):
    argv = [
        "ffprobe", "-v", "error", "-show_entries",
        "format=duration,size:stream=codec_type,codec_name,width,height,pix_fmt,sample_rate,channels",
        "-of", "json", str(path),
    ]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": one_line(done.stderr) or "ffprobe failed"}
    info = json.loads(done.stdout)
    fmt = info.get("format", {})
    streams = []
    for s in info.get("streams", []):
        if s.get("codec_type") == "video":
            streams.append(f"{s.get('codec_name')} {s.get('width')}x{s.get('height')} {s.get('pix_fmt')}")
        elif s.get("codec_type") == "audio":
            streams.append(f"{s.get('codec_name')} {s.get('sample_rate')} Hz {s.get('channels')}ch")
    duration = fmt.get("duration")
    return {
        "duration": float(duration) if duration not in (None, "N/A") else None,
        "size": int(fmt.get("size", 0)),
        "streams": ", ".join(streams),
        "x264": x264_settings(path) if any(x.startswith("h264") for x in streams) else "",
    }


class FfmpegTool:
    name = "ffmpeg"

    def __init__(self, args):
        self.timeout = args.timeout

    def command(self, op, clips, out, workdir):
        return op.ffmpeg(clips, out, workdir)

    def run(self, op, clips, out, workdir):
        argv = op.ffmpeg(clips, out, workdir)
        done, wall = run_process(argv, self.timeout)
        if done is None:
            return Run(error=f"timeout after {self.timeout} s")
        if done.returncode != 0:
            return Run(error=f"exit {done.returncode}: {one_line(done.stderr)}")
        return Run(seconds=wall, wall=wall)


class MoviepyTool:
    name = "moviepy"

    def __init__(self, args):
        self.python = args.moviepy_python
        self.timeout = args.timeout
        self.env = dict(os.environ)

    def command(self, op, clips, out, workdir):
        return [self.python, str(HERE / "moviepy_ops.py"), op.moviepy[0], str(out),
                *[str(clips[n]) for n in op.moviepy_inputs], *op.moviepy[1:]]

    def run(self, op, clips, out, workdir):
        done, wall = run_process(self.command(op, clips, out, workdir), self.timeout,
                                 env=self.env, cwd=workdir)
        if done is None:
            return Run(error=f"timeout after {self.timeout} s")
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
            return Run(error=f"exit {done.returncode}: {one_line(tail[0])}")
        last = done.stdout.strip().splitlines()[-1]
        return Run(seconds=json.loads(last)["seconds"], wall=wall)


FINISHED = re.compile(r"finished in\s+([0-9.]+)\s*s\s*\(queued\s*->\s*([A-Za-z_]+)\)")
RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def parse_rfc3339(text):
    match = RFC3339.match(text)
    if not match:
        raise ValueError(f"bad timestamp {text!r}")
    base, frac, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    stamp = dt.datetime.fromisoformat(base + zone).timestamp()
    return stamp + (float(frac) if frac else 0.0)


def json_objects(text):
    """The JSON objects grpcurl prints one after another for a stream."""
    decoder = json.JSONDecoder()
    objects, index = [], 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return objects
        obj, index = decoder.raw_decode(text, index)
        objects.append(obj)


def grpc_error(stderr):
    """'Code: X / Message: Y' from grpcurl's error output, on one line."""
    code = re.search(r"Code:\s*(\S+)", stderr)
    message = re.search(r"Message:\s*(.*)", stderr)
    if code or message:
        return f"{code.group(1) if code else '?'}: {message.group(1).strip() if message else ''}"
    return one_line(stderr) or "no output"


class ReelmeshTool:
    name = "reelmesh"

    def __init__(self, args):
        self.bin = args.reelmesh_bin
        self.endpoint = args.endpoint
        self.addr = re.sub(r"^https?://", "", args.endpoint)
        self.api_key = args.api_key
        self.timeout = args.timeout
        self.down = args.reelmesh_down

    def grpcurl(self, method, body, timeout=60):
        argv = ["grpcurl", "-plaintext", "-H", f"authorization: Bearer {self.api_key}",
                "-d", json.dumps(body), self.addr, f"reelmesh.v1.Jobs/{method}"]
        return run_process(argv, timeout)[0]

    def cli(self, *args, timeout=600):
        return run_process([self.bin, "--endpoint", self.endpoint, "--api-key", self.api_key,
                            *args], timeout)

    def upload(self, clips):
        if self.down:
            return
        for name, path in clips.items():
            done, _ = self.cli("upload", str(path), f"in/{name}.mp4")
            if done is None or done.returncode != 0:
                raise RuntimeError(f"upload of {path} failed: {done.stderr if done else 'timeout'}")
            log(f"reelmesh: {one_line(done.stdout)}")

    def command(self, op, clips, out, workdir):
        body = json.dumps({"spec": op.reelmesh})
        return (f"grpcurl -plaintext -H 'authorization: Bearer {self.api_key}' -d '{body}' "
                f"{self.addr} reelmesh.v1.Jobs/SubmitJob; reelmesh watch <id>")

    def events_time(self, job_id):
        """Queued -> terminal from the job's event timestamps, via WatchJob."""
        done = self.grpcurl("WatchJob", {"id": job_id})
        if done is None or done.returncode != 0:
            return None
        at = {}
        for event in json_objects(done.stdout):
            for kind in ("queued", "completed", "failed", "cancelled"):
                if kind in event and "at" in event:
                    at[kind] = parse_rfc3339(event["at"])
        end = next((at[k] for k in ("completed", "failed", "cancelled") if k in at), None)
        if "queued" not in at or end is None:
            return None
        return end - at["queued"]

    def run(self, op, clips, out, workdir):
        if self.down:
            return Run(error=self.down)
        started = time.perf_counter()
        submitted = self.grpcurl("SubmitJob", {"spec": op.reelmesh})
        if submitted is None:
            return Run(error="SubmitJob timed out")
        if submitted.returncode != 0:
            return Run(error=f"rejected: {grpc_error(submitted.stderr)}")
        job_id = json.loads(submitted.stdout)["id"]
        watched, _ = self.cli("watch", job_id, timeout=self.timeout)
        wall = time.perf_counter() - started
        if watched is None:
            self.grpcurl("CancelJob", {"id": job_id})
            return Run(error=f"timeout after {self.timeout} s (job {job_id} cancelled)")
        output = (watched.stdout or "") + (watched.stderr or "")
        match = FINISHED.search(output)
        if watched.returncode != 0:
            error = next((line for line in watched.stderr.splitlines() if "error" in line),
                         watched.stderr.strip() or f"watch exit {watched.returncode}")
            return Run(error=one_line(re.sub(r"^error:\s*", "", error.strip())))
        if match:
            seconds, note = float(match.group(1)), "time from watch"
        else:
            seconds, note = self.events_time(job_id), "time from WatchJob events"
            if seconds is None:
                return Run(error=f"no 'finished in' line from watch and no event times for {job_id}")
        got = self.grpcurl("GetJob", {"id": job_id})
        if got is None or got.returncode != 0:
            return Run(error=f"GetJob: {grpc_error(got.stderr) if got else 'timeout'}")
        job = json.loads(got.stdout)
        if job.get("state") != "JOB_STATE_COMPLETED":
            return Run(error=f"state {job.get('state')}: {job.get('error', '')}")
        job_output = job.get("output", {})
        copied = bool(job_output.get("copied"))
        note += ", streams copied" if copied else ", re-encoded"
        downloaded, _ = self.cli("download", job_output.get("key", ""), str(out))
        if downloaded is None or downloaded.returncode != 0:
            return Run(error=f"download of {job_output.get('key')} failed")
        return Run(seconds=seconds, wall=wall, note=note, copied=copied)


# ---------------------------------------------------------------- benchmark


def run_once(tool, op, clips, outdir):
    workdir = outdir / op.key
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{tool.name}.{op.ext}"
    out.unlink(missing_ok=True)
    try:
        run = tool.run(op, clips, out, workdir)
    except Exception as err:  # a harness bug or odd tool output: report, keep going
        run = Run(error=f"harness: {type(err).__name__}: {one_line(str(err))}")
    if run.ok:
        if not out.exists() or out.stat().st_size == 0:
            run.error = f"no output file {out.name}"
        else:
            run.probe = probe(out)
            if "error" in run.probe:
                run.error = f"ffprobe: {run.probe['error']}"
    return run


def has_moviepy(op):
    return op.moviepy is not None


def benchmark(tools, ops, clips, runs, outdir):
    results = {op.key: {} for op in ops}
    for op in ops:
        active = []
        for tool in tools:
            cell = results[op.key].setdefault(tool.name, Cell())
            if tool.name == "moviepy" and not has_moviepy(op):
                cell.skipped = op.moviepy_note
                continue
            log(f"[{op.key}] {tool.name}: warm-up")
            cell.warmup = run_once(tool, op, clips, outdir)
            if cell.warmup.ok:
                active.append(tool)
            else:
                log(f"[{op.key}] {tool.name}: warm-up failed, skipping its timed runs: "
                    f"{cell.warmup.error}")
        for index in range(runs):
            # Rotate the order so no tool always runs first (cache, clocks).
            shift = index % len(active) if active else 0
            for tool in active[shift:] + active[:shift]:
                run = run_once(tool, op, clips, outdir)
                results[op.key][tool.name].runs.append(run)
                shown = f"{run.seconds:.3f} s" if run.ok else f"FAILED {run.error}"
                log(f"[{op.key}] {tool.name}: run {index + 1}/{runs}: {shown}")
    return results


# ---------------------------------------------------------------- report


def machine_info(args):
    moviepy = capture([args.moviepy_python, "-c",
                       "import importlib.metadata as m, moviepy.config as c; "
                       "print(m.version('moviepy'), 'running', c.FFMPEG_BINARY)"])
    info = {
        **host(),
        "ffmpeg": capture(["ffmpeg", "-version"]),
        "MoviePy": f"{moviepy} (IMAGEIO_FFMPEG_EXE={os.environ.get('IMAGEIO_FFMPEG_EXE', 'unset')})",
        "GStreamer": capture(["gst-launch-1.0", "--version"], line=1),
        "nats-server": capture(["nats-server", "--version"]),
        "grpcurl": capture(["grpcurl", "--version"]),
        "reelmesh": f"{capture([args.reelmesh_bin, '--version']) if args.reelmesh_bin else args.reelmesh_down or 'not used'}"
                    f", {revision()}",
        "libx264 / libopus (dpkg)": capture(
            ["sh", "-c", "dpkg-query -W 'libx264-[0-9]*' libopus0 2>/dev/null | "
                         "tr '\\t' ' ' | paste -sd ';' -"]),
        "Python (harness)": platform.python_version(),
    }
    return info


def fmt_seconds(value):
    return "—" if value is None else f"{value:.2f} s"


def short_error(error):
    return re.sub(r"^job [0-9a-f]+ failed: ", "", error)


def duration_off(run, op):
    if not run or not run.probe:
        return False
    duration = run.probe.get("duration")
    return duration is None or abs(duration - op.expected_seconds) > 0.5


def last_ok(cell):
    runs = [r for r in [cell.warmup, *cell.runs] if r is not None and r.ok]
    return runs[-1] if runs else None


def cell_text(cell, runs):
    if cell is None:
        return "not run"
    if cell.skipped and not cell.runs and cell.warmup is None:
        return cell.skipped
    median = cell.median()
    failed = [r for r in cell.runs if not r.ok]
    if median is None:
        return f"failed: {one_line(short_error(cell.first_error()), 160)}"
    text = fmt_seconds(median)
    if failed:
        text += f" ({len(failed)}/{runs} failed)"
    return text


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def render_report(args, info, results, tool_names, started, finished, clips, tools_by_name):
    lines = []
    add = lines.append
    add("# reelmesh media benchmark")
    add("")
    add(f"Run {started:%Y-%m-%d %H:%M} – {finished:%H:%M} UTC with `{args.command}` "
        f"(tools: {', '.join(tool_names)}; {args.runs} timed run{'s' if args.runs != 1 else ''} "
        f"per tool and operation after one warm-up; medians).")
    add("")
    add("## Machine")
    add("")
    for key, value in info.items():
        add(f"- **{key}**: {value}")
    add("")
    add("## Results")
    add("")
    add("Lower is better. reelmesh time = the job's own queued → terminal time (server side, "
        "from `reelmesh watch`); its client wall time (grpcurl submit + watch) is shown next to it. "
        "ffmpeg time = wall time of the `ffmpeg` process. MoviePy time = open + edit + write + "
        "close inside a warm Python process (imports not timed). Ratios < 1× mean reelmesh is "
        "faster.")
    add("")
    add("| # | operation | reelmesh | reelmesh (client wall) | ffmpeg | MoviePy | reelmesh/ffmpeg | reelmesh/MoviePy |")
    add("|---|---|---|---|---|---|---|---|")
    by_key = {op.key: op for op in OPS}
    footnotes = []
    for number, op in enumerate(args.ops_selected, 1):
        row = results.get(op.key, {})
        rm, ff, mp = row.get("reelmesh"), row.get("ffmpeg"), row.get("moviepy")
        rm_med = rm.median() if rm else None
        ff_med = ff.median() if ff else None
        mp_med = mp.median() if mp else None
        mp_text = cell_text(mp, args.runs) if mp else "not run"
        if op.moviepy_see and mp and mp.skipped:
            other = results.get(op.moviepy_see, {}).get("moviepy")
            other_med = other.median() if other else None
            see_no = next((i for i, o in enumerate(args.ops_selected, 1) if o.key == op.moviepy_see), None)
            if other_med is not None and see_no:
                mp_text = f"{op.moviepy_note}: {fmt_seconds(other_med)} = row {see_no}"
            elif see_no:
                mp_text = f"{op.moviepy_note}; see row {see_no}"
        rm_text = cell_text(rm, args.runs) if rm else "not run"
        if rm and rm.ok_runs() and any("events" in r.note for r in rm.ok_runs()):
            rm_text += " ¹"
            footnotes.append("¹ `reelmesh watch` printed no `finished in` line; the time was "
                             "computed from the job's queued and terminal event timestamps (WatchJob).")
        if rm and op.copy and any(r.copied is False for r in rm.ok_runs()):
            rm_text += " ²"
            footnotes.append("² reelmesh re-encoded instead of copying (its job output has "
                             "`copied: false`), so this is not a copy-vs-copy comparison.")
        title = op.title
        if any(c and duration_off(last_ok(c), op) for c in (rm, ff, mp)):
            title += " ⚠"
            footnotes.append("⚠ an output's duration is more than 0.5 s off the expected one; "
                             "see Details.")
        wall_text = fmt_seconds(rm.median("wall")) if rm and rm.median("wall") is not None else "—"
        add(f"| {number} | {title} | {rm_text} | {wall_text} | {cell_text(ff, args.runs) if ff else 'not run'} "
            f"| {mp_text} | {ratio(rm_med, ff_med)} | {ratio(rm_med, mp_med)} |")
    add("")
    for note in dict.fromkeys(footnotes):
        add(note)
        add("")
    add("MoviePy has no stream-copy path: for the copy rows it would re-encode, so no ratio is "
        "given; the same re-encode is measured in the row named.")
    add("")
    add("Smart cut: reelmesh re-encodes only the frames from the cut to the next keyframe and "
        "copies the rest; neither the ffmpeg CLI nor MoviePy can, so in that row they do the same "
        "full re-encode as in the frame-accurate re-encode row.")
    add("")
    add(f"Encoder settings: {ENCODER_SETTINGS} Text: \"{TEXT}\", {TEXT_SIZE} px, white, "
        f"bottom-centre ({TEXT_MARGIN_PX} px margin in ffmpeg/MoviePy; reelmesh's own default "
        "placement), DejaVu Sans (`" + FONT + "`; reelmesh: Pango \"Sans\").")
    add("")
    add("## Output check")
    add("")
    add("Duration and size of each tool's last output (ffprobe), and x264's rate control as "
        "written in the H.264 stream (`copy` = no x264 settings, the input's were kept). "
        "Different sizes at the same settings are normal; a different rate control means the "
        "re-encode rows do not compare like with like.")
    add("")
    add("| # | " + " | ".join({"reelmesh": "reelmesh", "ffmpeg": "ffmpeg", "moviepy": "MoviePy"}[n]
                              for n in tool_names) + " |")
    add("|---|" + "---|" * len(tool_names))
    for number, op in enumerate(args.ops_selected, 1):
        cells = []
        for name in tool_names:
            cell = results.get(op.key, {}).get(name)
            last = last_ok(cell) if cell else None
            if not last or not last.probe:
                cells.append("—")
                continue
            x264 = last.probe.get("x264", "")
            rc = " ".join(part for part in x264.split() if part.split("=")[0] in ("rc", "crf", "bitrate"))
            if op.copy and (name == "ffmpeg" or last.copied):
                rc = "copy"
            text = f"{fmt_seconds(last.probe.get('duration'))}{' ⚠' if duration_off(last, op) else ''}, " \
                   f"{last.probe.get('size', 0) / 1e6:.2f} MB"
            cells.append(text + (f", {rc}" if rc else ""))
        add(f"| {number} | " + " | ".join(cells) + " |")
    add("")
    add("## Corpus")
    add("")
    add("720p30 H.264 (yuv420p, keyframe every 2 s)/AAC 128k 48 kHz stereo MP4s, made with ffmpeg "
        f"lavfi (testsrc2 + sine) under `{os.path.relpath(args.corpus_dir, REPO)}/`:")
    add("")
    for name, path in clips.items():
        p = probe(path)
        add(f"- `{path.name}`: {p.get('duration', 0):.2f} s, {p.get('size', 0) / 1e6:.1f} MB, {p.get('streams', '')}")
    add("")
    add("## Details")
    add("")
    add("Every output is checked with ffprobe (⚠ = duration more than 0.5 s off the expected one). "
        f"Outputs of the last run are kept in `{os.path.relpath(args.out_dir, REPO)}/<operation>/`.")
    add("")
    for number, op in enumerate(args.ops_selected, 1):
        add(f"### {number}. {op.title} (expected {op.expected_seconds:g} s)")
        add("")
        for name in tool_names:
            cell = results.get(op.key, {}).get(name)
            tool = tools_by_name[name]
            if cell is None:
                continue
            if cell.skipped and cell.warmup is None:
                add(f"- **{name}**: {cell.skipped}")
                continue
            if name != "moviepy" or has_moviepy(op):
                command = tool.command(op, clips, Path(args.out_dir) / op.key / f"{name}.{op.ext}",
                                       Path(args.out_dir) / op.key)
                if isinstance(command, list):
                    command = " ".join(quote(a) for a in command)
                add(f"- **{name}** — `{command}`")
            times = ", ".join(
                (f"{r.seconds:.3f}" + (f" (wall {r.wall:.3f})" if name != "ffmpeg" else ""))
                if r.ok else f"failed: {r.error}" for r in cell.runs)
            warm = cell.warmup
            if warm is not None:
                add(f"  - warm-up: {f'{warm.seconds:.3f} s' if warm.ok else 'failed: ' + warm.error}")
            if cell.runs:
                add(f"  - timed runs (s): {times}")
            last = last_ok(cell)
            if last and last.probe:
                duration = last.probe.get("duration")
                flag = " ⚠" if duration_off(last, op) else ""
                note = f"; {last.note}" if last.note else ""
                add(f"  - output: {fmt_seconds(duration)}{flag}, {last.probe.get('size', 0) / 1e6:.2f} MB, "
                    f"{last.probe.get('streams', '')}{note}")
                if last.probe.get("x264"):
                    add(f"  - x264 settings in the stream: `{last.probe['x264']}`")
        add("")
    return "\n".join(lines) + "\n"


def quote(arg):
    return arg if re.fullmatch(r"[\w@%+=:,./\-\[\]]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 5)))
    parser.add_argument("--tools", default=os.environ.get("BENCH_TOOLS", ",".join(TOOLS)))
    parser.add_argument("--ops", default=os.environ.get("BENCH_OPS", ",".join(op.key for op in OPS)),
                        help="comma-separated subset of: " + ", ".join(op.key for op in OPS))
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("BENCH_TIMEOUT", 900)),
                        help="seconds one run may take")
    parser.add_argument("--corpus-dir", type=Path, default=HERE / "corpus")
    parser.add_argument("--out-dir", type=Path, default=HERE / "out")
    parser.add_argument("--results", type=Path, default=HERE / "results.md")
    parser.add_argument("--moviepy-python", default=str(REPO / ".tools/bench-venv/bin/python"))
    parser.add_argument("--reelmesh-bin")
    parser.add_argument("--endpoint", default="http://127.0.0.1:50051")
    parser.add_argument("--reelmesh-down", default="",
                        help="why reelmesh cannot run (build failed, ...): reported in its column")
    parser.add_argument("--api-key", default=os.environ.get("REELMESH_API_KEY", "dev-key"))
    parser.add_argument("--command", default=" ".join(quote(a) for a in sys.argv),
                        help="the command line to show in the report")
    args = parser.parse_args()

    tool_names = [t for t in TOOLS if t in args.tools.split(",")]
    wanted = args.ops.split(",")
    unknown = set(wanted) - {op.key for op in OPS}
    if unknown or not tool_names or args.runs < 1:
        parser.error(f"bad --ops/--tools/--runs (unknown ops: {sorted(unknown)})")
    args.ops_selected = [op for op in OPS if op.key in wanted]
    if "reelmesh" in tool_names and not (args.reelmesh_bin or args.reelmesh_down):
        parser.error("--reelmesh-bin is needed to run reelmesh")

    # MoviePy finds ffmpeg through imageio-ffmpeg, which otherwise runs its own
    # bundled (newer) build: make every tool use the same ffmpeg.
    os.environ.setdefault("IMAGEIO_FFMPEG_EXE", shutil.which("ffmpeg") or "ffmpeg")
    started = dt.datetime.now(dt.timezone.utc)
    info = machine_info(args)
    log("\n".join(f"{k}: {v}" for k, v in info.items()))
    clips = build_corpus(args.corpus_dir)
    for op in OPS:  # last run's outputs only
        shutil.rmtree(args.out_dir / op.key, ignore_errors=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    makers = {"ffmpeg": FfmpegTool, "moviepy": MoviepyTool, "reelmesh": ReelmeshTool}
    tools = [makers[name](args) for name in tool_names]
    tools_by_name = {tool.name: tool for tool in tools}
    if "reelmesh" in tools_by_name:
        tools_by_name["reelmesh"].upload(clips)

    results = benchmark(tools, args.ops_selected, clips, args.runs, args.out_dir)
    finished = dt.datetime.now(dt.timezone.utc)
    report = render_report(args, info, results, tool_names, started, finished, clips, tools_by_name)
    args.results.write_text(report)
    print()
    print(report)
    log(f"wrote {args.results}")


if __name__ == "__main__":
    main()
