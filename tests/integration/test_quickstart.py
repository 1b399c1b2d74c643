"""docs/quickstart.md, followed as written: the commands, the files the reader is told to write and the outputs
the page quotes are read out of the page itself (its fenced blocks; ``# …`` lines after a command are that
command's output; ``…`` in a quoted output stands for elided text) and run with the real CLI in a directory laid
out like the clone (``.venv/bin`` is this interpreter's). When the page and the tool disagree, this test fails.

Section 5 runs against the session's Kafka and PostgreSQL instead of ``python -m harness dev up``: the addresses
the page shows are replaced by theirs, the sandbox port and the metrics port by free ones, and the topic, consumer
group and feedback topics get names of this test only. Section 1 (``make demo``) is not run here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from harness.devstack import free_port
from tests.integration.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "quickstart.md"


# --------------------------------------------------------------------------- reading the page
@dataclass(frozen=True)
class Block:
    """A fenced block, with the paragraph that introduces it (the reader's instruction) and the one after it."""

    lang: str
    text: str
    section: str
    intro: str
    outro: str


@dataclass(frozen=True)
class Command:
    line: str
    output: tuple[str, ...]  #: the ``# …`` lines after the command: what it prints


class Quickstart:
    def __init__(self, text: str) -> None:
        self.blocks: list[Block] = []
        self.paragraphs: list[str] = []
        section, intro = "", ""
        paragraph: list[str] = []
        pending: list[tuple[str, str, str, str]] = []  # blocks waiting for the paragraph after them
        lines = iter(text.splitlines())
        for line in lines:
            fence = re.match(r"^```(\w*)\s*$", line)
            if fence or not line.strip() or line.startswith("#"):
                if paragraph:
                    intro = " ".join(paragraph)
                    self.paragraphs.append(intro)
                    self.blocks += [Block(*b, outro=intro) for b in pending]
                    pending, paragraph = [], []
            if fence:
                body = []
                for inner in lines:
                    if inner.startswith("```"):
                        break
                    body.append(inner)
                pending.append((fence.group(1), "\n".join(body) + "\n", section, intro))
            elif line.startswith("## "):
                section, intro = line[3:].strip(), ""
                self.blocks += [Block(*b, outro="") for b in pending]
                pending = []
            elif line.strip() and not line.startswith("#"):
                paragraph.append(line.strip())
        self.blocks += [Block(*b, outro=" ".join(paragraph)) for b in pending]

    def block(self, lang: str, containing: str, *, intro: str = "") -> Block:
        found = [b for b in self.blocks if b.lang == lang and containing in b.text and intro in b.intro]
        assert len(found) == 1, f"docs/quickstart.md: expected one {lang} block with {containing!r} " \
                                f"introduced by {intro!r}, found {len(found)}"
        return found[0]

    def paragraph(self, containing: str) -> str:
        found = [p for p in self.paragraphs if containing in p]
        assert len(found) == 1, f"docs/quickstart.md: expected one paragraph with {containing!r}, found {len(found)}"
        return found[0]


def found(pattern: str, text: str) -> re.Match[str]:
    m = re.search(pattern, text)
    assert m, f"docs/quickstart.md no longer says {pattern!r}: {text!r}"
    return m


def commands(block: Block) -> list[Command]:
    out: list[Command] = []
    for line in block.text.splitlines():
        if line.startswith("# "):
            assert out, f"output line before any command: {line!r}"
            out[-1] = Command(out[-1].line, (*out[-1].output, line[2:]))
        elif line.strip():
            out.append(Command(line.strip(), ()))
    return out


def command(block: Block, containing: str) -> Command:
    matching = [c for c in commands(block) if containing in c.line]
    assert len(matching) == 1, f"docs/quickstart.md: expected one command with {containing!r} in {block.text!r}"
    return matching[0]


def target(block: Block) -> str:
    """The file a YAML/JSON block goes to: the path the paragraph starts with (`x.yaml`: …), or ``as `x.json```."""
    m = re.match(r"`([^`]+\.(?:ya?ml|json))`", block.intro) or re.search(r" as `([^`]+\.(?:ya?ml|json))`",
                                                                            block.intro)
    assert m, f"docs/quickstart.md: which file is this block? {block.intro!r}"
    return m.group(1)


def matches(quoted: str, printed: str) -> bool:
    """A quoted output line against a printed one: ``…`` stands for elided text, the rest is literal."""
    return re.fullmatch(".*?".join(re.escape(part) for part in quoted.split("…")), printed) is not None


def assert_printed(cmd: Command, result: subprocess.CompletedProcess[str]) -> None:
    printed = result.stdout.splitlines()
    ok = len(printed) == len(cmd.output) and all(matches(q, p) for q, p in zip(cmd.output, printed))
    assert ok, (f"`{cmd.line}` prints something else than docs/quickstart.md says.\nquoted:\n"
                + "\n".join(cmd.output) + "\nprinted:\n" + result.stdout + result.stderr[-2000:])


# --------------------------------------------------------------------------- running it
class Reader:
    """Someone at the root of a fresh clone, typing the page's commands into a shell."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.replace: dict[str, str] = {}  # the page's addresses → this test's

    def local(self, text: str) -> str:
        for old, new in self.replace.items():
            text = text.replace(old, new)
        return text

    def run(self, cmd: Command, *, where: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["sh", "-c", self.local(cmd.line)], cwd=where or self.home, env=self.env,
                                capture_output=True, text=True, timeout=180)
        if ok:
            assert result.returncode == 0, f"`{cmd.line}` failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        return result

    def check(self, cmd: Command, **kw: Any) -> subprocess.CompletedProcess[str]:
        result = self.run(cmd, **kw)
        if cmd.output:
            assert_printed(cmd, result)
        return result

    def write(self, block: Block) -> Path:
        path = self.home / target(block)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.local(block.text), "utf-8")
        return path


def insert_after_line(text: str, anchor: str, snippet: str) -> str:
    lines = text.splitlines(keepends=True)
    (at,) = [i for i, line in enumerate(lines) if anchor in line]
    return "".join(lines[:at + 1]) + snippet + "".join(lines[at + 1:])


def append_to_mapping(text: str, key: str, snippet: str) -> str:
    """``snippet`` at the end of the top-level YAML mapping ``key`` (before the next top-level key)."""
    lines = text.splitlines(keepends=True)
    (start,) = [i for i, line in enumerate(lines) if line.rstrip() == key]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() and not lines[i][0].isspace()),
               len(lines))
    return "".join(lines[:end]) + snippet + "".join(lines[end:])


def with_venv(clone: Path) -> Path:
    """``clone/.venv/bin``: this interpreter's bin directory (the installed ``kingdee-cdc``)."""
    (clone / ".venv").mkdir(parents=True)
    (clone / ".venv" / "bin").symlink_to(Path(sys.executable).parent, target_is_directory=True)
    return clone


def test_the_quickstart_as_written(kafka_bootstrap: str, pg_dsn: str, tmp_path: Path) -> None:
    qs = Quickstart(DOC.read_text("utf-8"))
    # The clone: what the commands read from it, and .venv/bin (this interpreter's, with the installed CLI).
    home = tmp_path / "kingdee-cdc"
    home.mkdir()
    for part in ("rules", "schemas"):
        shutil.copytree(ROOT / part, home / part, ignore=shutil.ignore_patterns("__pycache__"))
    (home / "connector" / "sandbox").mkdir(parents=True)
    shutil.copy(ROOT / "connector" / "sandbox" / "sandbox.yaml", home / "connector" / "sandbox" / "sandbox.yaml")
    with_venv(home)
    uid = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDCDC_")}
    env["KDCDC_FEEDBACK__TOPIC_PREFIX"] = f"kingdee-cdc.feedback.{uid}"  # feedback topics of this test only
    reader = Reader(home, env)

    # 2. A rule for a new source table, on a copy of the shipped rules.
    reader.check(command(qs.block("sh", "cp -r rules"), "cp -r rules"))
    reader.write(qs.block("yaml", "kind: rule", intro="`my-rules/oa-expense.yaml`"))
    instruction = qs.paragraph("add the account after")
    ledger_file, after, _, mapping = found(
        r"In `([^`]+)`, add the account after `([^`]+)` and a permission for `([^`]+)` at the end of `([^`]+)`",
        instruction).groups()
    account_edit, permission_edit = [b for b in qs.blocks if b.intro == instruction]
    shipped_ledger = (home / ledger_file).read_text("utf-8")
    with_account = insert_after_line(shipped_ledger, f'"{after}"', account_edit.text)
    (home / ledger_file).write_text(append_to_mapping(with_account, mapping, permission_edit.text), "utf-8")
    check = command(qs.block("sh", "mapping check"), "mapping check")
    assert len(check.output) == 2, check  # a note about the new table's fields, and the summary
    reader.check(check)
    # ... and what it says when the reader forgets the ledger edit, or only the permission
    forgot_ledger = re.findall(r"`([^`]*\.yaml:\d+ [^`]*)`", qs.paragraph("Forget the ledger edit"))
    no_entry = found(r"Forget the permission and it says the `([^`]+)` system has no entry under `([^`]+)`",
                     qs.paragraph("Forget the permission")).groups()
    for forgot, ledger, said in (("ledger", shipped_ledger, forgot_ledger),
                                 ("permission", with_account, ["'{}' has no entry under {}".format(*no_entry)])):
        elsewhere = with_venv(tmp_path / f"forgot-{forgot}")
        shutil.copytree(home / "my-rules", elsewhere / "my-rules")
        (elsewhere / ledger_file).write_text(ledger, "utf-8")
        result = reader.run(check, where=elsewhere, ok=False)
        assert said and result.returncode != 0, (forgot, said, result.stdout, result.stderr)
        printed = result.stdout + result.stderr
        assert all(s in printed for s in said), f"forgot the {forgot}: the page says {said}, the tool:\n{printed}"

    # 3. The golden file.
    reader.write(qs.block("yaml", "kind: golden", intro="`my-rules/golden/oa-expense.yaml`"))
    reader.check(command(qs.block("sh", "mapping test"), "mapping test"))

    # 4. Preview a Debezium event: the voucher lines and the marker the text names.
    reader.write(qs.block("json", '"op": "c"', intro="as `claim.json`"))
    preview_block = qs.block("sh", "mapping preview")
    preview = json.loads(reader.check(command(preview_block, "mapping preview")).stdout.splitlines()[0])
    named = re.findall(r"`((?:debit|credit) [^`]+)`", preview_block.outro)
    assert named and preview["vouchers"][0]["entries"] == named, (named, preview["vouchers"])
    (marker,) = [m for m in re.findall(r"`(\[[^`]*<key>\])`", preview_block.outro)]
    model = preview["kingdee"][0]
    assert len(preview["kingdee"]) == 1 and [e["FACCOUNTID"]["FNumber"] for e in model["FEntity"]] == [
        n.split()[1] for n in named]
    in_text = re.search(re.escape(marker).replace(re.escape("<key>"), "([0-9a-f]+)"),
                        model["FEntity"][0]["FEXPLANATION"])
    assert in_text, (marker, model["FEntity"][0])
    key = in_text.group(1)

    # 5. Against the sandbox: the session's Kafka and PostgreSQL stand in for `dev up`.
    stack = qs.block("sh", "harness dev up")
    (dev_up,) = [c for c in commands(stack) if "dev up" in c.line]
    started = dict(line.split(None, 1) for line in dev_up.output)  # kafka <address>, postgresql <dsn>
    sandbox_cmd = command(stack, "kingdee-cdc sandbox")
    assert sandbox_cmd.line.endswith("&"), sandbox_cmd
    page_port = found(r"--port (\d+)", sandbox_cmd.line).group(1)
    port = free_port()
    reader.replace = {started["kafka"]: kafka_bootstrap, started["postgresql"]: pg_dsn,
                      f"127.0.0.1:{page_port}": f"127.0.0.1:{port}", f"--port {page_port}": f"--port {port}",
                      "oa.public.expense_claim": f"oa.public.expense_claim.{uid}",
                      "group_id: my-first-rule": f"group_id: my-first-rule-{uid}"}
    reader.check(command(stack, "sed "))
    sandbox = subprocess.Popen(["sh", "-c", "exec " + reader.local(sandbox_cmd.line.rstrip("& "))], cwd=home, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        admin = f"http://127.0.0.1:{port}/sandbox/admin/vouchers"

        def answering() -> bool:
            assert sandbox.poll() is None, sandbox.communicate()[0]
            return httpx.get(admin, timeout=5).status_code == 200
        wait_for(answering, 60, f"the sandbox to answer on port {port}", ignore=(httpx.HTTPError,))
        config = qs.block("yaml", "bootstrap_servers", intro="`my-config.yaml`")
        metrics_port = found(r"(?m)^  port: (\d+)$", config.text).group(1)
        reader.replace[f"  port: {metrics_port}"] = f"  port: {free_port()}"
        reader.write(config)
        service = qs.block("sh", "run --post --feedback")
        for cmd in commands(service):
            reader.check(cmd)
        tail = command(qs.block("sh", "feedback tail"), "feedback tail")
        lines = reader.check(tail).stdout.splitlines()
        assert {line.split()[3] for line in lines} == {key}  # the key the preview showed
        number = lines[-1].split()[4]

        # "Run `events produce` again with the same file: nothing new is posted — … recorded as a duplicate."
        assert "Run `events produce` again with the same file: nothing new is posted" in qs.paragraph(
            "Run `events produce` again")
        reader.run(command(service, "events produce"))
        again = reader.run(command(service, "run --post --feedback")).stdout
        assert again.startswith("stopped: 1 records in 1 batches; 0 vouchers, 1 duplicates skipped"), again

        # Look at the voucher in the sandbox.
        look = command(qs.block("sh", "/sandbox/admin/vouchers"), "/sandbox/admin/vouchers")
        if shutil.which(shlex.split(look.line)[0]) is not None:  # curl is on most machines, not all
            shown = reader.run(look).stdout
        else:
            shown = json.dumps(httpx.get(admin, timeout=10).json(), indent=4)
        assert json.dumps(number)[1:-1] in shown or number in shown, shown
        held = httpx.get(admin, timeout=10).json()
        assert [v["FBillNo"] for v in held] == [number]
    finally:
        sandbox.terminate()  # "Clean up with `kill %1` (the sandbox)"
        sandbox.communicate(timeout=30)
    assert "kill %1" in qs.paragraph("Clean up with")
