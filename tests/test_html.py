"""``--html`` reports (prune, sweep, analyze) and the command line's conventions: -q, -v, colour,
--help, --version. The HTML is read back with the stdlib parser: tables by id, images decoded."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import onnx
import pytest
from helpers import USAGE, Net, assert_one_line_error, small_model, snapshot, sweep_model

import onnxprune

PNG = b"\x89PNG\r\n\x1a\n"
ANSI = re.compile(r"\x1b\[")


def run_cli(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command with exactly the colour variables given (none of the caller's)."""
    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)], cwd=cwd,
                          env={**base, "COLUMNS": "200", **(env or {})}, capture_output=True, text=True, timeout=300)


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env={"NO_COLOR": "1"})


class Page(HTMLParser):
    """Tables (id -> rows of cell texts), images (src), <pre> texts by id, h2 titles, tags seen."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.pres: dict[str, str] = {}
        self.titles: list[str] = []
        self.tags: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._pre: str | None = None
        self._h2: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "table":
            self._table = attrs.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "pre":
            self._pre = attrs.get("id", "")
            self.pres[self._pre] = ""
        elif tag == "h2":
            self._h2 = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "pre":
            self._pre = None
        elif tag == "h2":
            self.titles.append("".join(self._h2))
            self._h2 = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._pre is not None:
            self.pres[self._pre] += data
        if self._h2 is not None:
            self._h2.append(data)

    def rows(self, table_id: str) -> list[dict[str, str]]:
        """The table's body rows as {header: cell}."""
        header, *body = self.tables[table_id]
        return [dict(zip(header, row, strict=True)) for row in body]

    def pngs(self) -> list[bytes]:
        out = []
        for src in self.images:
            prefix = "data:image/png;base64,"
            assert src.startswith(prefix), src[:40]
            out.append(base64.b64decode(src[len(prefix):], validate=True))
        return out


def assert_self_contained(text: str, page: Page) -> None:
    assert not {"script", "link", "iframe"} & page.tags
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text), "no network references"
    pngs = page.pngs()
    assert pngs and all(p[:8] == PNG and len(p) > 1000 for p in pngs)


