"""`memprobe snapshot check|import`, `probe --snapshot` and record_step, through the CLI."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memprobe.backends import cuda
from memprobe.backends.cuda import CudaBackend
from memprobe.core.config import make_step_config
from memprobe.core.errors import InvalidInputError
from memprobe.snapshots.record import record_step, sidecar_path
from tests.backends.test_cuda_backend import FakeRuntime, fake_step_runner
from tests.helpers import invoke
from tests.snapshot_helpers import load_shared, shared_trace, write_pickle

PROBE = ("probe", "--arch", "basicunet", "--patch", "32", "32", "32", "--batch", "1", "--device", "trace")


def test_check_reports_the_issue_fields_and_agrees_on_a_real_trace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = invoke(capsys, "snapshot", "check", str(shared_trace("MAGMA27")), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    for key in ("real_peak_reserved_bytes", "simulated_peak_reserved_bytes", "real_peak_allocated_bytes",
                "simulated_peak_allocated_bytes", "decision_agreement", "first_disagreement"):  # fmt: skip
        assert key in data
    assert data["real_peak_reserved_bytes"] == data["simulated_peak_reserved_bytes"] > 0
    assert data["decision_agreement"] == 1.0 and data["first_disagreement"] is None


def test_bad_snapshots_exit_2_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "cut.pickle").write_bytes(pickle.dumps(load_shared("MAGMA27"))[:5000])
    (tmp_path / "notes.txt").write_text("hello")
    for name in ("cut.pickle", "notes.txt", "missing.pickle"):
        result = invoke(capsys, "snapshot", "check", str(tmp_path / name))
        assert result.code == 2 and len(result.error_lines) == 1 and "Traceback" not in result.err, result.err


@pytest.fixture(scope="module")
def probe_snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A traced step written as a snapshot, and the probe's own measurement of it."""
    path = tmp_path_factory.mktemp("probe") / "step.pickle"
    out = tmp_path_factory.mktemp("probe") / "out.json"
    code = subprocess.run(
        [sys.executable, "-c", "from memprobe.cli.main import main; main()", *PROBE, "--snapshot", str(path), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert code.returncode == 0, code.stderr
    out.write_text(code.stdout)
    return path, json.loads(code.stdout)


def test_probe_snapshot_gives_back_the_probes_own_peaks(
    probe_snapshot: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, measured = probe_snapshot
    result = invoke(capsys, "snapshot", "check", str(path), "--json")
    data = json.loads(result.out)
    assert data["real_peak_reserved_bytes"] == measured["peak_reserved_bytes"]
    assert data["real_peak_allocated_bytes"] == measured["simulated_allocated_bytes"]
    assert data["simulated_snapshot"] is True and data["decision_agreement"] == 1.0


def test_probe_snapshot_frames_name_modules_and_phases(probe_snapshot: tuple[Path, dict[str, Any]]) -> None:
    data = pickle.loads(probe_snapshot[0].read_bytes())
    places = {
        entry["frames"][1]["filename"] for entry in data["device_traces"][0] if entry["action"] == "alloc"
    }
    assert {"forward", "backward", "optimizer"} & places and any("." in place for place in places)
    assert data["memprobe_simulated"] is True


@pytest.mark.parametrize("view", ["stats", "trace"])
def test_pytorchs_memory_viz_reads_the_exported_snapshot(
    probe_snapshot: tuple[Path, dict[str, Any]], view: str
) -> None:
    done = subprocess.run([sys.executable, "-m", "torch.cuda._memory_viz", view, str(probe_snapshot[0])],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        ("segments:" in done.stdout) if view == "stats" else ("alloc" in done.stdout or "MEM[" in done.stdout)
    )


def test_a_simulated_snapshot_is_refused_as_cuda_truth(
    probe_snapshot: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "db.sqlite"
    result = invoke(capsys, "snapshot", "import", str(probe_snapshot[0]), "--arch", "basicunet",
                    "--patch", "32", "32", "32", "--batch", "1", "--db", str(db))  # fmt: skip
    assert result.code == 2 and "trace backend" in result.err and not db.exists()


def test_probe_snapshot_refuses_a_folder_before_measuring(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = invoke(capsys, *PROBE, "--snapshot", str(tmp_path))
    assert result.code == 2 and "folder" in result.err and "measuring" not in result.err


def test_import_stores_a_real_run_as_a_cuda_measurement(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "db.sqlite"
    result = invoke(capsys, "snapshot", "import", str(shared_trace("medium_128_inference")), "--arch", "basicunet",
                    "--patch", "64", "64", "64", "--batch", "2", "--precision", "bf16-mixed", "--gpu", "NVIDIA H100",
                    "--gpu-memory", "80GiB", "--db", str(db), "--json")  # fmt: skip
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["reserved_source"] == "snapshot" and data["environment"]["device_kind"] == "cuda"
    assert data["peak_reserved_bytes"] == data["check"]["real_peak_reserved_bytes"]
    listed = invoke(capsys, "db", "measurements", "--db", str(db), "--json")
    rows = json.loads(listed.out)
    assert len(rows) == 1 and rows[0]["device_name"] == "NVIDIA H100"


def test_import_over_an_event_range_reads_that_span(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    whole = invoke(capsys, "snapshot", "import", str(shared_trace("medium_128_training")), "--arch", "basicunet",
                   "--patch", "64", "64", "64", "--batch", "2", "--db", str(tmp_path / "a.sqlite"), "--json")  # fmt: skip
    part = invoke(capsys, "snapshot", "import", str(shared_trace("medium_128_training")), "--arch", "basicunet",
                  "--patch", "64", "64", "64", "--batch", "2", "--db", str(tmp_path / "b.sqlite"), "--json",
                  "--from-event", "15000", "--to-event", "16000")  # fmt: skip
    assert whole.code == part.code == 0, part.err
    assert json.loads(part.out)["peak_allocated_bytes"] < json.loads(whole.out)["peak_allocated_bytes"]
    backwards = invoke(capsys, "snapshot", "import", str(shared_trace("medium_128_training")), "--arch",
                       "basicunet", "--patch", "64", "64", "64", "--batch", "2", "--db", str(tmp_path / "c.sqlite"),
                       "--from-event", "900", "--to-event", "100")  # fmt: skip
    assert backwards.code == 2 and not (tmp_path / "c.sqlite").exists()


class FakeHistory:
    """torch.cuda's memory history, faked: the 'recorded' step is one of the shared real traces."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self, max_entries: int) -> None:
        self.calls.append("start")

    def dump(self, path: str) -> None:
        self.calls.append("dump")
        write_pickle(Path(path), load_shared("medium_256_inference"))

    def stop(self) -> None:
        self.calls.append("stop")

    def synchronize(self) -> None:
        self.calls.append("sync")


def _fake_gpu() -> dict[str, Any]:
    return {"gpu": "Fake GPU 80GB", "gpu_memory_bytes": 80 << 30, "cuda_version": "12.4"}


def test_record_step_writes_the_snapshot_and_what_was_trained(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    history = FakeHistory()
    path = tmp_path / "step.pickle"
    with record_step(
        path,
        arch="basicunet",
        patch=(64, 64, 64),
        batch=2,
        precision="bf16-mixed",
        history=history,
        gpu_facts=_fake_gpu,
    ):
        pass
    assert history.calls == ["sync", "start", "sync", "dump", "stop"]
    assert json.loads(sidecar_path(path).read_text())["config"]["precision"] == "bf16-mixed"
    result = invoke(capsys, "snapshot", "import", str(path), "--db", str(tmp_path / "db.sqlite"), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["device_name"] == "Fake GPU 80GB" and data["batch"] == 2 and data["precision"] == "bf16-mixed"


def test_record_step_writes_nothing_when_the_step_fails(tmp_path: Path) -> None:
    history = FakeHistory()
    path = tmp_path / "step.pickle"
    with (
        pytest.raises(RuntimeError),
        record_step(path, arch="basicunet", patch=(64, 64, 64), batch=2, history=history),
    ):
        raise RuntimeError("the step failed")
    assert history.calls[-1] == "stop" and not path.exists() and not sidecar_path(path).exists()
    with (
        pytest.raises(InvalidInputError),
        record_step(path, arch="no-such-net", patch=(64, 64, 64), batch=2, history=history),
    ):
        pass


def test_cuda_probe_records_the_measured_step_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runtime = FakeRuntime(total_bytes=80 << 30)
    monkeypatch.setattr(cuda, "gc", type("gc", (), {"collect": staticmethod(lambda: None)}))
    events: list[str] = []
    runner = fake_step_runner(runtime)

    def step_runner(config: Any, device: Any, on_phase: Any, before_measured: Any) -> Any:
        def measured() -> None:
            events.append("measured step begins")
            before_measured()

        return runner(config, device, on_phase, measured)

    history = FakeHistory()
    backend = CudaBackend(runtime=runtime, step_runner=step_runner)
    backend.snapshot_path, backend.memory_history = str(tmp_path / "real.pickle"), history
    backend.measure(make_step_config("mednext", (128, 128, 128), 2))
    assert events == ["measured step begins"] and history.calls == ["start", "dump", "stop"]
    assert (tmp_path / "real.pickle").exists()


def test_a_plan_charges_the_gap_of_the_users_own_imported_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """With an imported real run of the same setup, the margin comes from it and says so."""
    from memprobe.store.database import Database
    from tests.helpers import make_calibration

    db = str(tmp_path / "db.sqlite")
    with Database.open(db) as database:
        database.add_calibration(make_calibration(per_voxel=1.0))  # about 0.1 GiB per sample at 128^3
    plan = ("suggest", "--arch", "mednext", "--patch", "128", "128", "128", "--gpu-mem", "80GiB",
            "--precision", "fp32", "--db", db, "--json")  # fmt: skip
    before = json.loads(invoke(capsys, *plan).out)["need"]["terms"][-1]
    assert "published runs" in before["source"]
    imported = invoke(capsys, "snapshot", "import", str(shared_trace("medium_128_inference")), "--arch", "mednext",
                      "--patch", "128", "128", "128", "--batch", "2", "--gpu", "NVIDIA H100 80GB HBM3", "--db", db)  # fmt: skip
    assert imported.code == 0, imported.err
    after = json.loads(invoke(capsys, *plan).out)["need"]["terms"][-1]
    assert (
        after["name"] == "margin"
        and "1 imported snapshot of mednext on NVIDIA H100 80GB HBM3" in after["source"]
    )
    # that run reserved 1.64 GiB, far more than this calibration predicts at batch 2: a larger gap is charged
    assert after["bytes"] > before["bytes"]


def test_snapshot_verify_traces_each_imported_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = str(tmp_path / "db.sqlite")
    empty = invoke(capsys, "snapshot", "verify", "--db", db, "--json")
    assert empty.code == 0 and json.loads(empty.out) == [] and not Path(db).exists()
    invoke(capsys, "snapshot", "import", str(shared_trace("medium_128_inference")), "--arch", "basicunet",
           "--patch", "32", "32", "32", "--batch", "1", "--gpu", "NVIDIA H100", "--db", db)  # fmt: skip
    result = invoke(capsys, "snapshot", "verify", "--db", db, "--json")
    assert result.code == 0, result.err
    [row] = json.loads(result.out)
    assert (
        row["gpu"] == "NVIDIA H100" and row["cuda_reserved_bytes"] > 0 and row["simulated_reserved_bytes"] > 0
    )
    assert row["reserved_error"] == pytest.approx(
        row["simulated_reserved_bytes"] / row["cuda_reserved_bytes"] - 1
    )
