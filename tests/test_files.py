"""Files, second round (issue 18 §1 and the paths of §2): every file the input names is the input,
a symlinked output gets its model and data file where it points, a killed run leaves nothing for
good, a vanished folder is not made again, disks that are full, read-only or take no long names
are one line before the work where possible, and paths that are no file paths are refused.

Refusals run the command in this process (``onnxprune.cli.main``: no interpreter start-up per
case); the disk tests mount real small tmpfs filesystems where the test runs as root, and skip
with the reason elsewhere. The signal tests (SIGINT, SIGTERM) are in test_outputs.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from helpers import feed_of, save_external, small_model, snapshot, wide_model

import onnxprune
import onnxprune.cli
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.outputs import STAGE_PREFIX, OutputSet, model_data_files, write_atomic

PRUNE = ["--flops", "0.5"]


def _run(args: list[str], cwd: Path, monkeypatch, capsys, quiet: bool = True) -> tuple[int, str, str]:
    """The command line in this process, in ``cwd``: (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("NO_COLOR", "1")
    capsys.readouterr()
    code = onnxprune.cli.main([*map(str, args), *(["-q"] if quiet else [])])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(result: tuple[int, str, str], code: int) -> str:
    got, out, err = result
    assert (got, out) == (code, ""), result
    assert len(err.splitlines()) == 1 and err.startswith("onnxprune: error: "), err
    assert "internal error" not in err and "Traceback" not in err, err
    return err.strip()


def _save_with_data(model: onnx.ModelProto, path: Path, location: str) -> None:
    """Save with every weight in an external data file of any name (beside the model)."""
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0)


def _loads_and_runs(path: Path) -> None:
    onnx.checker.check_model(str(path))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed_of(onnx.load(str(path))))


# --- the input's external data files are the input --------------------------------------------


def _inputs_with_named_data(d: Path) -> None:
    _save_with_data(small_model(), d / "m.onnx", "weights.bin")
    (d / "sub").mkdir()
    _save_with_data(small_model(), d / "sub" / "n.onnx", "sweep.csv")  # a sweep writes sweep.csv there
    (d / "b").mkdir()
    _save_with_data(small_model(), d / "b" / "k.onnx", "done.json")  # a batch writes done.json there
    (d / "man.yaml").write_text("models: [b/k.onnx]\nflops: [0.5]\n")
    _save_with_data(small_model(), d / "p.onnx", "out.onnx.data")  # the data file of the output out.onnx
    (d / "link.onnx").symlink_to("weights.bin")


NAMED_DATA = {
    "-o": ["m.onnx", *PRUNE, "-o", "weights.bin"],
    "--report": ["m.onnx", *PRUNE, "-o", "o.onnx", "--report", "weights.bin"],
    "--html": ["m.onnx", *PRUNE, "-o", "o.onnx", "--html", "./sub/../weights.bin"],
    "analyze --json": ["analyze", "m.onnx", "--json", "weights.bin"],
    "bench --json": ["bench", "m.onnx", "--json", "weights.bin"],
    "a file of a sweep folder": ["sweep", "sub/n.onnx", "--flops", "0.8", "--out", "sub"],
    "a file of a batch folder (a model of the manifest)": ["batch", "man.yaml", "--out", "b"],
    "the output's data file": ["p.onnx", *PRUNE, "-o", "out.onnx"],
    "an output symlinked to it": ["m.onnx", *PRUNE, "-o", "link.onnx"],
}


def test_every_file_the_input_names_is_never_an_output_even_with_force(tmp_path: Path, monkeypatch, capsys):
    """Weights in weights.bin (or any name): no output of any command may be that file, --force or
    not; refused before any work, nothing touched."""
    _inputs_with_named_data(tmp_path)
    before = snapshot(tmp_path)
    for case, args in NAMED_DATA.items():
        line = _one_line(_run([*args, "--force"], tmp_path, monkeypatch, capsys), 2)
        assert "weights file" in line and "of the input" in line, (case, line)
        assert snapshot(tmp_path) == before, case