@pytest.fixture(scope="module")
def pruned_page(tmp_path_factory) -> tuple[Path, Page, str]:
    folder = tmp_path_factory.mktemp("html")
    onnx.save(small_model(), str(folder / "small.onnx"))
    proc = cli("small.onnx", "--flops", "0.5", "-o", "out.onnx", "--report", "r.json", "--html", "r.html",
               "--bench", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert "wrote r.html" in proc.stdout
    text = (folder / "r.html").read_text()
    return folder, Page(text), text


def test_prune_html_holds_the_figures_the_json_report_has(pruned_page):
    folder, page, text = pruned_page
    assert_self_contained(text, page)
    report = json.loads((folder / "r.json").read_text())
    summary = {row[""]: row for row in page.rows("summary")}
    assert set(summary) >= {"FLOPs", "params", "file size", "latency (ort-cpu, median)"}
    assert float(summary["FLOPs"]["after / before"]) == pytest.approx(report["flops"]["ratio"], abs=5e-4)
    assert float(summary["params"]["after / before"]) == pytest.approx(report["params"]["ratio"], abs=5e-4)
    assert float(summary["FLOPs"]["after / before"]) <= 0.5
    latency = {row["model"]: row for row in page.rows("latency-table")}
    assert float(latency["dense"]["median ms"]) > 0 and float(latency["pruned"]["median ms"]) > 0
    assert {"Summary", "Channels per layer", "Isomorphic classes", "Frozen channels", "Latency",
            "Command line and versions"} <= set(page.titles)


def test_prune_html_channel_counts_are_the_pruned_models(pruned_page):
    folder, page, _ = pruned_page
    pruned = {t.name: list(t.dims) for t in onnx.load(str(folder / "out.onnx")).graph.initializer}
    rows = page.rows("channels-table")
    assert [r["group (first weight)"] for r in rows] == ["c1.w", "c2.w"]
    assert [int(r["channels before"]) for r in rows] == [8, 6]
    assert [int(r["channels after"]) for r in rows] == [pruned["c1.w"][0], pruned["c2.w"][0]]
    assert int(rows[0]["channels after"]) < 8
    classes = page.rows("classes-table")
    assert sum(int(r["groups"]) for r in classes) == 2
    assert sum(int(r["channels after"]) for r in classes) == sum(int(r["channels after"]) for r in rows)
    reasons = " ".join(r["why"] for r in page.rows("frozen-table"))
    assert "graph input" in reasons and "graph output" in reasons


def test_prune_html_has_the_command_line_and_versions(pruned_page):
    _, page, _ = pruned_page
    assert page.pres["command"] == "onnxprune small.onnx --flops 0.5 -o out.onnx --report r.json --html r.html --bench"
    versions = {r["package"]: r["version"] for r in page.rows("versions")}
    assert versions["onnxprune"] == onnxprune.__version__
    assert versions["onnx"] == onnx.__version__
    assert set(versions) == {"onnxprune", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy", "python"}


def test_prune_html_reads_a_prune_result_and_what_the_run_recorded(tmp_path):
    """The presenters read typed results: a PruneResult, and a PruneRun for what it does not hold
    (file sizes, --bench latency, output, command line). The HTML, the JSON report and the terminal
    summary show the same figures; without a PruneRun those parts are absent or marked so."""
    from rich.console import Console

    from onnxprune.deploy.timing import Latency
    from onnxprune.report.html import prune_html
    from onnxprune.report.text import print_summary, summary_dict
    from onnxprune.results import PruneRun

    result = onnxprune.prune(small_model(), flops=0.5)
    run = PruneRun(file_bytes=(4000, 1500), latency=(Latency(2.0, 2.2, 30, cv=0.01), Latency(0.8, 0.9, 30, cv=0.02)),
                   backend="ort-cpu", output="out.onnx", command=["onnxprune", "small.onnx", "--flops", "0.5"])
    page = Page(prune_html(result, run))
    summary = {row[""]: row for row in page.rows("summary")}
    assert summary["file size"]["before"] == "4KB" and summary["file size"]["after"] == "1.5KB"
    assert float(summary["file size"]["after / before"]) == 0.375
    assert float(summary["FLOPs"]["after / before"]) == pytest.approx(result.flops_ratio, abs=5e-4)
    assert [r["speedup"] for r in page.rows("latency-table")] == ["1.00x", "2.50x"]
    assert page.pres["command"] == "onnxprune small.onnx --flops 0.5"
    report = json.loads(json.dumps(summary_dict(result, run)))  # what --report writes, less the plan
    assert report["file_bytes"] == {"dense": 4000, "pruned": 1500, "ratio": 0.375}
    assert report["latency_ms"]["speedup"] == 2.5 and report["latency_ms"]["cv"] == [0.01, 0.02]
    assert report["output"] == "out.onnx" and report["fidelity"]["measured"] is False
    out = io.StringIO()
    print_summary(Console(file=out, width=200), result, run)
    assert "2.50x faster" in out.getvalue() and "file size" in out.getvalue()

    bare = Page(prune_html(result))  # from Python: no run recorded
    assert "file size" not in {row[""] for row in bare.rows("summary")} and "latency-table" not in bare.tables
    assert bare.pres["command"].startswith("(not recorded")
    assert set(summary_dict(result)) == set(result.to_dict())


def test_html_escapes_names(tmp_path):
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name='<b>"c1"&'))
    net.head(h, 8)
    onnx.save(net.model(), str(tmp_path / "odd.onnx"))
    result = onnxprune.prune(str(tmp_path / "odd.onnx"), flops=0.6)
    onnxprune.to_html(result, tmp_path / "odd.html")
    text = (tmp_path / "odd.html").read_text()
    assert "<b>" not in text and "&lt;b&gt;&quot;c1&quot;&amp;.w" in text
    page = Page(text)
    assert page.rows("channels-table")[0]["group (first weight)"] == '<b>"c1"&.w'
    assert page.pres["command"].startswith("(not recorded")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.html", "odd.onnx"], "no temp file left"


def test_sweep_html_three_points(tmp_path):
    onnx.save(sweep_model(), str(tmp_path / "net.onnx"))
    proc = cli("sweep", "net.onnx", "--flops", "0.9", "0.7", "0.5", "--out", "out", "--html", "out/sweep.html",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "sweep.html").read_text()
    page = Page(text)
    assert_self_contained(text, page)
    assert len(page.pngs()) == 1
    rows = page.rows("sweep-table")
    assert [float(r["target"]) for r in rows] == [0.9, 0.7, 0.5]
    ratios = [float(r["FLOPs ratio"]) for r in rows]
    assert all(r <= t + 1e-9 for r, t in zip(ratios, (0.9, 0.7, 0.5), strict=True))
    assert ratios[0] > ratios[1] > ratios[2], "FLOPs fall with the target"
    csv_ratios = [float(line.split(",")[1]) for line in (tmp_path / "out" / "sweep.csv").read_text().splitlines()[1:]]
    assert ratios == pytest.approx(csv_ratios, abs=5e-5)
    assert page.pres["command"].startswith("onnxprune sweep net.onnx --flops 0.9 0.7 0.5")


