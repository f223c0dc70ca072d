"""googlenet-bvlc: architecture against the Caffe prototxt, weight-file checks, hook points, and
the accuracy of the pretrained weights on the 500 sample photos (reference 0.742 / 0.920)."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from circuits_cli.errors import CircuitsError
from circuits_cli.hooks import capture
from circuits_cli.images import wnid_of
from circuits_cli.zoo import googlenet_bvlc as gb
from circuits_cli.zoo import weights

BLOCKS = ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]


def prototxt_layers(path) -> dict[str, dict]:
    """Caffe layer name -> {type, bottom, top, num_output, kernel_size, stride, pad, pool}."""
    layers = {}
    for body in re.findall(r"layer \{(.*?)\n\}", path.read_text(), re.S):
        name = re.search(r'name: "([^"]+)"', body).group(1)
        info = {"type": re.search(r'type: "([^"]+)"', body).group(1),
                "bottom": re.findall(r'bottom: "([^"]+)"', body)}
        for key in ("num_output", "kernel_size", "stride", "pad", "local_size"):
            m = re.search(rf"\b{key}: (\d+)", body)
            info[key] = int(m.group(1)) if m else None
        m = re.search(r"pool: (\w+)", body)
        info["pool"] = m.group(1) if m else None
        layers[name] = info
    return layers


def random_weights_npz(path, drop: str | None = None, reshape: str | None = None):
    """Write a weights file in the shared .npz layout from a randomly initialised network."""
    arrays = {name.replace(".", "/"): p.numpy()
              for name, p in gb.GoogLeNetBVLC().state_dict().items()}
    if drop:
        del arrays[drop]
    if reshape:
        arrays[reshape] = np.ascontiguousarray(arrays[reshape].T)
    np.savez(path, **arrays)
    return arrays


# --- architecture (no weights needed) --------------------------------------------------------

def test_layer_table_channels_and_branch_splits():
    layers = gb._layers(224)
    splits = {name: tuple(n for _, n in info.branches) for name, info in layers.items()
              if info.kind == "block"}
    assert splits["inception_3a"] == (64, 128, 32, 32)
    assert splits["inception_4a"] == (192, 208, 48, 64) and layers["inception_4a"].channels == 512
    assert splits["inception_4c"] == (128, 256, 64, 64)
    assert layers["inception_4c"].branches[0] == ("1x1", 128)
    assert layers["inception_5b"].channels == 1024
    for name, info in layers.items():
        if info.kind == "block":
            assert info.channels == sum(splits[name]) == info.shape[0]
            assert [b for b, _ in info.branches] == ["1x1", "3x3", "5x5", "pool_proj"]
    assert layers["conv1/7x7_s2"].shape == (64, 112, 112)
    assert layers["pool1/3x3_s2"].shape == (64, 56, 56)      # ceil rounding: floor would give 55
    assert layers["inception_3a"].shape == (256, 28, 28)
    assert layers["inception_4e"].shape == (832, 14, 14)
    assert layers["inception_5b"].shape == (1024, 7, 7)
    assert layers["pool5/7x7_s1"].shape == (1024, 1, 1)
    assert layers["inception_4c"].branch_of(128 + 256 + 63) == ("5x5", 63)


def test_layer_table_matches_prototxt(shared_dir):
    proto = prototxt_layers(shared_dir / "models" / "bvlc_googlenet.deploy.prototxt")
    layers = gb._layers(224)
    module = gb.GoogLeNetBVLC()
    for name, info in proto.items():
        if info["type"] == "Convolution":
            conv = module.get_submodule(name.replace("/", "."))
            assert conv.out_channels == info["num_output"], name
            assert conv.kernel_size == (info["kernel_size"],) * 2, name
            assert conv.stride == (info["stride"] or 1,) * 2, name
            assert conv.padding == (info["pad"] or 0,) * 2, name
            assert layers[name].channels == info["num_output"], name
        elif info["type"] == "Pooling":
            pool = module.get_submodule(name.replace("/", "."))
            assert isinstance(pool, nn.MaxPool2d if info["pool"] == "MAX" else nn.AvgPool2d)
            assert pool.ceil_mode, name
            assert (pool.kernel_size, pool.stride, pool.padding) == (
                info["kernel_size"], info["stride"] or 1, info["pad"] or 0), name
        elif info["type"] == "LRN":
            lrn = module.get_submodule(name.replace("/", "."))
            assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (info["local_size"], 1e-4, 0.75, 1.0)
        elif info["type"] == "Concat":
            block = name.removesuffix("/output")
            assert [f"{block}/{b}" for b, _ in layers[block].branches] == info["bottom"]
            assert layers[block].channels == sum(proto[b]["num_output"] for b in info["bottom"])
    assert module.loss3.classifier.out_features == proto["loss3/classifier"]["num_output"]


def test_hook_points_are_distinct_modules_of_the_right_kind():
    module = gb.GoogLeNetBVLC()
    layers = gb._layers(224)
    assert len({info.module for info in layers.values()}) == len(layers)
    expected = {"conv": nn.ReLU, "norm": nn.LocalResponseNorm, "block": gb.Concat}
    for name, info in layers.items():
        sub = module.get_submodule(info.module)
        if info.kind in expected:
            assert isinstance(sub, expected[info.kind]), name
        elif info.kind == "pool" or name.endswith("/pool"):
            assert isinstance(sub, (nn.MaxPool2d, nn.AvgPool2d)), name
        else:
            assert isinstance(sub, nn.ReLU), name


def test_aliases_and_blocks():
    layers = gb._layers(224)
    aliases = gb._aliases(layers)
    assert aliases["4c"] == aliases["inception_4c/output"] == "inception_4c"
    assert aliases["4c/3x3"] == "inception_4c/3x3"
    blocks = gb._blocks()
    assert list(blocks) == [f"inception_{b}" for b in BLOCKS]
    assert blocks["inception_3a"].input == "pool2/3x3_s2"
    assert blocks["inception_4a"].input == "pool3/3x3_s2"
    assert blocks["inception_5a"].input == "pool4/3x3_s2"
    assert blocks["inception_4c"].input == "inception_4b"
    module = gb.GoogLeNetBVLC()
    for out, block in blocks.items():
        c_in = layers[block.input].channels
        assert [b.name for b in block.branches] == [b for b, _ in layers[out].branches]
        for branch, (_, size) in zip(block.branches, layers[out].branches, strict=True):
            convs = [module.get_submodule(p) for p in branch.convs]
            assert convs[0].in_channels == c_in and convs[-1].out_channels == size
            assert branch.pool == ((3, 1, 1) if branch.name == "pool_proj" else None)


def test_preprocess_is_caffe_bgr_minus_mean():
    x = torch.zeros(1, 3, 2, 2)
    x[:, 0] = 1.0          # pure red
    x[:, 2] = 0.5          # half blue
    y = gb.preprocess(x)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([127.5 - 104, 0 - 117, 255 - 123]))


# --- weight files ----------------------------------------------------------------------------

def test_planted_weights_load_exactly(tmp_path):
    path = tmp_path / "planted.npz"
    arrays = random_weights_npz(path)
    model = gb.build(path)
    assert model.weights_id.startswith("sha256:") and len(model.weights_id) == 7 + 16
    got = model.module.get_submodule("inception_4c.5x5").weight.detach().numpy()
    assert np.array_equal(got, arrays["inception_4c/5x5/weight"])
    assert np.array_equal(model.module.loss3.classifier.bias.detach().numpy(),
                          arrays["loss3/classifier/bias"])


def test_weights_with_a_missing_key_name_it(tmp_path):
    path = tmp_path / "bad.npz"
    random_weights_npz(path, drop="inception_4b/3x3/bias")
    with pytest.raises(CircuitsError, match=r"no array 'inception_4b/3x3/bias'.*bvlc_googlenet"):
        gb.build(path)


def test_weights_with_a_wrong_shape_name_it(tmp_path):
    path = tmp_path / "bad.npz"
    random_weights_npz(path, reshape="conv2/3x3/weight")
    with pytest.raises(CircuitsError) as err:
        gb.build(path)
    msg = str(err.value)
    assert "'conv2/3x3/weight'" in msg and "(192, 64, 3, 3)" in msg and "\n" not in msg


def test_not_an_npz_is_a_one_line_error(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(CircuitsError, match="cannot read"):
        gb.build(path)


def test_missing_default_weights_say_where_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(gb.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(weights, "_repo_root", lambda: tmp_path / "nowhere" / "repo")
    with pytest.raises(CircuitsError, match="--weights FILE"):
        gb.default_weights()
    monkeypatch.setenv(gb.WEIGHTS_ENV, str(tmp_path / "missing.npz"))
    with pytest.raises(CircuitsError, match="CIRCUITS_BVLC_WEIGHTS"):
        gb.default_weights()
    (tmp_path / "bvlc_googlenet.npz").write_bytes(b"")
    monkeypatch.delenv(gb.WEIGHTS_ENV)
    assert gb.default_weights() == tmp_path / "bvlc_googlenet.npz"


# --- the pretrained model --------------------------------------------------------------------

def test_shared_weights_identity_and_labels(bvlc_model):
    assert bvlc_model.name == "googlenet-bvlc"
    assert bvlc_model.weights_id == "sha256:1299219d96cf5877"
    assert len(bvlc_model.labels) == len(bvlc_model.class_ids) == 1000
    assert bvlc_model.class_ids[0] == "n01440764" and bvlc_model.labels[0] == "tench"
    assert bvlc_model.layer("4c").name == "inception_4c"
    assert not any(p.requires_grad for p in bvlc_model.module.parameters())


def _images(n=2, seed=0):
    return torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_capture_equals_a_full_forward_and_stops_early(bvlc_model):
    x = _images()
    seen = {}
    calls = []
    h1 = bvlc_model.submodule("inception_4c").register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("4c", out.clone()))
    with torch.no_grad():
        logits = bvlc_model.logits(x)
    h1.remove()
    h2 = bvlc_model.module.loss3.classifier.register_forward_hook(
        lambda *_: calls.append("classifier"))
    h3 = bvlc_model.submodule("inception_4d").register_forward_hook(
        lambda *_: calls.append("4d"))
    try:
        with torch.no_grad():
            acts = capture(bvlc_model, x, "inception_4c")
    finally:
        h2.remove()
        h3.remove()
    assert calls == []                                    # the forward stopped at 4c
    assert torch.equal(acts["inception_4c"], seen["4c"])
    assert acts["inception_4c"].shape == (2, 512, 14, 14)
    assert logits.shape == (2, 1000)


def test_block_output_is_the_concatenation_of_its_branches(bvlc_model):
    names = ["inception_4c/1x1", "inception_4c/3x3", "inception_4c/5x5",
             "inception_4c/pool_proj", "inception_4c", "inception_4b"]
    with torch.no_grad():
        acts = capture(bvlc_model, _images(1), names)
    cat = torch.cat([acts[n] for n in names[:4]], dim=1)
    assert torch.equal(cat, acts["inception_4c"])
    assert (acts["inception_4c"] >= 0).all()              # post-ReLU, as Caffe's in-place ReLU

    # the block description recomputes the block from its input (what expanded weights rely on)
    block = bvlc_model.blocks["inception_4c"]
    outs = []
    for branch in block.branches:
        h = acts[block.input]
        if branch.pool:
            k, s, p = branch.pool
            h = F.max_pool2d(h, k, s, p, ceil_mode=True)
        for path in branch.convs:
            conv = bvlc_model.module.get_submodule(path)
            h = F.relu(F.conv2d(h, conv.weight, conv.bias, conv.stride, conv.padding))
        outs.append(h)
    assert torch.allclose(torch.cat(outs, 1), acts["inception_4c"], atol=1e-5)


@pytest.mark.slow
def test_accuracy_on_the_500_sample_photos(bvlc_weights, sample_images_dir):
    from circuits_cli.cli import cli

    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["classify", "-m", "googlenet-bvlc", "--weights",
                                      str(bvlc_weights), "--device", "cpu", "--json",
                                      "--batch", "50", str(sample_images_dir)])
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert len(records) == 500
    from circuits_cli.zoo.googlenet_bvlc import find_synsets, read_synsets

    _, wnids = read_synsets(find_synsets(bvlc_weights))
    hits1 = hits5 = 0
    for rec in records:
        truth = wnid_of(rec["image"])
        top = [wnids[t["index"]] for t in rec["top"]]
        probs = [t["prob"] for t in rec["top"]]
        assert len(top) == 5 and probs == sorted(probs, reverse=True)
        hits1 += top[0] == truth
        hits5 += truth in top
    top1, top5 = hits1 / 500, hits5 / 500
    print(f"\ngooglenet-bvlc on 500 sample photos: top-1 {top1:.3f}, top-5 {top5:.3f} "
          f"({seconds:.1f} s)")
    assert f"top-1 {top1:.3f}, top-5 {top5:.3f}" in result.stderr
    assert top1 >= 0.70 and top5 >= 0.88
