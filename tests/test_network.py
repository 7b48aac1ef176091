"""MultiTaskUNet around real dynamic_network_architectures U-Nets (PlainConvUNet and ResEnc)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from nnunet_multitask.aggregation import patient_prediction
from nnunet_multitask.network import MultiTaskUNet


def _plain(in_ch, ds=True):
    return PlainConvUNet(in_ch, 3, (8, 16, 32), torch.nn.Conv3d, 3, (1, 2, 2), (2, 2, 2), 2, (2, 2),
                         conv_bias=True, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU,
                         deep_supervision=ds)


def _resenc(in_ch, ds=True):
    return ResidualEncoderUNet(in_ch, 3, (8, 16, 32), torch.nn.Conv3d, 3, (1, 2, 2), (1, 1, 1), 2, (1, 1),
                               conv_bias=True, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU,
                               deep_supervision=ds)


@pytest.mark.parametrize("make", [_plain, _resenc])
@pytest.mark.parametrize("head", ["cox", "discrete"])
def test_forward_modes(make, head):
    torch.manual_seed(0)
    net = MultiTaskUNet(make(4), None, n_clinical_features=5, clinical_state_size=7, survival_head=head,
                        n_time_bins=6, risk_memory_size=8)
    x, c = torch.randn(2, 4, 8, 32, 32), torch.randn(2, 5)
    seg = net(x, clinical=c)
    assert isinstance(seg, list) and seg[0].shape == (2, 2, 8, 32, 32)  # deep supervision, segmentation only
    seg2, heads = net(x, clinical=c, return_heads=True)
    assert heads["cls_logit"].shape == (2,)
    key = "log_risk" if head == "cox" else "hazard_logits"
    assert heads[key].shape == ((2,) if head == "cox" else (2, 6))
    # the decoder never sees clinical data: segmentation identical whatever the clinical vector
    net.eval()
    net.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    a = net(x, clinical=c, return_heads=True)[0]
    b = net(x, clinical=torch.zeros(2, 5), return_heads=True)[0]
    assert isinstance(a, torch.Tensor)
    torch.testing.assert_close(a, b)
    # the predictor's way: plain call returns a tensor, heads go to the sink with a tumour mass
    net.head_sink, net.clinical_input = [], c[:1]
    with torch.no_grad():
        out = net(x[:1])
    assert isinstance(out, torch.Tensor) and len(net.head_sink) == 1
    rec = {k: v.numpy() for k, v in net.head_sink[0].items()}
    assert rec["tumour_mass"].shape == (1,) and rec["tumour_mass"][0] > 0
    pred = patient_prediction([rec], head, 36.0, bin_edges=torch.linspace(0, 60, 7).numpy())
    assert 0 < pred["p_recurrence"] < 1
    # the trainer's way: capture() gives the step's inputs to plain calls and restores the attributes
    net.head_sink, net.clinical_input = None, None
    with torch.no_grad(), net.capture("heads", clinical=c[:1]) as sink:
        assert isinstance(net(x[:1]), torch.Tensor)
    assert len(sink) == 1 and net.head_sink is None and net.clinical_input is None
    for k, v in sink[0].items():
        torch.testing.assert_close(v.numpy(), rec[k])
    with pytest.raises(ValueError, match="kind"):
        with net.capture("patches"):
            pass


def test_channel_subset_and_state_dict_round_trip():
    net = MultiTaskUNet(_plain(1), [0], n_clinical_features=0, clinical_state_size=2, survival_head="cox").eval()
    x = torch.randn(1, 4, 8, 32, 32)
    seg, heads = net(x, return_heads=True)  # four-channel input, T2 only used
    assert seg[0].shape[1] == 2
    x2 = x.clone()
    x2[:, 1:] = 0
    torch.testing.assert_close(net(x2, return_heads=True)[1]["log_risk"], heads["log_risk"])
    sd = net.state_dict()
    for k in ("clinical_state", "time_bin_edges", "fold_state_fitted", "risk_memory.log_risk"):
        assert k in sd
    other = MultiTaskUNet(_plain(1), [0], n_clinical_features=0, clinical_state_size=2, survival_head="cox")
    other.load_state_dict(sd, strict=True)


def test_missing_clinical_is_an_error():
    net = MultiTaskUNet(_plain(4), None, n_clinical_features=3, clinical_state_size=1)
    with pytest.raises(RuntimeError, match="clinical"):
        net(torch.randn(1, 4, 8, 32, 32), return_heads=True)


def test_tumour_mass_weighting_and_fallback():
    recs = [{"cls_logit": [0.0, 4.0], "log_risk": [1.0, 3.0], "tumour_mass": [0.0, 100.0]}]
    p = patient_prediction(recs, "cox", 36)
    assert p["risk_score"] == pytest.approx(3.0) and p["tumour_found"]
    none = [{"cls_logit": [0.0, 4.0], "log_risk": [1.0, 3.0], "tumour_mass": [0.0, 0.1]}]
    q = patient_prediction(none, "cox", 36)
    assert not q["tumour_found"] and q["risk_score"] == pytest.approx(2.0)


def test_tumour_quantities_on_a_known_mask():
    from nnunet_multitask.network import tumour_quantities
    mask = torch.zeros(1, 4, 6, 6)
    mask[0, 1:3, 2:5, 2:4] = 1  # 12 voxels
    image = torch.stack([torch.full((4, 6, 6), 2.0),
                         torch.arange(4 * 6 * 6, dtype=torch.float32).reshape(4, 6, 6)])[None]
    q = tumour_quantities(mask, image, voxel_volume_mm3=1.5)
    assert q.shape == (1, 3)
    assert q[0, 0].item() == pytest.approx(np.log1p(12 * 1.5))
    assert q[0, 1].item() == pytest.approx(2.0)
    assert q[0, 2].item() == pytest.approx(image[0, 1][mask[0] > 0].mean().item())
    with pytest.raises(ValueError, match="do not match"):
        tumour_quantities(mask, image[:, :, :3], 1.0)


@pytest.mark.parametrize("features", ["tumour_quantities", "tumour_quantities+tumour_pool", "global_pool"])
def test_patient_level_definition_equals_the_whole_image_patch(features):
    """One tile that shows the whole image: the patient-level features (stitched segmentation and
    tile records) are exactly those the heads see on that patch in training."""
    torch.manual_seed(0)
    net = MultiTaskUNet(_plain(2, ds=False), None, n_clinical_features=3, clinical_state_size=1,
                        survival_head="discrete", n_time_bins=4, image_features=features,
                        voxel_volume_mm3=2.0).eval()
    net.quantity_mean.copy_(torch.tensor([3.0, 0.1, -0.1]))
    net.quantity_std.copy_(torch.tensor([2.0, 1.5, 0.5]))
    x, c = torch.randn(1, 2, 8, 32, 32), torch.randn(1, 3)
    with torch.no_grad():
        seg, patch_heads = net(x, clinical=c, return_heads=True)
        with net.capture("tiles") as tiles:
            seg2 = net(x)
        assert net.head_sink is None and net.sink_kind == "heads"
        heads, mass = net.patient_heads(seg2[0], x[0], tiles, c[0])
    torch.testing.assert_close(seg, seg2)
    for k in ("cls_logit", "hazard_logits"):
        torch.testing.assert_close(heads[k], patch_heads[k], rtol=1e-5, atol=1e-5)
    assert mass == pytest.approx(float(torch.softmax(seg, 1)[:, 1:].sum()), rel=1e-5)


def test_head_and_segmentation_parameters_partition_the_network():
    net = MultiTaskUNet(_plain(4), None, n_clinical_features=3, clinical_state_size=1)
    seg, heads = net.segmentation_parameters(), net.head_parameters()
    ids = [id(p) for p in seg + heads]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    head_names = {n.split(".")[0] for n, p in net.named_parameters() if id(p) in {id(h) for h in heads}}
    assert head_names == {"image_embedding", "clinical_embedding", "fusion", "classification_head", "survival_output"}


def test_quantity_features_do_not_send_gradients_into_the_unet():
    """With tumour quantities alone the head losses cannot move the segmentation network."""
    net = MultiTaskUNet(_plain(2), None, n_clinical_features=0, clinical_state_size=1, survival_head="cox")
    _, heads = net(torch.randn(2, 2, 8, 32, 32), return_heads=True)
    (heads["log_risk"].sum() + heads["cls_logit"].sum()).backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in net.segmentation_parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.head_parameters())


@pytest.mark.parametrize("features", ["global_pool", "tumour_quantities+tumour_pool"])
def test_patient_level_pooling_over_several_tiles(features):
    """Several tiles (records of different batch sizes): pooled features combine by tumour mass."""
    torch.manual_seed(1)
    net = MultiTaskUNet(_plain(2, ds=False), None, n_clinical_features=0, clinical_state_size=1,
                        survival_head="cox", image_features=features).eval()
    width = 2 * 32 if features == "global_pool" else 32
    f = torch.randn(3, width)
    if features == "global_pool":
        recs = [{"tumour_mass": torch.tensor([1.0]), "pooled": f[:1]},
                {"tumour_mass": torch.tensor([3.0, 0.0]), "pooled": f[1:]}]
        expected_pool = (1.0 * f[0] + 3.0 * f[1]) / 4.0
    else:
        recs = [{"tumour_mass": torch.tensor([1.0]), "pool_num": f[:1], "pool_den": torch.tensor([2.0])},
                {"tumour_mass": torch.tensor([3.0, 0.0]), "pool_num": f[1:], "pool_den": torch.tensor([6.0, 0.0])}]
        expected_pool = f.sum(0) / 8.0
    logits = torch.randn(2, 8, 32, 32)
    image = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        heads, _ = net.patient_heads(logits, image, recs, None)
        from nnunet_multitask.network import foreground_probability
        q = net.standardised_quantities(foreground_probability(logits[None]), image[None])
        expected = net.heads(net.image_feature_vector(q, expected_pool[None]), None)
    torch.testing.assert_close(heads["log_risk"], expected["log_risk"], rtol=1e-5, atol=1e-5)
