"""Progressive shrinking: resumes exactly, runs distributed (gloo, 2 processes), rejects bad input."""

import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp

from ofa_deploy.data import DEMO_CLASSES, make_demo_dataset
from ofa_deploy.errors import ConfigError, OfaDeployError
from ofa_deploy.search_space import SubnetConfig
from ofa_deploy.train import Phase, TrainConfig, get_schedule, train
from ofa_deploy.torch_device import resolve_device

MINI = (  # one epoch per kind of phase: full (no teacher), kernel (teacher), expand with channel sorting
    Phase("full", 1, 0.1, (7,), (6,), (4,), distill=False),
    Phase("kernel", 1, 0.1, (3, 5, 7), (6,), (4,)),
    Phase("expand-1", 1, 0.05, (3, 5, 7), (4, 6), (2, 3, 4), subnets_per_step=2, sort_channels=True),
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), train_per_class=4, val_per_class=2, size=32)


def mini_config(data, out, **kw):
    base = dict(data=str(data), out_dir=str(out), phases=MINI, batch_size=8, resolutions=(128, 132), val_resolution=128,
                val_limit=10, calib_images=16, max_steps_per_epoch=2)
    return TrainConfig(**{**base, **kw})


def test_killed_run_resumes_to_identical_weights(demo, tmp_path):
    straight = train(mini_config(demo, tmp_path / "a"))
    assert straight.finished and [h["phase"] for h in straight.history] == ["full", "kernel", "expand-1"]
    first = train(mini_config(demo, tmp_path / "b"), stop_after_epochs=1)  # "killed" after epoch 1
    assert not first.finished and (tmp_path / "b" / "last.pth").is_file()
    second = train(mini_config(demo, tmp_path / "b"), stop_after_epochs=1)  # killed again, mid-schedule
    assert [h["phase"] for h in second.history] == ["full", "kernel"]
    resumed = train(mini_config(demo, tmp_path / "b"))
    a, b = straight.supernet.state_dict(), resumed.supernet.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]
    assert (tmp_path / "a" / "curves.png").stat().st_size > 1000 and (tmp_path / "a" / "teacher.pth").is_file()
    import ofa_deploy as od

    loaded = od.load_supernet(straight.checkpoint)  # the official format that load_supernet reads
    assert loaded.n_classes == 10 and loaded.classes == sorted(DEMO_CLASSES)


def test_full_phase_is_the_largest_network_trained_alone(demo, tmp_path):
    """bench/ps_vs_scratch.py reuses a PS run's teacher.pth as the largest subnet's scratch run. That
    holds because the trainer's randomness comes from (seed, phase index, epoch): neither the phase's
    name nor the phases after it change what the first phase does."""
    train(mini_config(demo, tmp_path / "ps", phases=MINI[:2]))  # the teacher is frozen when the kernel phase starts
    alone = train(mini_config(demo, tmp_path / "alone", phases=(replace(MINI[0], name="scratch-k7e6d4"),)))
    teacher = torch.load(tmp_path / "ps" / "teacher.pth", weights_only=True)
    scratch = alone.supernet.extract(SubnetConfig.max()).state_dict()
    assert teacher.keys() == scratch.keys()
    for name in teacher:
        torch.testing.assert_close(teacher[name], scratch[name], rtol=0, atol=0, msg=name)


def test_resume_with_other_settings_is_refused(demo, tmp_path):
    train(mini_config(demo, tmp_path), stop_after_epochs=1)
    with pytest.raises(OfaDeployError, match="'batch_size' was 8, now 4"):
        train(mini_config(demo, tmp_path, batch_size=4))
    with pytest.raises(OfaDeployError, match="space"):
        train(mini_config(demo, tmp_path, space="ofa_mbv3_d234_e346_k357_w1.2"))


