"""Model zoo, units, hooks and the foundation commands (no network, no ../shared needed)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from cli_helpers import assert_clean_error, run

from circuits_cli.cli import COMMANDS
from circuits_cli.errors import CircuitsError
from circuits_cli.hooks import capture
from circuits_cli.units import parse_channels, parse_unit
from circuits_cli.zoo import inceptionv1 as inc
from circuits_cli.zoo import load_model
from circuits_cli.zoo.weights import sha256_file

# Channel counts of Lucid's InceptionV1 from ../shared/reference/circuits-facts.md.
REFERENCE_CHANNELS = {"conv2d0": 64, "conv2d1": 64, "conv2d2": 192, "mixed3a": 256,
                      "mixed3b": 480, "mixed4a": 508, "mixed4b": 512, "mixed4c": 512,
                      "mixed4d": 528, "mixed4e": 832, "mixed5a": 832, "mixed5b": 1024}
REFERENCE_SPLITS = {"mixed3b": (128, 192, 96, 64), "mixed4b": (160, 224, 64, 64),
                    "mixed4c": (128, 256, 64, 64)}


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """A state dict for lucent's InceptionV1 (random values: the architecture is what's tested)."""
    from lucent.modelzoo.inceptionv1.InceptionV1 import InceptionV1 as Lucent

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "inception5h.pth"
    torch.save(Lucent(pretrained=False).state_dict(), path)
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-home" / "hub"))
    return tmp_path / "torch-home" / "hub" / "checkpoints"


# --- LRN correction ---------------------------------------------------------------------------

def tf_local_response_normalization(x, depth_radius, bias, alpha, beta):
    """TensorFlow's documented formula, over channels of an NCHW array:
    sqr_sum[c] = sum(x[c - r : c + r + 1] ** 2); out = x / (bias + alpha * sqr_sum) ** beta."""
    c = x.shape[1]
    sq = x.astype(np.float64) ** 2
    out = np.empty_like(x, dtype=np.float64)
    for i in range(c):
        lo, hi = max(0, i - depth_radius), min(c, i + depth_radius + 1)
        out[:, i] = x[:, i] / (bias + alpha * sq[:, lo:hi].sum(axis=1)) ** beta
    return out


@pytest.mark.parametrize("channels", [64, 192])
def test_lrn_matches_tensorflow_graph(channels):
    rng = np.random.default_rng(channels)
    x = (rng.standard_normal((2, channels, 5, 5)) * 40).astype(np.float32)
    expected = tf_local_response_normalization(x, depth_radius=5, bias=2.0, alpha=1e-4, beta=0.5)
    model = inc.InceptionV1()
    for lrn in (model.localresponsenorm0, model.localresponsenorm1):
        got = lrn(torch.from_numpy(x)).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # lucent's parameters are measurably different: the correction is not a no-op.
    lucent = torch.nn.functional.local_response_norm(torch.from_numpy(x), **{
        k: v for k, v in inc.LUCENT_LRN.items()}).double().numpy()
    assert np.abs(lucent - expected).max() > 0.1 * np.abs(expected).max()


def test_forward_equals_lucent_except_lrn(inception_weights):
    """With lucent's LRN our structured forward reproduces lucent's logits exactly."""
    from lucent.modelzoo.inceptionv1.InceptionV1 import InceptionV1 as Lucent

    state = torch.load(inception_weights, weights_only=True)
    ref = Lucent(pretrained=False).eval()
    ref.load_state_dict(state)
    ours = inc.InceptionV1(lrn=inc.LUCENT_LRN).eval()
    ours.load_state_dict(state, strict=False)
    seen = {}
    ref.softmax2_pre_activation_matmul.register_forward_hook(lambda m, i, o: seen.update(ref=o))
    x = torch.rand(2, 3, 224, 224) * 255 - 117
    with torch.no_grad():
        ref(x)
        got = ours(x)
    torch.testing.assert_close(got, seen["ref"], rtol=0, atol=1e-6)
    corrected = inc.InceptionV1().eval()
    corrected.load_state_dict(state, strict=False)
    with torch.no_grad():
        assert not torch.allclose(corrected(x), got, atol=1e-4)


# --- inceptionv1 loading ----------------------------------------------------------------------

def test_inceptionv1_layer_table_from_local_weights(inception_weights):
    result = run("layers", "-m", "inceptionv1", "--weights", str(inception_weights), "--json")
    assert result.exit_code == 0, result.output
    table = {row["name"]: row for row in json.loads(result.stdout)["layers"]}
    for name, channels in REFERENCE_CHANNELS.items():
        assert table[name]["channels"] == channels, name
    for name, split in REFERENCE_SPLITS.items():
        assert tuple(b["channels"] for b in table[name]["branches"]) == split
        assert [b["name"] for b in table[name]["branches"]] == ["1x1", "3x3", "5x5", "pool"]
    assert table["mixed4c"]["shape"] == [512, 14, 14]


def test_car_detector_is_last_channel_of_mixed4c_5x5(inception_weights):
    model = load_model("inceptionv1", weights=inception_weights)
    unit = parse_unit("4c:447", model)
    assert (unit.layer, unit.channel) == ("mixed4c", 447)
    assert model.layer("mixed4c").branch_of(447) == ("5x5", 63)
    assert model.layer("mixed4b").branch_of(237)[0] == "3x3"
    assert model.layer("mixed4b").branch_of(491)[0] == "pool"


def test_download_failure_is_one_line_with_weights_hint(torch_home, monkeypatch, tmp_path):
    monkeypatch.setenv(inc.URL_ENV, (tmp_path / "nowhere" / "inception5h.pth").as_uri())
    assert_clean_error(run("layers", "-m", "inceptionv1"), "--weights FILE",
                       "could not download")
    assert not (torch_home / inc.WEIGHTS_FILE).exists()


def test_download_pins_and_checks_sha256(torch_home, monkeypatch, inception_weights):
    monkeypatch.setenv(inc.URL_ENV, inception_weights.as_uri())
    assert run("layers", "-m", "inceptionv1", "--json").exit_code == 0
    cached = torch_home / inc.WEIGHTS_FILE
    pinned = (torch_home / (inc.WEIGHTS_FILE + ".sha256")).read_text().split()[0]
    assert pinned == sha256_file(inception_weights)
    # A later load of a corrupted cache is refused, and the file is left for the user to inspect.
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    assert_clean_error(run("layers", "-m", "inceptionv1"), "sha256", "--weights FILE")
    assert cached.exists()


def test_explicit_sha256_pin_is_enforced(torch_home, monkeypatch, inception_weights):
    monkeypatch.setenv(inc.URL_ENV, inception_weights.as_uri())
    monkeypatch.setenv(inc.SHA256_ENV, "0" * 64)
    assert_clean_error(run("layers", "-m", "inceptionv1"), "sha256")


def test_wrong_weights_file_for_inceptionv1(tmp_path):
    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    assert_clean_error(run("layers", "-m", "inceptionv1", "--weights", str(bad)),
                       "not an InceptionV1")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle")
    assert_clean_error(run("layers", "-m", "inceptionv1", "--weights", str(junk)), "state dict")
    assert_clean_error(run("layers", "--weights", str(tmp_path / "missing.pth")),
                       "does not exist")


# --- units, layers, models: bad inputs --------------------------------------------------------

def test_unit_parsing(inception_weights):
    model = load_model("inceptionv1", weights=inception_weights)
    assert str(parse_unit("mixed4b:237", model)) == "mixed4b:237"
    with pytest.raises(CircuitsError, match="unknown layer 'mixd4c'; did you mean 'mixed4c'"):
        parse_unit("mixd4c:3", model)
    with pytest.raises(CircuitsError, match="out of range .* 512 channels"):
        parse_unit("4c:512", model)
    with pytest.raises(CircuitsError, match="malformed unit"):
        parse_unit("mixed4c-447", model)
    with pytest.raises(CircuitsError, match="malformed unit"):
        parse_unit("mixed4c:abc", model)
    assert parse_channels("0-3,447,2", 512) == [0, 1, 2, 3, 447]
    assert parse_channels("all", 4) == [0, 1, 2, 3]
    with pytest.raises(CircuitsError, match="out of range"):
        parse_channels("510-512", 512)
    with pytest.raises(CircuitsError, match="malformed"):
        parse_channels("1,,x", 512)
    with pytest.raises(CircuitsError, match="empty range"):
        parse_channels("5-2", 512)


def test_bad_model_name_suggests():
    assert_clean_error(run("layers", "-m", "inceptonv1"), "did you mean 'inceptionv1'")
    assert_clean_error(run("layers", "-m", "torchvision:resnt18"), "resnet18")


def test_model_from_environment_variable(inception_weights):
    result = run("layers", "--weights", str(inception_weights), "--json",
                 env={"CIRCUITS_MODEL": "inceptionv1"})
    assert json.loads(result.stdout)["model"] == "inceptionv1"
    assert_clean_error(run("layers", env={"CIRCUITS_MODEL": "nope"}), "unknown model 'nope'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(inception_weights):
    assert_clean_error(run("layers", "--weights", str(inception_weights), "--device", "cuda"),
                       "no CUDA GPU", "--device cpu")


# --- torchvision and user models --------------------------------------------------------------

def test_torchvision_model_offline_and_from_file(tmp_path, torch_home):
    import torchvision

    result = run("layers", "-m", "torchvision:resnet18")
    assert_clean_error(result, "--weights FILE")
    path = tmp_path / "r18.pth"
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), path)
    model = load_model("torchvision:resnet18", weights=path)
    assert model.labels[0] == "tench" and len(model.labels) == 1000
    assert model.layer("layer3.1").channels == 256
    assert model.layer("layer4").shape == (512, 7, 7)
    x = torch.rand(1, 3, 224, 224)
    acts = capture(model, x, "layer2")
    expected = net.eval().layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(
        model.preprocess(x)))))))
    torch.testing.assert_close(acts["layer2"], expected)


USER_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    def tiny():
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3),
                            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
        net.input_size = 32
        net.labels = ["no", "yes"]
        return net

    def not_a_module():
        return 3
""")


