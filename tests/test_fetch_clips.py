"""vast.data.fetch_clips against real mp4 sources served over HTTP on 127.0.0.1.

Each source's gray level changes every second (the second's number is readable from any frame), so a
clip's first and last frames show whether it was cut at the right place.
"""

import collections
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from vast.data.fetch_clips import Clip, clip_of, fetch_clips, main
from vast.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
FPS, SECONDS = 10, 10
GOOD_CLIPS = {"srcA_x-1_1.500_3.500": (1.5, 3.5), "a_hms": (4.5, 6.5), "a_url": (7.5, 9.5), "b_keys": (2.5, 5.5)}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Two 10 s sources (160x120, 10 fps, a sine tone); the gray level steps once a second."""
    folder = tmp_path_factory.mktemp("media")
    for name in ("srcA_x-1", "srcB"):
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
                        "-f", "lavfi", "-i", f"color=black:s=160x120:r={FPS}:d={SECONDS},geq=lum='30+20*floor(T)':cb=128:cr=128",
                        "-f", "lavfi", "-i", f"sine=frequency=440:duration={SECONDS}",
                        "-c:v", "libx264", "-preset", "ultrafast", "-g", "100", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-shortest", str(folder / f"{name}.mp4")], check=True)
    with av.open(str(folder / "srcB.mp4")) as container:
        frames = [frame.to_ndarray(format="gray").mean() for frame in container.decode(video=0)]
    levels = [frames[second * FPS + FPS // 2] for second in range(SECONDS)]  # the gray of each second
    return folder, levels


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client killed mid-transfer is part of the resume test


@pytest.fixture
def server(media):
    """Serves the media folder; counts GETs per path; a path in `gates` waits for its Event first."""
    hits, gates, lock = collections.Counter(), {}, threading.Lock()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            with lock:
                hits[self.path] += 1
            if self.path in gates:
                gates[self.path].wait(30)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = _Server(("127.0.0.1", 0), functools.partial(Handler, directory=str(media[0])))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    template = f"http://127.0.0.1:{httpd.server_address[1]}/{{video_id}}.mp4"
    yield template, hits, gates
    for gate in gates.values():
        gate.set()
    httpd.shutdown()
    httpd.server_close()


def _release(tmp_path, template) -> Path:
    rows = [{"clip_id": "srcA_x-1_1.500_3.500", "vision_cap": ["parsed from the clip_id"]},
            {"clip_id": "a_hms", "video_id": "srcA_x-1", "span": ["00:00:04.5", "00:00:06.500"]},
            {"clip_id": "a_url", "url": template.format(video_id="srcA_x-1"), "timestamp": [7.5, 9.5]},
            {"clip_id": "b_keys", "youtube_id": "srcB", "start": 2.5, "end": "5.5"},
            {"clip_id": "gone_1.000_2.000"},
            {"clip_id": "a_nospan", "video_id": "srcA_x-1"},
            {"clip_id": "a_far", "video_id": "srcA_x-1", "span": [20, 25]}]
    path = tmp_path / "release.json"
    path.write_text(json.dumps(rows))
    return path


def _check_clip(path: Path, start: float, end: float, levels: list[float]) -> None:
    """The clip lasts end - start, has audio, its frames show the seconds of start and end, and it holds
    no packets of its own besides them (no keyframe pre-roll hidden by an edit list, as a stream copy has)."""
    frames, packets = [], 0
    with av.open(str(path)) as container:
        assert container.streams.audio, f"{path.name} lost its audio"
        duration = container.duration / av.time_base
        for packet in container.demux(container.streams.video[0]):
            packets += packet.size > 0
            frames += [frame.to_ndarray(format="gray").mean() for frame in packet.decode()]
    assert packets == len(frames), (path.name, packets, len(frames))
    second = [min(range(SECONDS), key=lambda s: abs(levels[s] - gray)) for gray in frames]
    assert abs(duration - (end - start)) < 0.15, (path.name, duration)
    assert abs(len(frames) - (end - start) * FPS) <= 1, (path.name, len(frames))
    assert (second[0], second[-1]) == (int(start), int(end - 1 / FPS)), (path.name, second)


def _check_all(out: Path, levels) -> None:
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(f"{c}.mp4" for c in GOOD_CLIPS)
    for clip_id, (start, end) in GOOD_CLIPS.items():
        _check_clip(out / "videos" / f"{clip_id}.mp4", start, end, levels)


def test_clip_of_reads_every_form():
    template = "http://host/{video_id}.mp4"
    assert clip_of({"clip_id": "GOD8Bt5LfDE_100.000_110.000"}, template) == Clip(
        "GOD8Bt5LfDE_100.000_110.000", "http://host/GOD8Bt5LfDE.mp4", "GOD8Bt5LfDE", 100.0, 110.0)
    assert clip_of({"clip_id": "a_b-c_1_2"}, template).video_id == "a_b-c"
    clip = clip_of({"clip_id": "x", "youtube_id": "y", "timestamp": ["00:01:40.500", "1:50"]}, template)
    assert (clip.url, clip.start, clip.end) == ("http://host/y.mp4", 100.5, 110.0)
    clip = clip_of({"clip_id": "v_1_2", "url": "http://elsewhere/v", "start": 3, "end": "4.25"}, template)
    assert (clip.url, clip.video_id, clip.start, clip.end) == ("http://elsewhere/v", None, 3.0, 4.25)
    for row, reason in [({"clip_id": "nospan", "video_id": "v"}, "no span"), ({"clip_id": "v_1_x"}, "no span"),
                        ({"clip_id": "x", "span": [1, 2]}, "no source"), ({"clip_id": "v_5_2"}, "empty"),
                        ({"clip_id": "x", "video_id": "v", "span": ["1:2:3:4", 5]}, "bad span"),
                        ({"clip_id": "x", "video_id": "v", "span": 5}, "bad span"),
                        ({"vision_cap": "no id"}, "no clip_id"), ({"clip_id": "../v_1_2"}, "cannot name a file")]:
        with pytest.raises(DataError, match=reason):
            clip_of(row, template)


def test_fetch_cuts_each_clip_and_downloads_each_source_once(tmp_path, server, media):
    template, hits, _ = server
    release, out = _release(tmp_path, template), tmp_path / "out"
    report = fetch_clips(release, out, url_template=template, workers=2)

    assert sorted(report.done) == sorted(GOOD_CLIPS) and report.fetched == 4
    _check_all(out, media[1])
    # source A has three clips and B one: each took the same requests, one download
    assert hits["/srcA_x-1.mp4"] == hits["/srcB.mp4"] >= 1
    assert sorted(p.name for p in (out / "sources").iterdir()) == ["srcA_x-1.mp4", "srcB.mp4"]
    stored = json.loads((out / "fetch_report.json").read_text())
    assert [(u["clip_id"], "404" in u["reason"]) for u in stored["unavailable"]] == [("gone_1.000_2.000", True)]
    bad = {entry["clip_id"]: entry["reason"] for entry in stored["bad"]}
    assert set(bad) == {"a_nospan", "a_far"} and "no span" in bad["a_nospan"] and "outside" in bad["a_far"]
    assert sorted(stored["done"]) == sorted(GOOD_CLIPS)

    before = dict(hits)
    again = fetch_clips(release, out, url_template=template, workers=2)
    assert (sorted(again.done), again.fetched) == (sorted(GOOD_CLIPS), 0)
    assert hits["/srcA_x-1.mp4"] == before["/srcA_x-1.mp4"] and hits["/srcB.mp4"] == before["/srcB.mp4"]
    assert len(again.unavailable) == 1 and len(again.bad) == 2


def test_killed_run_resumes_without_redoing_work(tmp_path, server, media):
    template, hits, gates = server
    gates["/srcB.mp4"] = threading.Event()  # the first run cannot finish before it is killed
    release, out = _release(tmp_path, template), tmp_path / "out"
    command = [sys.executable, "-m", "vast.data.fetch_clips", "--txt", str(release), "--out", str(out),
               "--url_template", template, "--workers", "1"]
    run = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not list((out / "videos").glob("*.mp4")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)  # the whole group: the fetcher and the ffmpeg it runs
    run.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.mp4")}
    assert finished, "no clip was cut before the deadline"
    for name in finished:
        _check_clip(out / "videos" / name, *GOOD_CLIPS[name[:-len(".mp4")]], media[1])
    source_gets = hits["/srcA_x-1.mp4"]
    assert source_gets >= 1 and (out / "sources" / "srcA_x-1.mp4").is_file()

    gates["/srcB.mp4"].set()
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert "4 clip(s) done" in rerun.stdout and "fetch_report.json" in rerun.stdout
    _check_all(out, media[1])
    assert {name: (out / "videos" / name).stat().st_mtime_ns for name in finished} == finished
    assert hits["/srcA_x-1.mp4"] == source_gets


def test_delete_sources_and_stream_copy(tmp_path, server):
    template, _, _ = server
    release = tmp_path / "release.json"
    release.write_text(json.dumps([{"clip_id": "srcA_x-1_1_3"}, {"clip_id": "srcB_4_6.5"}]))
    report = fetch_clips(release, tmp_path / "out", url_template=template, workers=2,
                         stream_copy=True, delete_sources=True)
    assert sorted(report.done) == ["srcA_x-1_1_3", "srcB_4_6.5"]
    assert list((tmp_path / "out" / "sources").iterdir()) == []
    for clip_id in report.done:
        with av.open(str(tmp_path / "out" / "videos" / f"{clip_id}.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) > 0


def test_nothing_fetched_is_exit_status_1(tmp_path, server, capsys):
    template, _, _ = server
    release = tmp_path / "release.json"
    release.write_text(json.dumps([{"clip_id": "gone_1_2"}, {"clip_id": "no_source"}]))
    assert main(["--txt", str(release), "--out", str(tmp_path / "out"), "--url_template", template]) == 1
    assert "0 clip(s) done" in capsys.readouterr().out


def test_missing_annotation_file_is_one_line_and_status_2(tmp_path):
    missing = tmp_path / "nowhere.json"
    result = subprocess.run([sys.executable, "-m", "vast.data.fetch_clips", "--txt", str(missing),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: annotation file not found: {missing}"]


@pytest.mark.parametrize("text, problem", [("{not json", "not valid JSON"), ('{"clip_id": "x_1_2"}', "JSON list")])
def test_malformed_annotation_file_is_status_2(tmp_path, capsys, text, problem):
    release = tmp_path / "release.json"
    release.write_text(text)
    assert main(["--txt", str(release), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(release) in lines[0] and problem in lines[0]
