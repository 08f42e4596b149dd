"""Executes the README's grpcurl walkthrough as written, so the docs cannot rot.

The walkthrough is the text between `<!-- grpcurl-walkthrough:begin -->` and
`<!-- grpcurl-walkthrough:end -->` in README.md (or, before it is pasted there,
in docs/call-from-anywhere.md). Each ```sh block runs in order, as its own
`bash -e -o pipefail` shell (like a fresh terminal), in one scratch directory,
with `127.0.0.1:50051` pointed at a fresh test server and the test's grpcurl
first on PATH. One-line directives before a block:

- `<!-- grpcurl-walkthrough:background -->`: the "second terminal": runs in
  the background until the end, then gets Ctrl-C; its output must be a stream
  of room snapshots, the first printed at once.
- `<!-- grpcurl-walkthrough:expect-snapshot -->`: the block makes that
  terminal print exactly one new snapshot.
- `<!-- grpcurl-walkthrough:expect-quiet -->`: it makes that terminal print
  nothing.

Every block after the background one carries one of the expect directives.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpcurl_cli import Stream, parse_messages, users
from presenced_server import start_presenced, stop_presenced

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- grpcurl-walkthrough:begin -->", "<!-- grpcurl-walkthrough:end -->"
DIRECTIVE = re.compile(r"^<!-- grpcurl-walkthrough:([a-z-]+) -->$")
DOC_ADDR = "127.0.0.1:50051"
QUIET = 0.5  # seconds a terminal must stay quiet; 10x the server's coalescing window


@dataclass
class Block:
    line: int  # 1-based, in the source file
    code: str
    directives: set[str] = field(default_factory=set)


def walkthrough_source() -> Path:
    readme = REPO / "README.md"
    if readme.exists() and BEGIN in readme.read_text():
        return readme
    return DRAFT


DRAFT = REPO / "docs" / "call-from-anywhere.md"


def between_markers(path: Path) -> str:
    text = path.read_text()
    return text[text.index(BEGIN):text.index(END)]


def test_one_walkthrough_only() -> None:
    """Once the walkthrough is in README.md, a leftover draft must not drift."""
    source = walkthrough_source()
    if source != DRAFT and DRAFT.exists() and BEGIN in DRAFT.read_text():
        assert between_markers(DRAFT) == between_markers(source), \
            "README.md and docs/call-from-anywhere.md have different walkthroughs: delete the draft"
    assert BEGIN in source.read_text(), f"no walkthrough in {source}"


def parse(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    assert lines.count(BEGIN) == 1 and lines.count(END) == 1, f"{path}: want one {BEGIN} and one {END}"
    start, end = lines.index(BEGIN), lines.index(END)
    assert start < end
    blocks: list[Block] = []
    pending: set[str] = set()
    i = start + 1
    in_comment = False
    while i < end:
        text = lines[i].strip()
        if in_comment:
            in_comment = "-->" not in text
        elif m := DIRECTIVE.match(text):
            assert m.group(1) in {"background", "expect-snapshot", "expect-quiet"}, f"{path}:{i + 1}: {text}"
            pending.add(m.group(1))
        elif text.startswith("<!--"):
            in_comment = "-->" not in text
        elif text.startswith("```"):
            lang, body, first = text[3:].strip(), [], i + 1
            i += 1
            while not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            assert i < end, f"{path}:{first}: unterminated code block"
            if lang in ("sh", "bash", "shell"):
                blocks.append(Block(first, "\n".join(body) + "\n", pending))
            else:
                assert not pending, f"{path}:{first}: directives {pending} before a non-sh block"
            pending = set()
        i += 1
    assert not pending, f"{path}: directives {pending} with no block after them"
    return blocks


def test_walkthrough_is_well_formed() -> None:
    blocks = parse(walkthrough_source())
    assert sum("background" in b.directives for b in blocks) == 1
    started = False
    for b in blocks:
        if started:
            assert len(b.directives & {"expect-snapshot", "expect-quiet"}) == 1, \
                f"line {b.line}: a block after the background one says what the watch prints (expect-...)"
        started = started or "background" in b.directives
    assert all(DOC_ADDR in b.code for b in blocks), "every block talks to the documented address"
    calls = " ".join(b.code for b in blocks)
    for needed in (" list", " describe ", "/Heartbeat", "/List", "/WatchRoom", "/Disconnect"):
        assert needed in calls, f"the walkthrough shows no {needed.strip()}"


def test_readme_walkthrough(tmp_path: Path) -> None:
    source = walkthrough_source()
    blocks = parse(source)
    server = start_presenced(tmp_path)
    scratch = tmp_path / "terminal"
    scratch.mkdir()
    watch: Stream | None = None
    outputs: list[str] = []
    try:
        for block in blocks:
            code = block.code.replace(DOC_ADDR, server.addr)
            where = f"{source.name}:{block.line}"
            if "background" in block.directives:
                watch = Stream(["bash", "-e", "-o", "pipefail", "-c", code], cwd=str(scratch))
                watch.wait_messages(1)
                outputs.append("")
                continue
            before = len(watch.messages()) if watch else 0
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=scratch,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{where} failed ({done.returncode}):\n{block.code}\n{done.stderr}"
            outputs.append(done.stdout)
            if "expect-snapshot" in block.directives:
                assert watch, f"{where}: expect-snapshot before the background block"
                watch.wait_messages(before + 1)
                time.sleep(QUIET)
                assert len(watch.messages()) == before + 1, f"{where}: more than one snapshot"
            elif watch is not None:  # expect-quiet (test_walkthrough_is_well_formed)
                time.sleep(QUIET)
                assert len(watch.messages()) == before, \
                    f"{where}: the watch printed {watch.messages()[before:]} where the walkthrough promised nothing"
        assert watch is not None
        watch.interrupt()
        snapshots = [m["snapshot"] for m in parse_messages(watch.stdout)]
    finally:
        if watch is not None:
            watch.interrupt()
        stop_presenced(server.proc)

    everything = "\n".join(outputs)
    # list: every service on the port, health and both reflections included.
    for service in ("presence.v1.PresenceService", "grpc.health.v1.Health",
                    "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
        assert service in everything, f"`list` in the walkthrough shows no {service}"
    # describe: doc comments come through reflection.
    assert "// PresenceService tracks client sessions in rooms." in everything
    assert '"status": "SERVING"' in everything
    assert '"roomToken"' in everything and '"sessionToken"' in everything

    # The watch told the story the prose tells: Alice alone; Bob joins; Bob
    # types; Bob leaves and is listed offline after her; then nothing.
    story = [users(s) for s in snapshots]
    assert story == [
        [("alice", True)],
        [("alice", True), ("bob", True)],
        [("alice", True), ("bob", True)],
        [("alice", True), ("bob", False)],
    ], story
    assert snapshots[2]["users"][1]["data"] == {"typing": True}
    assert "lastDisconnected" in snapshots[3]["users"][1]
    versions = [int(s["version"]) for s in snapshots]
    assert versions == sorted(set(versions)), versions