def test_analyze_html(tmp_path):
    onnx.save(small_model(), str(tmp_path / "small.onnx"))
    proc = cli("analyze", "small.onnx", "--html", "a.html", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    text = (tmp_path / "a.html").read_text()
    page = Page(text)
    assert_self_contained(text, page)
    groups = page.rows("groups-table")
    assert [int(g["channels"]) for g in groups] == [8, 6]
    assert float(groups[0]["FLOPs share"].rstrip("%")) > float(groups[1]["FLOPs share"].rstrip("%")) > 0
    assert sum(int(r["groups"]) for r in page.rows("classes-table")) == 2
    assert {r["why"] for r in page.rows("frozen-table")} == {"graph input", "graph output"}


def test_html_path_is_checked_before_any_work(tmp_path):
    onnx.save(small_model(), str(tmp_path / "small.onnx"))
    before = snapshot(tmp_path)
    for args in (["small.onnx", "--flops", "0.5", "--html", "small.onnx", "--force"],
                 ["small.onnx", "--flops", "0.5", "--html", "nowhere/r.html"],
                 ["analyze", "small.onnx", "--html", "small.onnx"],
                 ["sweep", "small.onnx", "--flops", "0.5", "--html", "nowhere/s.html"]):
        assert_one_line_error(cli(*args, cwd=tmp_path), USAGE)
        assert snapshot(tmp_path) == before, args


# --- command-line conventions ------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Path:
    onnx.save(small_model(), str(tmp_path / "small.onnx"))
    return tmp_path / "small.onnx"


def test_quiet_prints_nothing_on_any_command(small, tmp_path):
    for args in (["analyze", small, "-q"], ["sweep", small, "--flops", "0.8", "-q"],
                 [small, "--flops", "0.5", "-q"]):
        proc = cli(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "" and proc.stderr == "", args


def test_verbose_logs_the_stages_on_stderr(small, tmp_path):
    plain = cli(small, "--flops", "0.5", "--no-latency", "-o", "a.onnx", cwd=tmp_path)
    assert "INFO" not in plain.stderr
    proc = cli(small, "--flops", "0.5", "--no-latency", "-o", "b.onnx", "-v", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = [line for line in proc.stderr.splitlines() if line.startswith("INFO ")]
    for stage in ("finding coupled channel groups", "rewriting the graph", "verifying", "writing the pruned model"):
        assert any(stage in line for line in info), (stage, proc.stderr)
    assert "DEBUG" not in proc.stderr
    assert "onnxprune summary" in proc.stdout and "INFO" not in proc.stdout, "logs go to stderr only"
    debug = cli("analyze", small, "-vv", cwd=tmp_path)
    assert any(line.startswith("DEBUG ") for line in debug.stderr.splitlines()), debug.stderr


def test_quiet_and_verbose_together_is_a_usage_error(small, tmp_path):
    assert_one_line_error(cli(small, "--flops", "0.5", "-q", "-v", cwd=tmp_path), USAGE)


def test_colour_follows_no_color_and_force_color(small, tmp_path):
    piped = run_cli("analyze", small, cwd=tmp_path)
    forced = run_cli("analyze", small, cwd=tmp_path, env={"FORCE_COLOR": "1"})
    both = run_cli("analyze", small, cwd=tmp_path, env={"FORCE_COLOR": "1", "NO_COLOR": "yes"})
    for proc in (piped, forced, both):
        assert proc.returncode == 0, proc.stderr
    assert not ANSI.search(piped.stdout), "no colour when stdout is not a terminal"
    assert ANSI.search(forced.stdout), "FORCE_COLOR turns it on"
    assert not ANSI.search(both.stdout + both.stderr), "NO_COLOR wins"
    assert "2 prunable groups" in both.stdout


@pytest.mark.parametrize("command", [[], ["analyze"], ["sweep"]])
def test_help_has_examples_and_exit_codes(command, tmp_path):
    proc = cli(*command, "--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    examples = proc.stdout.split("examples:\n", 1)[1]
    assert examples.lstrip().startswith(" ".join(["onnxprune", *command]))
    codes = proc.stdout.split("exit codes:\n", 1)[1]
    assert all(f"  {code} " in codes for code in (0, 1, 2, 130))
    for option in ("-q, --quiet", "-v, --verbose", "--version", "--html"):
        assert option in proc.stdout
    if not command:
        listed = proc.stdout.split("commands", 1)[1].split("\n\n", 1)[0]
        assert "analyze" in listed and "sweep" in listed


@pytest.mark.parametrize("command", [[], ["analyze"], ["sweep"]])
def test_version_on_every_command(command, tmp_path):
    proc = cli(*command, "--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"onnxprune {onnxprune.__version__}"