def test_user_model(tmp_path):
    file = tmp_path / "mymodel.py"
    file.write_text(USER_MODEL)
    model = load_model(f"{file}:tiny")
    assert [model.layer(n).channels for n in ("0", "1", "2")] == [4, 4, 6]
    assert model.layer("2").shape == (6, 30, 30) and model.labels == ["no", "yes"]
    out = run("layers", "-m", f"{file}:tiny", "--json")
    assert out.exit_code == 0 and json.loads(out.stdout)["input_size"] == 32
    assert_clean_error(run("layers", "-m", f"{tmp_path}/none.py:tiny"), "does not exist")
    assert_clean_error(run("layers", "-m", f"{file}:missing"), "no function 'missing'", "tiny")
    assert_clean_error(run("layers", "-m", f"{file}:not_a_module"), "not a torch.nn.Module")


# --- hooks ------------------------------------------------------------------------------------

def test_capture_stops_at_the_layer_and_matches_full_forward(inception_weights):
    model = load_model("inceptionv1", weights=inception_weights)
    later = []
    handle = model.submodule("mixed4d").register_forward_hook(lambda *a: later.append(1))
    x = torch.rand(2, 3, 224, 224)
    acts = capture(model, x, ["mixed3b", "mixed4c"])
    assert later == [], "the forward pass ran past the deepest requested layer"
    handle.remove()
    full = {}
    hooks = [model.submodule(n).register_forward_hook(lambda m, i, o, n=n: full.update({n: o}))
             for n in ("mixed3b", "mixed4c")]
    with torch.no_grad():
        model.module(model.preprocess(x))
    for h in hooks:
        h.remove()
    for name in ("mixed3b", "mixed4c"):
        torch.testing.assert_close(acts[name], full[name], rtol=0, atol=0)
    assert acts["mixed4c"].shape == (2, 512, 14, 14)


# --- the command line itself ------------------------------------------------------------------

def test_version_and_help_on_every_command():
    result = run("--version")
    assert result.exit_code == 0 and "circuits" in result.output
    assert run("--help").exit_code == 0
    for name in COMMANDS:
        result = run(name, "--help")
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_unknown_command_suggests():
    result = run("layres")
    assert result.exit_code == 2 and "layers" in result.output
