"""Reading what a process tree costs and holding it back: on real processes (fast tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capture.browser import TileBrowser
from capture.job import CaptureJob
from capture.processes import TreeCpu, lower_priority, process_trees
from evidence import CaptureEvent, CaptureRequest, EventKind, Settings, TileStatus

# A parent with a second thread and a child; each line on stdin makes the child burn 0.3 s of CPU and answer
# "burned"; the parent outlives the child, so the tree can be read again after the child ended.
TREE = """
import subprocess, sys, threading, time
child = subprocess.Popen([sys.executable, "-c",
    "import sys, time\\n"
    "for _ in sys.stdin:\\n"
    "    end = time.process_time() + 0.3\\n"
    "    while time.process_time() < end: pass\\n"
    "    print('burned', flush=True)\\n"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print(child.pid, flush=True)
for line in sys.stdin:
    child.stdin.write(line); child.stdin.flush()
    if line.strip() == "end":
        child.stdin.close(); child.wait(); print("ended", flush=True)
        continue
    print(child.stdout.readline().strip(), flush=True)
"""


def _nice_of_every_thread(pid: int) -> set[int]:
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        values.add(int(fields[16]))  # stat field 19, counted from the state: nice
    return values


def test_a_tree_is_held_back_thread_by_thread_and_its_cost_outlives_its_processes() -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    assert before < 10, f"the tests run at nice {before}: lowering to 10 could not be seen"
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdin is not None and parent.stdout is not None

    def ask(line: str) -> str:
        assert parent.stdin is not None and parent.stdout is not None
        parent.stdin.write(line + "\n")
        parent.stdin.flush()
        return parent.stdout.readline().strip()

    child = int(parent.stdout.readline())
    try:
        assert ask("burn") == "burned"
        tree = process_trees([parent.pid])[parent.pid]
        assert {p.pid for p in tree} == {parent.pid, child}
        meter = TreeCpu()
        first = meter.read(tree)
        assert first >= 0.25  # 0.3 s burned; /proc counts in ticks of 0.01 s, and a tick may fall either side

        assert lower_priority(tree, 10) >= 3  # the parent's two threads (at least) and the child's
        assert _nice_of_every_thread(parent.pid) == _nice_of_every_thread(child) == {10}
        assert lower_priority(tree, 10) == 0  # already there: nothing to change
        assert os.getpriority(os.PRIO_PROCESS, 0) == before  # ours is untouched

        assert ask("burn") == "burned"  # 0.3 s more, read while the child still runs
        second = meter.read(process_trees([parent.pid])[parent.pid])
        assert second - first >= 0.25
        assert ask("end") == "ended"
        tree = process_trees([parent.pid])[parent.pid]
        assert [p.pid for p in tree] == [parent.pid]  # the child is gone ...
        assert meter.read(tree) >= second  # ... and what it used stays counted
    finally:
        parent.kill()
        parent.wait()
        subprocess.run(["kill", "-9", str(child)], capture_output=True, check=False)
    assert process_trees([parent.pid]) == {parent.pid: []}


SPINNERS = """
import subprocess, sys, time
spin = "while True: pass"
children = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
time.sleep(60)
"""


def test_a_capture_holds_back_the_tile_that_costs_the_others_their_frames(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The capture's own wiring on real processes: each tile's browser tree is read once a second; a tree spinning
    two cores, while every core is busy and another tile drops frames, is lowered, its timeline and the progress
    say so, and the sync verdict will carry it."""
    monkeypatch.setenv("WZ_DATA_DIR", str(tmp_path / "data"))
    events: list[CaptureEvent] = []
    request = CaptureRequest(urls=("http://127.0.0.1:9/room", "http://127.0.0.1:9/heavy"), out_dir=str(tmp_path / "c"))
    job = CaptureJob(request, Settings(), events.append)
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    heavy = subprocess.Popen([sys.executable, "-c", SPINNERS])
    try:
        for number, process in ((1, idle), (2, heavy)):
            tile = TileBrowser(number, request.urls[number - 1], job.layout.tile(number).rect,
                               tmp_path / "c" / "tiles" / str(number), chromium="chromium", env={}, proxy_port=9)
            tile.status = TileStatus.RECORDING
            tile.process = process
            job.tiles[number] = tile
        meters: dict[int, TreeCpu] = {}
        browsers = {1: idle.pid, 2: heavy.pid}
        lowered = None
        deadline = time.monotonic() + 20
        while lowered is None and time.monotonic() < deadline:
            now = time.time()
            job.sync.cpu.append((now, 1.0))  # saturated, as the machine would be with a room beside
            ticks = len(job.sync.cpu)
            job.sync.add_video(1, now, 60 * ticks, 6 * ticks)  # and the room dropping 10 % of its frames
            lowered = job._sample_tile_costs(meters, browsers)
            time.sleep(1)
        assert lowered is not None, job.sync.recent_cores()
        tile, cores, median, _, threads = lowered
        assert tile == 2 and cores >= 1.0 and median < 0.1 and threads >= 3
        job._lowered(*lowered)
        assert set(job.sync.lowered) == {2}
        for process in process_trees([heavy.pid])[heavy.pid]:
            assert _nice_of_every_thread(process.pid) == {10}
        assert _nice_of_every_thread(idle.pid) == {os.getpriority(os.PRIO_PROCESS, 0)}
        timeline = [json.loads(line) for line in (tmp_path / "c" / "tiles" / "2" / "timeline.jsonl").read_text()
                    .splitlines()]
        assert [e["event"] for e in timeline] == ["priority-lowered"] and timeline[0]["threads"] == threads
        (said,) = [e for e in events if e.kind == EventKind.TILE]
        assert said.tile == 2 and said.cpu_cores == round(cores, 2) and "priority is lowered" in said.message
        assert job._sample_tile_costs(meters, browsers) is None  # once
    finally:
        for process in (idle, heavy):
            for child in process_trees([process.pid])[process.pid][::-1]:
                child.kill()
            process.wait()
