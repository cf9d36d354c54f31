"""A save killed half-way leaves nothing behind once training starts again, `--resume` falls
back to the newest checkpoint that loads (saying which it skipped), and checkpoints are read
without unpickling anything."""

import logging
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from fiber_det.checkpoint import FiberCheckpointer
from tests.pickle_payload import RunsCode

KILLED_SAVE = textwrap.dedent(
    """
    import sys, time, torch
    from fiber_det.checkpoint import FiberCheckpointer

    model = torch.nn.Linear(2, 1)
    torch.nn.init.constant_(model.weight, 1.0)
    checkpointer = FiberCheckpointer(model, save_dir=sys.argv[1])
    checkpointer.save("model_0000001", iteration=1)
    real_save = torch.save

    def slow_save(data, handle):
        handle.write(b"partial checkpoint bytes")
        handle.flush()
        print("saving", flush=True)
        time.sleep(60)

    torch.save = slow_save
    torch.nn.init.constant_(model.weight, 2.0)
    checkpointer.save("model_0000002", iteration=2)
    """
)


def _model(value: float = 0.0) -> torch.nn.Linear:
    model = torch.nn.Linear(2, 1)
    torch.nn.init.constant_(model.weight, value)
    return model


def test_kill_during_save_leaves_no_temporary_and_resumes_from_the_last_good(tmp_path, caplog):
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "saving"
    process.send_signal(signal.SIGKILL)
    process.wait()
    temporaries = [p.name for p in tmp_path.iterdir() if p.name.startswith(".saving-")]
    assert len(temporaries) == 1 and temporaries[0].endswith("model_0000002.pth")
    assert not (tmp_path / "model_0000002.pth").exists()
    model = _model()
    with caplog.at_level(logging.WARNING):
        checkpointer = FiberCheckpointer(model, save_dir=str(tmp_path))
        resumed = checkpointer.resume_or_load("", resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert f"removed {tmp_path / temporaries[0]}" in caplog.text
    assert resumed["iteration"] == 1
    assert torch.equal(model.weight, torch.full((1, 2), 1.0))


@pytest.mark.parametrize("tag", ["", "model_0000009.pth", "model_0000002.pth"])
def test_resume_skips_an_unreadable_last_checkpoint(tmp_path, caplog, tag):
    """last_checkpoint empty, naming a missing file, or naming a truncated file: the newest
    readable checkpoint is used and the skipped one is named."""
    checkpointer = FiberCheckpointer(_model(1.0), save_dir=str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    time.sleep(0.01)
    checkpointer.save("model_0000002", iteration=2)
    full = (tmp_path / "model_0000002.pth").read_bytes()
    (tmp_path / "model_0000002.pth").write_bytes(full[: len(full) // 2])
    (tmp_path / "last_checkpoint").write_text(tag)
    model = _model()
    with caplog.at_level(logging.WARNING):
        resumed = FiberCheckpointer(model, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert resumed["iteration"] == 1
    assert f"skipped {tmp_path / 'model_0000002.pth'}: " in caplog.text
    assert "not a readable PyTorch checkpoint" in caplog.text
    assert torch.equal(model.weight, torch.full((1, 2), 1.0))


def test_resume_with_no_readable_checkpoint_names_them(tmp_path):
    (tmp_path / "model_0000001.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    with pytest.raises(ValueError, match=r"no checkpoint in .* loads \(tried .*model_0000001"):
        FiberCheckpointer(_model(), save_dir=str(tmp_path)).resume_or_load("", resume=True)


def test_checkpoints_are_written_with_the_mode_of_other_outputs(tmp_path):
    FiberCheckpointer(_model(), save_dir=str(tmp_path)).save("model_final")
    (tmp_path / "metrics.json").write_text("{}")
    expected = (tmp_path / "metrics.json").stat().st_mode & 0o777
    assert (tmp_path / "model_final.pth").stat().st_mode & 0o777 == expected
    assert (tmp_path / "last_checkpoint").stat().st_mode & 0o777 == expected


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_pickled_code_in_a_checkpoint_never_runs(tmp_path, suffix):
    marker = tmp_path / "code_ran"
    path = tmp_path / f"weights{suffix}"
    torch.save({"model": {"weight": torch.zeros(1, 2), "evil": RunsCode(marker)}}, path)
    expected = "pickle files can run arbitrary code" if suffix == ".pkl" else "holds objects other"
    with pytest.raises(ValueError, match=rf"weights\{suffix}: {expected}"):
        FiberCheckpointer(_model()).load(str(path))
    assert not marker.exists()


def test_safetensors_weights_load(tmp_path):
    from safetensors.torch import save_file

    save_file(_model(4.0).state_dict(), str(tmp_path / "weights.safetensors"))
    model = _model()
    FiberCheckpointer(model).load(str(tmp_path / "weights.safetensors"))
    assert torch.equal(model.weight, torch.full((1, 2), 4.0))