def test_bad_data_folders(tmp_path, demo):
    with pytest.raises(OfaDeployError, match="no 'train/' folder"):
        train(mini_config(tmp_path, tmp_path / "o"))
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(OfaDeployError, match="no images found"):
        train(mini_config(tmp_path, tmp_path / "o"))
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(demo, mixed)
    shutil.rmtree(mixed / "val" / "star")
    with pytest.raises(OfaDeployError, match="train/ has 10 classes but val/ has 9"):
        train(mini_config(mixed, tmp_path / "o"))


def test_memory_format_changes_speed_not_training(demo, tmp_path):
    """channels_last (the default) trains the same network as NCHW, and checkpoints stay plain CPU tensors."""
    nhwc = train(mini_config(demo, tmp_path / "nhwc", phases=MINI[:2]))
    nchw = train(mini_config(demo, tmp_path / "nchw", phases=MINI[:2], channels_last=False))
    for a, b in zip(nhwc.history, nchw.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    state = torch.load(nhwc.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in state.values())
    x = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the trained networks compute the same function (float noise: 0.1 % measured)
        a, b = (r.supernet.extract(SubnetConfig.max(image_size=128))(x) for r in (nhwc, nchw))
    assert float((a - b).norm() / b.norm()) < 1e-2


def test_device_is_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device: unknown 'tpu'; allowed: auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'cuda' asked for, but torch sees no GPU"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_matches_cpu(demo, tmp_path, monkeypatch):
    """The same run on the GPU and on the CPU: same losses up to float noise, a CPU checkpoint from both.

    Two things differ by design between the devices and are turned off for this comparison: dropout
    masks (the GPU draws them from its own Philox generator, so one seed gives other masks: on an H200
    the losses of this run moved 0.2-0.3 % from the CPU's by the third phase, with TF32 off too) and
    cuDNN's TF32 convolutions (10-bit mantissas), which is what a GPU user trains with.
    """
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    gpu = train(mini_config(demo, tmp_path / "gpu", device="cuda"))
    cpu = train(mini_config(demo, tmp_path / "cpu", device="cpu"))
    for a, b in zip(gpu.history, cpu.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    assert next(gpu.supernet.parameters()).device.type == "cpu"
    resumed = train(mini_config(demo, tmp_path / "gpu", device="cpu"))  # a GPU run's checkpoint resumes on a CPU
    assert resumed.finished


def test_presets_scale_the_paper_schedule():
    paper, short, tiny = (get_schedule(p) for p in ("paper", "short", "tiny"))
    assert [p.name for p in paper] == ["full", "kernel", "depth-1", "depth-2", "expand-1", "expand-2"]
    assert [p.epochs for p in paper[1:]] == [120, 25, 120, 25, 120]
    assert [p.epochs for p in short] == [18, 12, 3, 12, 3, 12]
    assert sum(p.epochs for p in tiny) < sum(p.epochs for p in short)
    assert tiny[0].epochs > sum(p.epochs for p in tiny[1:])  # a CPU budget goes mostly to the teacher
    assert max(p.lr for p in tiny[1:]) <= tiny[0].lr / 3  # no elastic phase restarts above a third of it
    assert tiny[-1].epochs > sum(p.epochs for p in tiny[1:-1])  # the phase that trains every subnet gets most
    assert [p.depths for p in paper[2:4]] == [(3, 4), (2, 3, 4)] and paper[4].sort_channels


def _worker(rank: int, world: int, port: int, data: str, out: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    result = train(mini_config(data, out, phases=MINI[:2], batch_size=4))
    results[rank] = [float(p.detach().double().sum()) for p in result.supernet.parameters()]
    torch.distributed.destroy_process_group()


def test_two_process_gloo_training_keeps_replicas_identical(demo, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, port, str(demo), str(tmp_path), results), nprocs=2, join=True)
    assert results[0] == results[1]  # same subnets, averaged gradients -> same weights on both ranks
    assert (tmp_path / "supernet.pth").is_file()
    torch.manual_seed(0)
    from ofa_deploy.search_space import OFAMobileNetV3

    untrained = [float(p.detach().double().sum()) for p in OFAMobileNetV3(n_classes=10).parameters()]
    assert results[0] != untrained
