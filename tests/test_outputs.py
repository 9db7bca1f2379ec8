"""No run destroys, leaves behind or misreports a file (onnxprune/outputs.py and the commands).

Every command claims its outputs before any work and publishes them together at the end. These
tests run the real command line (in a subprocess, or in-process where a fault is injected) on real
models and look at the files on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from helpers import USAGE, assert_one_line_error, cli, save_external, small_model, snapshot, wide_model

import onnxprune.cli
import onnxprune.outputs
from onnxprune.outputs import OutputSet

PRUNE = ["--flops", "0.5"]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "in.onnx"
    save_external(wide_model(), path)
    return path


# --- refused before any work ---------------------------------------------------------------------

CLASHES = {
    "report is the output": (["-o", "out.onnx", "--report", "out.onnx"], "also the output"),
    "HTML is the output": (["-o", "out.onnx", "--html", "./sub/../out.onnx"], "also the output"),
    "HTML is the report": (["-o", "out.onnx", "--report", "r.json", "--html", "r.json"], "also the JSON report"),
    "report is the output's data file": (["-o", "out.onnx", "--report", "out.onnx.data"], "also the output"),
    "output is the input's data file": (["-o", "in.onnx.data", "--force"], "weights file in.onnx.data of the input"),
}


@pytest.mark.parametrize("case", list(CLASHES))
def test_outputs_that_clash_are_refused_before_any_work(case: str, model: Path, tmp_path: Path):
    (tmp_path / "sub").mkdir()
    args, needle = CLASHES[case]
    before = snapshot(tmp_path)
    line = assert_one_line_error(cli(model.name, *PRUNE, *args, cwd=tmp_path), USAGE)
    assert needle in line, line
    assert snapshot(tmp_path) == before


def test_sweep_html_named_like_a_sweep_file_is_refused(model: Path, tmp_path: Path):
    before = snapshot(tmp_path)
    line = assert_one_line_error(cli("sweep", model.name, "--flops", "0.8", "--out", "sw", "--html", "sw/sweep.csv",
                                     cwd=tmp_path), USAGE)
    assert "sweep.csv" in line
    assert snapshot(tmp_path) == before


def test_fifo_and_character_device_are_refused_even_with_force(model: Path, tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target, kind in ((fifo, "FIFO"), (Path("/dev/null"), "character device")):
        for args in ([model.name, *PRUNE, "-o", str(target), "--force"],
                     [model.name, *PRUNE, "-o", "out.onnx", "--report", str(target), "--force"],
                     ["analyze", model.name, "--json", str(target), "--force"],
                     ["bench", model.name, "--json", str(target), "--force", "--runs", "1"]):
            line = assert_one_line_error(cli(*args, cwd=tmp_path), USAGE)
            assert kind in line and "regular file" in line, line
    assert fifo.is_fifo() and Path("/dev/null").is_char_device()
    assert not (tmp_path / "out.onnx").exists()


def test_existing_data_file_of_the_output_needs_force(model: Path, tmp_path: Path):
    data = tmp_path / "out.onnx.data"
    data.write_bytes(b"someone else's weights")
    line = assert_one_line_error(cli(model.name, *PRUNE, "-o", "out.onnx", cwd=tmp_path), USAGE)
    assert "out.onnx.data exists" in line and "--force" in line
    assert data.read_bytes() == b"someone else's weights" and not (tmp_path / "out.onnx").exists()
    proc = cli(model.name, *PRUNE, "-o", "out.onnx", "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    onnx.checker.check_model(str(tmp_path / "out.onnx"))  # its weights are in the new out.onnx.data


# One rule for every file a command writes: an existing one needs --force.
EXISTING = {
    "--report": ("r.json", lambda m: [m, *PRUNE, "-o", "out.onnx", "--report", "r.json"]),
    "--html": ("r.html", lambda m: [m, *PRUNE, "-o", "out.onnx", "--html", "r.html"]),
    "analyze --json": ("a.json", lambda m: ["analyze", m, "--json", "a.json"]),
    "analyze --html": ("a.html", lambda m: ["analyze", m, "--html", "a.html"]),
    "bench --json": ("b.json", lambda m: ["bench", m, "--json", "b.json", "--runs", "1", "--min-seconds", "0",
                                          "--warmup", "0"]),
    "sweep folder": ("sw/old.txt", lambda m: ["sweep", m, "--flops", "0.8", "--out", "sw"]),
    "sweep --html": ("s.html", lambda m: ["sweep", m, "--flops", "0.8", "--out", "sw", "--html", "s.html"]),
}


@pytest.mark.parametrize("case", list(EXISTING))
def test_every_existing_output_needs_force(case: str, model: Path, tmp_path: Path):
    name, args = EXISTING[case]
    existing = tmp_path / name
    existing.parent.mkdir(exist_ok=True)
    existing.write_text("keep me")
    before = snapshot(tmp_path)
    line = assert_one_line_error(cli(*args(model.name), cwd=tmp_path), USAGE)
    assert "--force" in line, line
    assert snapshot(tmp_path) == before
    proc = cli(*args(model.name), "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    if existing.suffix != ".txt":  # a sweep folder keeps files it does not write
        assert existing.read_text() != "keep me"


# --- what is reported --------------------------------------------------------------------------


def test_file_size_ratio_counts_external_data_on_both_sides(tmp_path: Path):
    """The dense model keeps its weights in a file of another name than <model>.data."""
    onnx.save_model(wide_model(), str(tmp_path / "in.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    dense = (tmp_path / "in.onnx").stat().st_size + (tmp_path / "weights.bin").stat().st_size
    proc = cli("in.onnx", *PRUNE, "-o", "out.onnx", "--report", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sizes = json.loads((tmp_path / "r.json").read_text())["file_bytes"]
    pruned = sum(p.stat().st_size for p in tmp_path.glob("out.onnx*"))
    assert sizes["dense"] == dense and sizes["pruned"] == pruned
    assert 0.2 < sizes["ratio"] < 1.0, sizes  # was 20x and more when only the dense .onnx was counted


def test_piped_tables_are_not_cut_at_80_columns(model: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([sys.executable, "-m", "onnxprune.cli", "bench", model.name, model.name, "--runs", "2",
                           "--min-seconds", "0", "--warmup", "0"], cwd=tmp_path, env={**env, "NO_COLOR": "1"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout, proc.stdout
    assert max(map(len, proc.stdout.splitlines())) > 80
    assert "samples/s" in proc.stdout and "vs first" in proc.stdout


def test_quiet_success_prints_nothing_at_all(model: Path, tmp_path: Path):
    """Not a word from onnx-graphsurgeon ("[W] ..."), onnxruntime or numpy warnings either."""
    for args in ([model.name, *PRUNE, "-q"], ["analyze", model.name, "-q"],
                 ["sweep", model.name, "--flops", "0.7", "-q"]):
        proc = cli(*args, cwd=tmp_path)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), args


def test_graphsurgeon_messages_go_to_the_debug_log_not_stdout(capsys, caplog):
    import logging

    import onnx_graphsurgeon as gs

    import onnxprune.graph.load  # noqa: F401  (routes graphsurgeon's logger)

    with caplog.at_level(logging.DEBUG, logger="onnxprune.libraries"):
        gs.logger.G_LOGGER.warning("colored module is not installed")
    assert capsys.readouterr().out == ""
    assert "colored module is not installed" in caplog.text


# --- two runs at once --------------------------------------------------------------------------


def test_a_second_run_writing_the_same_output_is_refused(model: Path, tmp_path: Path):
    with OutputSet(force=True) as first:
        first.claim_model(tmp_path / "out.onnx")
        line = assert_one_line_error(cli(model.name, *PRUNE, "-o", "out.onnx", "--force", cwd=tmp_path), USAGE)
        assert "another onnxprune run is writing out.onnx" in line
        line = assert_one_line_error(cli("sweep", model.name, "--flops", "0.8", "--out", "sw", "--html",
                                         "out.onnx", cwd=tmp_path), USAGE)
        assert "another onnxprune run" in line
    assert not list(tmp_path.glob(".*lock")), "locks are removed"
    proc = cli(model.name, *PRUNE, "-o", "out.onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_two_real_runs_at_once_one_wins_and_its_report_is_true(model: Path, tmp_path: Path):
    env = {**os.environ, "NO_COLOR": "1"}
    runs = [subprocess.Popen([sys.executable, "-m", "onnxprune.cli", model.name, "--flops", flops, "-o", "out.onnx",
                              "--force", "--report", f"r{flops}.json"], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for flops in ("0.5", "0.7")]
    codes = [run.wait(timeout=300) for run in runs]
    errors = [run.stderr.read() for run in runs]
    assert sorted(codes) in ([0, 0], [0, 2]), (codes, errors)
    for code, err in zip(codes, errors, strict=True):
        assert code == 0 or "another onnxprune run is writing" in err
    # whichever published last, the model on disk is the one the newest report describes
    reports = sorted(tmp_path.glob("r*.json"), key=lambda p: p.stat().st_mtime)
    assert json.loads(reports[-1].read_text())["flops"]["ratio"] == pytest.approx(
        onnxprune.measure_costs(tmp_path / "out.onnx").flops / onnxprune.measure_costs(model).flops, rel=1e-6)


def test_a_killed_run_does_not_block_the_next(model: Path, tmp_path: Path):
    """flock dies with its process: a stale lock file is no lock."""
    code = ("import sys, time; from onnxprune.outputs import OutputSet; o = OutputSet(); "
            f"o.claim({str(tmp_path / 'out.onnx')!r}, 'output'); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert assert_one_line_error(cli(model.name, *PRUNE, "-o", "out.onnx", cwd=tmp_path), USAGE)
    holder.kill()
    holder.wait()
    assert (tmp_path / ".out.onnx.onnxprune-lock").exists()  # left by the killed run
    proc = cli(model.name, *PRUNE, "-o", "out.onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


# --- a fault or an interrupt at every step: all outputs or none, and the message says which ------

COMMANDS = {
    "prune": ["in.onnx", *PRUNE, "-o", "out.onnx", "--report", "r.json", "--html", "r.html"],
    "analyze": ["analyze", "in.onnx", "--json", "a.json", "--html", "a.html"],
    "sweep": ["sweep", "in.onnx", "--flops", "0.8", "0.6", "--out", "sw", "--save-models", "--html", "s.html"],
    "bench": ["bench", "in.onnx", "--json", "b.json", "--runs", "2", "--min-seconds", "0", "--warmup", "0"],
}


class _Injector:
    """Counts the steps of a run (each pipeline stage, each staged write, each rename into place)
    and, at step ``at``, raises ``fault``; a rename gets a real SIGINT instead, which publish holds
    back until every output is in place."""

    def __init__(self, at: int | None, fault: type[BaseException]) -> None:
        self.at, self.fault, self.steps = at, fault, 0

    def tick(self, renaming: bool = False) -> None:
        self.steps += 1
        if self.steps != self.at:
            return
        if renaming and self.fault is KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs between bytecodes, inside publish
        else:
            raise self.fault("injected")


def _run_injected(args: list[str], folder: Path, injector: _Injector, monkeypatch, capsys) -> tuple[int, str]:
    real_stages, real_stage, real_replace = onnxprune.cli._stages, OutputSet.stage, onnxprune.outputs._replace

    @contextlib.contextmanager
    def stages(io, quiet, first):
        with real_stages(io, quiet, first) as progress:
            injector.tick()

            def step(message: str) -> None:
                injector.tick()
                progress(message)
            yield step

    def stage(self, path):
        injector.tick()
        return real_stage(self, path)

    def replace(src, dst):
        injector.tick(renaming=True)
        real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(onnxprune.cli, "_stages", stages)
        patch.setattr(OutputSet, "stage", stage)
        patch.setattr(onnxprune.outputs, "_replace", replace)
        patch.chdir(folder)
        capsys.readouterr()
        code = onnxprune.cli.main([*args, "-q"])
    return code, capsys.readouterr().err.strip()


def _outputs_of(args: list[str], folder: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(folder).items() if not k.startswith("in.onnx")}


def _complete(folder: Path, files: dict[str, str]) -> None:
    for name in files:
        path = folder / name
        if name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".onnx"):
            onnx.checker.check_model(str(path))
        elif name.endswith(".html"):
            assert path.read_text().rstrip().endswith("</html>")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_fault_or_interrupt_at_every_step_leaves_all_outputs_or_none(command: str, tmp_path: Path, monkeypatch,
                                                                         capsys):
    args = COMMANDS[command]
    clean = tmp_path / "clean"
    clean.mkdir()
    save_external(wide_model(), clean / "in.onnx")
    counter = _Injector(None, RuntimeError)
    code, err = _run_injected(args, clean, counter, monkeypatch, capsys)
    assert code == 0, err
    every = _outputs_of(args, clean)
    assert every and all(not k.startswith(".") for k in every), every
    _complete(clean, every)
    assert counter.steps >= 3, counter.steps  # stages, staged writes and renames were all seen
    for at in range(1, counter.steps + 1):
        for fault in (KeyboardInterrupt, RuntimeError):
            folder = tmp_path / f"{at}-{fault.__name__}"
            folder.mkdir()
            save_external(wide_model(), folder / "in.onnx")
            code, err = _run_injected(args, folder, _Injector(at, fault), monkeypatch, capsys)
            left = _outputs_of(args, folder)
            where = f"{command}, {fault.__name__} at step {at} of {counter.steps}: {err!r}, left {sorted(left)}"
            assert len(err.splitlines()) <= 1 and "Traceback" not in err, where
            if code == 0:
                assert left.keys() == every.keys(), where
            elif left:
                assert left.keys() == every.keys(), where  # all or none
                assert code == 130 and "interrupted after writing" in err, where
                _complete(folder, left)
            else:
                assert "nothing was written" in err or fault is RuntimeError and "internal error" in err, where
                assert "after writing" not in err, where
            assert code in (0, 1, 130), where


def _signal_at_moments(model: Path, tmp_path: Path, sig: signal.Signals, moments: tuple[float, ...]) -> None:
    """Run the installed command and send it ``sig`` at each moment (seconds after Python's own
    start-up): never an onnxprune traceback, and exit status, message and files agree."""
    outs = ["out.onnx", "out.onnx.data", "r.json"]
    env = {**os.environ, "NO_COLOR": "1"}
    code, word = (130, "interrupted") if sig == signal.SIGINT else (143, "terminated (SIGTERM)")
    # Python's own start-up (before any onnxprune code runs, where CPython itself reports an
    # interrupt with a traceback, or dies of SIGTERM) takes 20 ms on an idle machine and several
    # times that on a loaded one: the moments count from its end, measured now, so the first
    # still lands in onnxprune's imports, mostly.
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import onnxprune"], check=True)
    startup = time.perf_counter() - start
    reported = 0
    for delay in (startup + d for d in moments):
        for name in outs:
            (tmp_path / name).unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "onnxprune", model.name, *PRUNE, "-o", "out.onnx",
                                 "--report", "r.json", "-q"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(sig)
        err = proc.communicate(timeout=120)[1].strip()
        have = [n for n in outs if (tmp_path / n).exists()]
        where = f"after {delay}s: exit {proc.returncode}, {err!r}, files {have}"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], where
        if proc.returncode == -sig:  # the interpreter's own start-up, before onnxprune's first line ran
            frames = [line for line in err.splitlines() if line.strip().startswith("File ")]
            assert have == [] and all("<frozen " in f for f in frames), where
            continue
        assert "Traceback" not in err, where
        if proc.returncode == 0:
            assert have == outs and err == "", where
            continue
        assert proc.returncode == code, where
        assert (have == [] and err == f"onnxprune: {word}; nothing was written"
                or have == outs and f"{word} after writing" in err), where
        reported += 1
    assert reported, "no moment fell inside onnxprune's run"


def test_sigint_in_a_real_process_at_any_moment(model: Path, tmp_path: Path):
    """The installed command, interrupted by a real SIGINT at spread-out moments."""
    _signal_at_moments(model, tmp_path, signal.SIGINT, (0.05, 0.3, 0.8, 1.5, 2.5))


def test_sigterm_is_handled_as_ctrl_c(model: Path, tmp_path: Path):
    """SIGTERM (timeout, CI cancellation, docker stop): the same one line and files as Ctrl-C, exit
    143. A few moments: the imports, the work, late (the SIGINT test above covers more)."""
    _signal_at_moments(model, tmp_path, signal.SIGTERM, (0.1, 1.0, 2.5))


def test_api_writers_are_atomic_and_refuse_special_files(tmp_path: Path):
    from onnxprune.errors import UsageError
    from onnxprune.graph.load import save_model

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="FIFO"):
        save_model(small_model(), fifo)
    save_model(small_model(), tmp_path / "m.onnx")
    save_model(small_model(), tmp_path / "m.onnx")  # the API overwrites, like any file write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "m.onnx"]


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path):
    """The one writer behind engines, JSON, HTML and sweep files written from the API."""
    from onnxprune.errors import UsageError
    from onnxprune.outputs import write_atomic

    path = tmp_path / "model.engine"
    write_atomic(path, lambda tmp: tmp.write_bytes(b"engine bytes"))
    assert path.read_bytes() == b"engine bytes"
    write_atomic(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new"
    with pytest.raises(UsageError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "model.engine", lambda tmp: tmp.write_bytes(b"x"))
    with pytest.raises(ZeroDivisionError):
        write_atomic(path, lambda tmp: (tmp.write_bytes(b"half"), 1 / 0))
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine"], "no temporary file is left behind"