def test_model_data_files_reads_every_location_without_the_weights(tmp_path: Path):
    (tmp_path / "w").mkdir()
    _save_with_data(small_model(), tmp_path / "m.onnx", "w/weights.bin")
    assert model_data_files(tmp_path / "m.onnx") == [tmp_path / "w" / "weights.bin"]
    onnx.save_model(small_model(), str(tmp_path / "inline.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    os.mkfifo(tmp_path / "fifo.onnx")  # never opened: it would block
    for name in ("inline.onnx", "junk.onnx", "fifo.onnx", "missing.onnx"):
        assert model_data_files(tmp_path / name) == [], name


# --- symlinks ------------------------------------------------------------------------------------


def test_a_symlinked_output_gets_model_and_data_file_where_it_points(tmp_path: Path, monkeypatch, capsys):
    """-o latest.onnx -> v3.onnx writes v3.onnx and the v3.onnx.data it names; a dangling link
    too; result.save through a link as well. Each loads and runs (through a link into another
    folder only from where it points: onnx looks for the data beside the path it opens, and the
    run says so)."""
    save_external(wide_model(), tmp_path / "in.onnx")
    (tmp_path / "latest.onnx").symlink_to("v3.onnx")
    (tmp_path / "next.onnx").symlink_to("models/v4.onnx")  # dangling: v4.onnx does not exist yet
    (tmp_path / "models").mkdir()
    for link, target, force in (("latest.onnx", "v3.onnx", []), ("latest.onnx", "v3.onnx", ["--force"]),
                                ("next.onnx", "models/v4.onnx", [])):
        code, out, err = _run(["in.onnx", *PRUNE, "-o", link, *force], tmp_path, monkeypatch, capsys, quiet=False)
        assert code == 0 and f"wrote {link}" in out, err
        assert ("links into another folder" in err) == ("/" in target), err
        model = onnx.load(str(tmp_path / target), load_external_data=False)
        assert model_data_files(tmp_path / target) == [tmp_path / f"{target}.data"]
        assert (tmp_path / link).is_symlink(), "the link stays a link"
        _loads_and_runs(tmp_path / (link if "/" not in target else target))
        assert model.graph.initializer
    assert not (tmp_path / "latest.onnx.data").exists() and not (tmp_path / "next.onnx.data").exists()

    result = onnxprune.prune(tmp_path / "in.onnx", flops=0.5)
    (tmp_path / "api.onnx").symlink_to("api_target.onnx")
    result.save(tmp_path / "api.onnx")
    assert (tmp_path / "api_target.onnx.data").is_file() and not (tmp_path / "api.onnx.data").exists()
    _loads_and_runs(tmp_path / "api.onnx")


# --- killed runs ---------------------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import sys, time
    from onnxprune.outputs import OutputSet
    out = OutputSet()
    out.claim(sys.argv[1], "output")
    out.stage(sys.argv[1]).write_bytes(b"half a model")
    print("staged", flush=True)
    time.sleep(120)
""")


def _holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    return proc


def test_a_run_killed_outright_leaves_nothing_for_good(tmp_path: Path):
    """SIGKILL while the outputs are staged: the staging folder and the lock stay, named so that the
    next run writing to that folder removes them; a live run's are left alone."""
    dead, alive = _holder(tmp_path / "out.onnx"), _holder(tmp_path / "other.onnx")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert f".out.onnx{onnxprune.outputs.LOCK_SUFFIX}" in left
    assert any(n.startswith(f"{STAGE_PREFIX}{dead.pid}-") for n in left), left
    try:
        with OutputSet() as out:
            out.claim(tmp_path / "third.json", "JSON")
            now = sorted(p.name for p in tmp_path.iterdir())
        assert not any(n.startswith(f"{STAGE_PREFIX}{dead.pid}-") for n in now), now
        assert f".out.onnx{onnxprune.outputs.LOCK_SUFFIX}" not in now
        assert any(n.startswith(f"{STAGE_PREFIX}{alive.pid}-") for n in now), "a live run's staging stays"
        assert f".other.onnx{onnxprune.outputs.LOCK_SUFFIX}" in now
        with pytest.raises(UsageError, match="another onnxprune run is writing"):
            OutputSet().claim(tmp_path / "other.onnx", "output")
    finally:
        alive.kill()
        alive.wait()
    with OutputSet(force=True) as out:
        out.claim(tmp_path / "out.onnx", "output")
    assert os.listdir(tmp_path) == []


# --- a folder that vanished ------------------------------------------------------------------------


def test_a_folder_removed_during_the_run_is_not_made_again(tmp_path: Path):
    folder = tmp_path / "d"
    for when in ("before staging", "after staging"):
        folder.mkdir()
        with OutputSet() as out, pytest.raises(OnnxPruneError, match=r"d was removed during the run; nothing"):
            out.claim(folder / "out.onnx", "output")
            if when == "after staging":
                out.stage(folder / "out.onnx").write_text("x")
                shutil.rmtree(folder)
            else:
                shutil.rmtree(folder)
                out.stage(folder / "out.onnx").write_text("x")
            out.publish()
        assert not folder.exists(), when
    # a folder the run claimed as new is made; one that existed and vanished is not
    with OutputSet() as out:
        (file,) = out.claim_folder(tmp_path / "sw", ["sweep.csv"])
        out.stage(file).write_text("a,b\n")
        assert out.publish() == [file] and file.read_text() == "a,b\n"
    with OutputSet(force=True) as out, pytest.raises(OnnxPruneError, match="sw was removed during the run"):
        (file,) = out.claim_folder(tmp_path / "sw", ["sweep.csv"])
        out.stage(file).write_text("new")
        shutil.rmtree(tmp_path / "sw")
        out.publish()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("moment", ["writing the pruned model", "writing the JSON report"])
def test_the_command_says_its_output_folder_vanished(moment: str, tmp_path: Path, monkeypatch, capsys):
    """Removed before the model is staged, or after (the writers then find no staging folder)."""
    save_external(wide_model(), tmp_path / "in.onnx")
    (tmp_path / "out").mkdir()
    real_stages = onnxprune.cli._stages

    @contextlib.contextmanager
    def stages(io, quiet, first):
        with real_stages(io, quiet, first) as progress:
            def step(message: str) -> None:
                if message.startswith(moment):
                    shutil.rmtree(tmp_path / "out")  # someone cleans up while the run works
                progress(message)
            yield step

    monkeypatch.setattr(onnxprune.cli, "_stages", stages)
    args = ["in.onnx", *PRUNE, "-o", "out/small.onnx", "--report", "out/r.json"]
    line = _one_line(_run(args, tmp_path, monkeypatch, capsys), 1)
    assert "output folder out was removed during the run; nothing was written" in line
    assert sorted(os.listdir(tmp_path)) == ["in.onnx", "in.onnx.data"]


# --- disks: full, read-only, short names -------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(folder: Path, *options: str) -> Iterator[Path]:
    """A real small filesystem at ``folder`` (root only; skips with the reason elsewhere)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    folder.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_is_one_line_and_refused_up_front_when_it_can_be_seen(tmp_path: Path, monkeypatch, capsys):
    """16 KiB free for a model that needs about 25 KB: refused before the work (exit 2). 40 KiB: the
    model fits, the HTML report does not: the real ENOSPC is one line naming it (exit 1), and
    nothing is left on the disk."""
    save_external(wide_model(), tmp_path / "in.onnx")  # 44 KB of weights; --flops 0.5 keeps about 57%
    with _tmpfs(tmp_path / "tiny", "size=16k"):
        line = _one_line(_run(["in.onnx", *PRUNE, "-o", "tiny/out.onnx"], tmp_path, monkeypatch, capsys), 2)
        assert "not enough free space in" in line and "tiny" in line, line
        assert os.listdir(tmp_path / "tiny") == []
    with _tmpfs(tmp_path / "small", "size=40k"):
        args = ["in.onnx", *PRUNE, "-o", "small/out.onnx", "--report", "small/r.json", "--html", "small/r.html"]
        line = _one_line(_run(args, tmp_path, monkeypatch, capsys), 1)
        assert "cannot write small/r.html: No space left on device; nothing was written" in line, line
        assert os.listdir(tmp_path / "small") == []


def test_a_file_size_limit_is_one_line(tmp_path: Path):
    """EFBIG from RLIMIT_FSIZE (a real limit, in a child process; no root needed)."""
    code = textwrap.dedent(f"""
        import resource
        from onnxprune.errors import OnnxPruneError
        from onnxprune.outputs import write_atomic
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_atomic({str(tmp_path / 'big.bin')!r}, lambda tmp: tmp.write_bytes(bytes(100_000)))
        except OnnxPruneError as exc:
            print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.strip() == f"cannot write {tmp_path / 'big.bin'}: File too large; nothing was written"
    assert os.listdir(tmp_path) == []


def test_a_read_only_filesystem_is_refused_before_the_work(tmp_path: Path, monkeypatch, capsys):
    small_model_path = tmp_path / "s.onnx"
    onnx.save_model(small_model(), str(small_model_path))
    with _tmpfs(tmp_path / "ro", "size=1m", "ro"):
        for args in (["s.onnx", *PRUNE, "-o", "ro/out.onnx"], ["s.onnx", *PRUNE, "--report", "ro/r.json"],
                     ["sweep", "s.onnx", "--flops", "0.8", "--out", "ro/sw"]):
            line = _one_line(_run(args, tmp_path, monkeypatch, capsys), 2)
            assert "is not writable (Read-only file system)" in line, line
    assert sorted(os.listdir(tmp_path)) == ["ro", "s.onnx"]


def test_names_too_long_with_the_lock_file_are_refused_before_the_work(tmp_path: Path, monkeypatch, capsys):
    """245 bytes is a legal name, but not with the 16 of its lock file's name beside it."""
    onnx.save_model(small_model(), str(tmp_path / "s.onnx"))
    name = "n" * 240 + ".onnx"
    for args in (["s.onnx", *PRUNE, "-o", name], ["s.onnx", *PRUNE, "--report", name],
                 ["analyze", "s.onnx", "--html", name], ["sweep", "s.onnx", "--flops", "0.8", "--out", "x" * 245]):
        line = _one_line(_run(args, tmp_path, monkeypatch, capsys), 2)
        assert "file name too long (261 bytes with the 16 bytes of its lock file's name; the filesystem allows" \
               " 255)" in line, line
    assert os.listdir(tmp_path) == ["s.onnx"]


# --- paths that are no paths -------------------------------------------------------------------------

NO_PATHS = {
    "model ''": (["", *PRUNE], "model path is empty"),
    "model .": ([".", *PRUNE], ".: is a directory"),
    "model /": (["/", *PRUNE], "/: is a directory"),
    "analyze ''": (["analyze", ""], "model path is empty"),
    "sweep /": (["sweep", "/", "--flops", "0.8"], "/: is a directory"),
    "bench ''": (["bench", ""], "model path is empty"),
    "batch ''": (["batch", ""], "manifest path is empty"),
    "-o ''": (["s.onnx", *PRUNE, "-o", ""], "output path is empty"),
    "-o -": (["s.onnx", *PRUNE, "-o", "-"], "does not write to stdout"),
    "-o dir/": (["s.onnx", *PRUNE, "-o", "new/"], "output new/ names a folder; give a file path"),
    "-o existing dir": (["s.onnx", *PRUNE, "-o", "d"], "output d is a directory"),
    "-o .": (["s.onnx", *PRUNE, "-o", "."], "names a folder"),
    "--report ''": (["s.onnx", *PRUNE, "--report", ""], "JSON report path is empty"),
    "--report -": (["s.onnx", *PRUNE, "--report", "-"], "does not write to stdout"),
    "--html d/": (["s.onnx", *PRUNE, "--html", "d/"], "HTML report d/ names a folder"),
    "analyze --json ''": (["analyze", "s.onnx", "--json", ""], "JSON path is empty"),
    "bench --json -": (["bench", "s.onnx", "--json", "-"], "does not write to stdout"),
    "sweep --out ''": (["sweep", "s.onnx", "--flops", "0.8", "--out", ""], "--out '': give an output folder"),
    "sweep --html ''": (["sweep", "s.onnx", "--flops", "0.8", "--html", ""], "HTML report path is empty"),
}


def test_paths_that_are_no_file_paths_are_one_usage_line(tmp_path: Path, monkeypatch, capsys):
    """'' would be '.', '-' is no stdout here, 'dir/' is a folder (refused: give the file's name)."""
    onnx.save_model(small_model(), str(tmp_path / "s.onnx"))
    (tmp_path / "d").mkdir()
    before = snapshot(tmp_path)
    for case, (args, needle) in NO_PATHS.items():
        line = _one_line(_run(args, tmp_path, monkeypatch, capsys), 2)
        assert needle in line, (case, line)
        assert snapshot(tmp_path) == before, case
    with pytest.raises(UsageError, match="path is empty"):
        write_atomic("", lambda tmp: tmp.write_text("x"))


def test_a_closed_stdout_or_stderr_still_writes_and_exits_0(tmp_path: Path):
    """`onnxprune m.onnx ... >&-` (or `2>&-`): Python's sys.stdout is None; the run still writes its
    model and exits 0 instead of an internal error about None.isatty."""
    onnx.save(small_model(), str(tmp_path / "m.onnx"))
    for fd, name in ((1, "out1.onnx"), (2, "out2.onnx")):
        code = subprocess.call([sys.executable, "-m", "onnxprune", "m.onnx", "--flops", "0.5", "-o", name],
                               cwd=tmp_path, stdin=subprocess.DEVNULL,
                               **({"stdout": subprocess.DEVNULL} if fd == 2 else {"stderr": subprocess.DEVNULL}),
                               pass_fds=(), preexec_fn=lambda fd=fd: os.close(fd))
        assert code == 0 and (tmp_path / name).is_file(), (fd, code)
