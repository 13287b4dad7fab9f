import math
import re

import pytest
import torch

from harness.errors import HarnessError
from harness.learn.models import (
    MODELS,
    ModelSpec,
    build_model,
    channels_last_on_cpu,
    load_checkpoint,
    load_weights,
    read_state_dict,
    save_weights,
    validate_state_dict,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_models_registry_lists_both():
    assert MODELS.names() == ["resnet18", "small-cnn"]


@pytest.mark.parametrize("size", [16, 32], ids=["16px", "32px"])
@pytest.mark.parametrize("name", ["small-cnn", "resnet18"])
def test_build_model_outputs_one_logit_per_class(name, size):
    model = build_model(name, num_classes=7, in_channels=3).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, size, size))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", ["small-cnn", "resnet18"])
def test_build_model_accepts_one_channel_images(name):
    model = build_model(name, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)


def test_build_model_resnet18_matches_torchvision_keys():
    import torchvision

    ours = build_model("resnet18").state_dict()
    theirs = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_build_model_unknown_name_suggests_closest():
    with pytest.raises(HarnessError, match="unknown model 'small_cnn'; did you mean 'small-cnn'"):
        build_model("small_cnn")


def test_build_model_rejects_one_class():
    with pytest.raises(HarnessError, match="num_classes >= 2"):
        build_model("small-cnn", num_classes=1)


def test_model_spec_builds_the_named_model():
    model = ModelSpec("small-cnn", num_classes=4, in_channels=1)()
    assert model.fc.out_features == 4 and model.features[0].in_channels == 1


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_checkpoint_round_trips(tmp_path, suffix):
    torch.manual_seed(0)
    source = build_model("small-cnn")
    path = tmp_path / f"original{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        save_weights(source, path)
    target = load_checkpoint(build_model("small-cnn"), path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_load_checkpoint_strips_data_parallel_prefix(tmp_path):
    source = build_model("small-cnn")
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    target = load_checkpoint(build_model("small-cnn"), path)
    assert torch.equal(target.fc.weight, source.fc.weight)


def test_load_checkpoint_wrong_architecture_names_keys_and_model(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(build_model("resnet18").state_dict(), path)
    with pytest.raises(HarnessError, match=r"does not fit model 'small-cnn': missing keys \[features\.0\.weight.*"
                       r"unexpected keys \[conv1\.weight.*in all\)\]"):
        load_checkpoint(build_model("small-cnn"), path, name="small-cnn")


def test_load_checkpoint_wrong_class_count_names_shapes(tmp_path):
    path = tmp_path / "five.pth"
    torch.save(build_model("small-cnn", num_classes=5).state_dict(), path)
    with pytest.raises(HarnessError, match=r"shape mismatches \(given vs expected\) \[fc\.weight \(5, 64\) vs \(10, 64\)"):
        load_checkpoint(build_model("small-cnn"), path)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"net": torch.nn.Linear(2, 2)}, "cannot be read as a state_dict with torch.load\\(weights_only=True\\)"),
        ([torch.zeros(2)], "holds a list, not a state_dict"),
    ],
    ids=["pickled-module", "list"],
)
def test_read_state_dict_rejects_non_state_dicts(tmp_path, payload, match):
    path = tmp_path / "bad.pth"
    torch.save(payload, path)
    with pytest.raises(HarnessError, match=match):
        read_state_dict(path)


def test_read_state_dict_missing_file(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")


def test_read_state_dict_corrupt_safetensors(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(HarnessError, match="not a valid safetensors file"):
        read_state_dict(path)


def test_save_weights_then_load_weights_round_trips(tmp_path):
    source = build_model("small-cnn")
    path = save_weights(source, tmp_path / "sub" / "w.safetensors")
    assert not list(path.parent.glob(".*tmp"))
    target = load_weights(build_model("small-cnn"), path)
    assert torch.equal(target.fc.bias, source.fc.bias)


def test_load_weights_rejects_non_finite(tmp_path):
    state = build_model("small-cnn").state_dict()
    state["fc.bias"][0] = math.nan
    path = save_weights(state, tmp_path / "nan.safetensors")
    with pytest.raises(HarnessError, match=r"non-finite values \(nan or inf\) in \[fc\.bias\]"):
        load_weights(build_model("small-cnn"), path)


def test_load_weights_requires_safetensors_suffix(tmp_path):
    with pytest.raises(HarnessError, match="must end in .safetensors"):
        load_weights(build_model("small-cnn"), tmp_path / "w.pth")


def _state(**changes):
    state = build_model("small-cnn").state_dict()
    for key, value in changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    return state


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (_state(), None),
        (_state(**{"fc.bias": None}), r"missing keys \[fc\.bias\]"),
        (_state(extra=torch.zeros(1)), r"unexpected keys \[extra\]"),
        (_state(**{"fc.bias": torch.zeros(3)}), r"shape mismatches .*fc\.bias \(3,\) vs \(10,\)"),
        (_state(**{"fc.bias": torch.zeros(10, dtype=torch.float64)}), r"dtype mismatches .*torch\.float64 vs torch\.float32"),
        (_state(**{"fc.bias": torch.full((10,), math.inf)}), r"non-finite values .*\[fc\.bias\]"),
        ({"fc.bias": "text"}, "expected a mapping of names to tensors, got dict"),
        ([1, 2], "expected a mapping of names to tensors, got list"),
    ],
    ids=["ok", "missing", "unexpected", "shape", "dtype", "inf", "non-tensor", "not-a-mapping"],
)
def test_validate_state_dict_reasons(state, reason):
    got = validate_state_dict(build_model("small-cnn"), state)
    if reason is None:
        assert got is None
    else:
        assert got is not None
        assert re.search(reason, got), got


@pytest.mark.parametrize(("device", "inside"), [("cpu", torch.channels_last), ("meta", torch.contiguous_format)],
                         ids=["cpu", "other-device"])
def test_channels_last_on_cpu_restores_the_layout(device, inside):
    model = build_model("small-cnn")
    with channels_last_on_cpu(model, device) as memory_format:
        assert memory_format == inside
        assert model.features[0].weight.is_contiguous(memory_format=inside)
    assert model.features[0].weight.is_contiguous()
