import ast
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import models
from conftest import ROOT

# Parameter counts as documented in models.py's docstrings and the README.
DOCUMENTED_PARAMS = {
    "dnn": 1_865_738,
    "convnet": 104_938,
    "resnet": 11_172_810,
    "fastresnet": 474_346,
    "quicknet": 66_426,
    "pytorch-example": 1_199_882,
    "keras-example": 34_826,
}


def test_registry_lists_every_model_and_study_models():
    assert models.list_models() == list(DOCUMENTED_PARAMS)
    assert set(models.list_models(study_only=True)) == {"dnn", "convnet", "resnet", "fastresnet"}
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("vgg")


@pytest.mark.parametrize("name", list(models.MODELS))
def test_forward_backward_shapes_no_nan(name):
    torch.manual_seed(0)
    model = models.build_model(name)
    x = torch.randn(4, 1, 28, 28)
    out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_parameter_count_as_documented(name):
    assert models.count_params(models.build_model(name)) == DOCUMENTED_PARAMS[name]


@pytest.mark.parametrize("name", list(models.MODELS))
def test_channels_last_and_bf16_autocast_agree_with_fp32(name):
    torch.manual_seed(0)
    model = models.build_model(name).eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, cl, atol=1e-4, rtol=1e-4)
    assert bf.dtype == torch.bfloat16 and torch.isfinite(bf).all()
    assert (bf.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05  # bf16 has ~3 significant digits


@pytest.mark.parametrize("name", list(models.MODELS))
def test_train_and_eval_modes_differ_where_dropout_or_bn_exist(name):
    torch.manual_seed(0)
    model = models.build_model(name)
    stochastic = any(isinstance(m, (nn.Dropout, nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        model.train()
        a = model(x)
        model.eval()
        b, c = model(x), model(x)
    assert torch.equal(b, c)  # eval is deterministic
    assert stochastic and not torch.allclose(a, b)


def test_cnns_expose_first_and_second_conv():
    for name in models.MODELS:
        layers = models.conv_layers(models.build_model(name))
        if name == "dnn":
            assert layers == {}
            assert models.build_model(name).first_linear.in_features == 784
        else:
            assert set(layers) == {"first_conv", "second_conv"}
            assert all(isinstance(m, nn.Conv2d) for m in layers.values())
            assert layers["first_conv"].in_channels == 1
            assert layers["second_conv"].in_channels == layers["first_conv"].out_channels


def test_resnet18_matches_torchvision_names_and_shapes():
    import torchvision

    ref = torchvision.models.resnet18(num_classes=10).state_dict()
    ours = models.build_model("resnet").state_dict()
    assert set(ours) == set(ref)
    differ = [k for k in ref if tuple(ref[k].shape) != tuple(ours[k].shape)]
    assert differ == ["conv1.weight"]  # the 3x3, 1-channel stem instead of 7x7, 3-channel
    assert tuple(ours["conv1.weight"].shape) == (64, 1, 3, 3)
    n_ref = sum(v.numel() for k, v in torchvision.models.resnet18(num_classes=10).named_parameters())
    stem_diff = 64 * 3 * 7 * 7 - 64 * 1 * 3 * 3
    assert models.count_params(models.build_model("resnet")) == n_ref - stem_diff


def test_resnet_width_option_and_stage_layout():
    small = models.build_model("resnet", width=16)
    assert [s[0].conv1.out_channels for s in small.stages] == [16, 32, 64, 128]
    assert [len(s) for s in small.stages] == [2, 2, 2, 2]
    assert models.count_params(small) == 701_178
    feats = {}
    small.layer4.register_forward_hook(lambda m, i, o: feats.update(l4=o.shape))
    small(torch.zeros(2, 1, 28, 28))
    assert feats["l4"] == (2, 128, 2, 2)  # the default 3x3 stride-2 stem: layer1 at 14x14


@pytest.mark.parametrize("stem, layer1, layer4, kernel", [("3x3s1", 28, 4, 3), ("3x3s2", 14, 2, 3), ("7x7s2pool", 7, 1, 7)])
def test_resnet_stems_set_the_resolution_and_keep_torchvision_names(stem, layer1, layer4, kernel):
    import torchvision

    net = models.build_model("resnet", width=8, stem=stem)
    sizes = {}
    for name in ("layer1", "layer4"):
        getattr(net, name).register_forward_hook(lambda m, i, o, name=name: sizes.update({name: o.shape[-1]}))
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert (sizes["layer1"], sizes["layer4"]) == (layer1, layer4)
    assert net.conv1.kernel_size == (kernel, kernel)
    full = models.build_model("resnet", stem=stem).state_dict()
    assert set(full) == set(torchvision.models.resnet18(num_classes=10).state_dict())
    with pytest.raises(ValueError, match="unknown ResNet stem"):
        models.build_model("resnet", stem="5x5")


def test_checkpoints_record_the_stem_and_old_files_load_with_theirs(tmp_path):
    # A 3x3 stride-1 and a 3x3 stride-2 ResNet have identical tensor shapes: only the recorded
    # stem tells them apart, so it must always be written, and read.
    assert models.complete_config("resnet")["stem"] == "3x3s2"
    torch.manual_seed(0)
    net = models.build_model("resnet", width=8, stem="3x3s1").eval()
    x = torch.randn(2, 1, 28, 28)
    base = {"model": "resnet", "state_dict": net.state_dict(), "normalization": {"mean": 0.1, "std": 0.3}}
    new = tmp_path / "new.pt"
    models.save_atomic({**base, "model_config": models.complete_config("resnet", {"width": 8, "stem": "3x3s1"})}, new)
    legacy = tmp_path / "legacy.pt"  # written before the stem option: no "stem" key
    models.save_atomic({**base, "model_config": {"width": 8}}, legacy)
    for path in (new, legacy):
        loaded, _ = models.load_checkpoint(path)
        assert loaded.stem == "3x3s1"
        with torch.no_grad():
            assert torch.allclose(loaded(x), net(x))
    other = tmp_path / "s2.pt"
    models.save_atomic({**base, "model_config": {"width": 8, "stem": "3x3s2"}}, other)
    assert models.load_checkpoint(other)[0].stem == "3x3s2"


def test_convnet_blocks_deepen_it_without_changing_a_shape_or_the_old_keys():
    import torch
    plain, deep = models.build_model("convnet", width=16), models.build_model("convnet", width=16, blocks=1)
    assert list(plain.state_dict()) == [k for k in deep.state_dict() if not k.startswith("res")]
    assert not any(k.startswith("res") for k in plain.state_dict())  # files saved before `blocks` existed still load
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())  # noqa: E731
    assert (convs(plain), convs(deep)) == (3, 9)
    x = torch.randn(2, 1, 28, 28)
    assert deep(x).shape == (2, 10) and deep.first_conv is deep.stem[0] and deep.second_conv is deep.layer1[0]
    with torch.no_grad():
        assert deep.res1(torch.zeros(2, 32, 7, 7)).shape == (2, 32, 7, 7)


def test_complete_config_fills_defaults_and_rejects_unknown_options():
    assert models.complete_config("convnet", {"width": 8}) == {"width": 8, "dropout": 0.1, "num_classes": 10, "blocks": 0}
    with pytest.raises(ValueError, match="takes no option"):
        models.complete_config("dnn", {"stem": "3x3s1"})


def test_models_py_does_not_import_torchvision_and_import_is_cheap():
    tree = ast.parse((ROOT / "models.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.startswith("torchvision") for m in imported)
    # importing has no side effects: nothing printed, no torchvision pulled in
    r = subprocess.run([sys.executable, "-c", "import sys, models; print('torchvision' in sys.modules)"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_summary_lists_layers_and_total():
    text = models.summary(models.build_model("convnet"))
    assert "stem.0" in text and "(32, 14, 14)" in text and "(10,)" in text
    assert f"total params: {DOCUMENTED_PARAMS['convnet']:,}" in text


def test_models_cli_prints_every_summary(capsys):
    import runpy
    runpy.run_path(str(ROOT / "models.py"), run_name="__main__")  # `python models.py`, in this process
    out = capsys.readouterr().out
    for name, n in DOCUMENTED_PARAMS.items():
        assert f"== {name}:" in out and f"{n:,} parameters" in out
