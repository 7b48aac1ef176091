"""The learned image pathway (``image_features="tumour_roi"``): the tumour box, the ROI encoder, where
the head gradients go, the box's invariance to background, and the real nnU-Net training and
prediction with ``MultiRecTrainer_ROI_smoke``."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_multitask.network import MultiTaskUNet
from nnunet_multitask.roi import RoiEncoder, crop_box, largest_component_centre, roi_start, shell_weights
from conftest import DATASET_ID, bin_of, run, train_env

SPACING = (3.0, 0.7, 0.7)
BOX = (8, 32, 32)


def _unet(in_ch):
    return PlainConvUNet(in_ch, 3, (8, 16, 32), torch.nn.Conv3d, 3, (1, 2, 2), (2, 2, 2), 2, (2, 2),
                         conv_bias=True, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU,
                         deep_supervision=False)


def _roi_net(n_clinical=0, head="discrete"):
    torch.manual_seed(0)
    return MultiTaskUNet(_unet(4), None, n_clinical_features=n_clinical, clinical_state_size=3, survival_head=head,
                         n_time_bins=5, image_features="tumour_roi", voxel_volume_mm3=float(np.prod(SPACING)),
                         roi_box=BOX, spacing_mm=SPACING, roi_width=8).eval()


# ---------------------------------------------------------------------------- the box
def test_largest_component_centre_ignores_a_far_speck():
    m = np.zeros((8, 40, 40), bool)
    m[2:6, 10:16, 20:30] = True           # tumour: centre (3.5, 12.5, 24.5)
    m[7, 39, 0] = True                    # one false-positive voxel far away
    np.testing.assert_allclose(largest_component_centre(m), [3.5, 12.5, 24.5])
    assert largest_component_centre(np.zeros((4, 4, 4), bool)) is None


def test_roi_start_stays_inside_a_large_image_and_pads_a_small_one():
    assert roi_start((4.0, 50.0, 5.0), (10, 100, 100), (8, 32, 32)) == (0, 34, 0)   # clamped at both ends
    assert roi_start((4.0, 99.0, 99.0), (10, 100, 100), (8, 32, 32)) == (0, 68, 68)
    assert roi_start((2.0, 5.0, 5.0), (6, 20, 40), (8, 32, 32)) == (-1, -6, 0)      # smaller: centred, padded
    assert roi_start(None, (10, 100, 100), (8, 32, 32)) == (1, 34, 34)


def test_crop_box_pads_with_the_fill_value():
    a = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 4, 5, 6)
    out = crop_box(a, (-1, 1, 2), (6, 3, 3), fill=-7.0)
    assert out.shape == (2, 6, 3, 3)
    torch.testing.assert_close(out[:, 1:5], a[:, :, 1:4, 2:5])
    assert (out[:, 0] == -7).all() and (out[:, 5] == -7).all()
    torch.testing.assert_close(crop_box(a, (0, 1, 1), (4, 3, 3)), a[:, :, 1:4, 1:4])


def test_shells_lie_outside_the_tumour_and_border_before_mesorectum():
    p = torch.zeros(1, 8, 40, 40)
    p[0, 3:5, 18:22, 18:22] = 1.0
    w = shell_weights(p, SPACING)
    inner, border, outer = w[0, 0], w[0, 1], w[0, 2]
    assert torch.equal(inner, p[0])
    assert float((border * p[0]).sum()) == 0 and float((outer * p[0]).sum()) == 0
    assert float((border * outer).sum()) == 0
    # the border shell reaches about 3 mm (4 voxels at 0.7 mm) in plane, the outer one 12 mm (17 voxels)
    assert border[3, 20, 22:26].sum() == 4 and border[3, 20, 26] == 0
    assert outer[3, 20, 26] == 1 and outer[3, 20, 38] == 1


def test_roi_encoder_sees_a_node_in_the_outer_shell_and_keeps_absolute_levels():
    torch.manual_seed(0)
    enc = RoiEncoder(2, SPACING, width=4)
    p = torch.zeros(1, 8, 32, 32)
    p[0, 3:5, 12:18, 12:18] = 1.0
    img = torch.zeros(1, 2, 8, 32, 32)
    node = img.clone()
    node[0, :, 4, 26:28, 26:28] = 3.0     # a bright spot 7 mm from the tumour border
    a, b = enc(img, p), enc(node, p)
    assert a.shape == (1, 9 * 4)
    # [mean, sd, max] x [inside, border, outer] x 4 features: the inside's and the border shell's do
    # not change; the outer shell's do
    inside_border = [s * 12 + r * 4 + j for s in range(3) for r in (0, 1) for j in range(4)]
    outer = [s * 12 + 8 + j for s in range(3) for j in range(4)]
    torch.testing.assert_close(a[0, inside_border], b[0, inside_border])
    assert not torch.allclose(a[0, outer], b[0, outer])
    # no normalisation: a brighter tumour gives other features
    assert not torch.allclose(enc(img + 1.0, p), a)


def test_roi_encoder_runs_in_float32_under_autocast():
    """Region sums over tens of thousands of voxels overflow float16; training runs under autocast,
    prediction in float32: the encoder is float32 in both."""
    torch.manual_seed(0)
    enc = RoiEncoder(2, SPACING, width=4)
    p = torch.zeros(1, 8, 32, 32)
    p[0, 2:6, 8:24, 8:24] = 1.0
    img = 300.0 * torch.randn(1, 2, 8, 32, 32)   # large activations, as a trained network may have
    plain = enc(img, p)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = enc(img, p)
    assert auto.dtype == torch.float32 and torch.isfinite(auto).all()
    torch.testing.assert_close(auto, plain)


# ---------------------------------------------------------------------------- gradients
def test_head_losses_update_the_roi_encoder_and_heads_never_the_unet():
    net = _roi_net(n_clinical=2).train()
    boxes = torch.randn(2, 4, *BOX)
    prob = net.box_probability(boxes)
    assert not prob.requires_grad
    heads = net.roi_heads(boxes, prob, torch.randn(2, 2))
    (heads["cls_logit"].sum() + heads["hazard_logits"].sum()).backward()
    seg_ids = {id(p) for p in net.segmentation_parameters()}
    assert all(p.grad is None for p in net.segmentation_parameters())
    enc = list(net.roi_encoder.parameters())
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in enc)
    assert all(id(p) not in seg_ids for p in enc)
    assert {id(p) for p in enc} <= {id(p) for p in net.head_parameters()}   # the heads' own AdamW
    # the plain forward (nnU-Net's step and predictor) returns the segmentation and records no heads
    with net.capture("heads") as sink:
        assert isinstance(net(torch.randn(1, 4, *BOX)), torch.Tensor) and sink == []
    with pytest.raises(RuntimeError, match="roi_heads"):
        net(torch.randn(1, 4, *BOX), return_heads=True)


# ---------------------------------------------------------------------------- background invariance
def _scene(shape, pad, rng, background_prob=0.0):
    """A tumour scene at the centre of ``shape`` (in-plane), surrounded by ``pad`` voxels of noise with
    a diffuse tumour probability of ``background_prob`` there."""
    z, y, x = shape
    image = torch.zeros(4, z, y + 2 * pad, x + 2 * pad)
    logits = torch.full((2, z, y + 2 * pad, x + 2 * pad), 0.0)
    if pad:
        image[:] = torch.from_numpy(rng.normal(0, 1, image.shape).astype(np.float32))
        q = float(np.log(background_prob / (1 - background_prob)))
        logits[1] = q
    core = torch.from_numpy(np.random.default_rng(3).normal(0, 1, (4, z, y, x)).astype(np.float32))
    image[:, :, pad:pad + y, pad:pad + x] = core
    inner = torch.full((z, y, x), -8.0)
    inner[2:6, 20:28, 18:26] = 8.0
    logits[1, :, pad:pad + y, pad:pad + x] = inner
    return image, logits


def test_patient_heads_do_not_change_when_background_is_added():
    """A clinical field of view: the same tumour and its surroundings inside a much larger image with
    noise and a diffuse 0.3 tumour probability everywhere else; the heads read the same box."""
    net = _roi_net()
    rng = np.random.default_rng(0)
    small_image, small_logits = _scene((8, 48, 48), 0, rng)
    big_image, big_logits = _scene((8, 48, 48), 60, rng, background_prob=0.3)
    # and inside the box, beyond the tumour's 3 mm margin: a diffuse 0.2 haze on the first and last
    # slices and a false-positive island 4 voxels across
    inner = big_logits[1, :, 60:108, 60:108]
    inner[[0, 7]] = float(np.log(0.2 / 0.8))
    inner[1:3, 10:14, 10:14] = 6.0
    heads_small, mass_small = net.patient_heads(small_logits, small_image, [], None)
    heads_big, mass_big = net.patient_heads(big_logits, big_image, [], None)
    for k in heads_small:
        torch.testing.assert_close(heads_small[k], heads_big[k])
    assert mass_big == pytest.approx(mass_small, rel=1e-5)
    # the whole-image soft sums of the "tumour_quantities" pathway are what the background inflates
    torch.manual_seed(0)
    whole = MultiTaskUNet(_unet(4), None, 0, 3, survival_head="discrete", n_time_bins=5,
                          voxel_volume_mm3=float(np.prod(SPACING))).eval()
    _, whole_small = whole.patient_heads(small_logits, small_image, [], None)
    _, whole_big = whole.patient_heads(big_logits, big_image, [], None)
    assert whole_big > 50 * whole_small


def test_tumour_probability_keeps_the_largest_component_and_its_margin():
    from nnunet_multitask.roi import tumour_probability
    p = torch.full((1, 8, 40, 40), 0.2)
    p[0, 3:5, 10:20, 10:20] = 0.9           # tumour
    p[0, 3:5, 30:33, 30:33] = 0.9           # a smaller island
    out = tumour_probability(p, SPACING)[0]
    assert torch.equal(out[3:5, 10:20, 10:20], p[0, 3:5, 10:20, 10:20])
    assert float(out[:, 30:33, 30:33].sum()) == 0
    assert float(out[3, 15, 22]) == pytest.approx(0.2) and float(out[3, 15, 25]) == 0   # 3 mm = 4 voxels
    assert float(out[0].sum()) == 0          # 3 slices (9 mm) away
    torch.testing.assert_close(tumour_probability(torch.full((1, 4, 8, 8), 0.3), SPACING),
                               torch.full((1, 4, 8, 8), 0.3))


# ---------------------------------------------------------------------------- nnU-Net end to end
@pytest.fixture(scope="module")
def roi_model(preprocessed_dataset):
    env = dict(train_env(preprocessed_dataset["env"]), MULTIREC_SEED="3")
    run([bin_of("nnUNetv2_train"), DATASET_ID, "3d_fullres", "0", "-tr", "MultiRecTrainer_ROI_smoke", "-device",
         "cpu"], env)
    folder = (preprocessed_dataset["root"] / "nnUNet_results" / preprocessed_dataset["raw"].name /
              "MultiRecTrainer_ROI_smoke__nnUNetPlans__3d_fullres")
    return dict(preprocessed_dataset, model_folder=folder)


def test_roi_trainer_trains_validates_and_predicts(roi_model, tmp_path):
    folder = roi_model["model_folder"]
    plans = json.loads((folder / "plans.json").read_text())
    assert plans["multitask_model"]["image_features"] == "tumour_roi"
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert any(k.startswith("roi_encoder.") for k in ckpt["network_weights"])
    log = ckpt["logging"]
    assert len(log["val_c_index"]) == 3 and np.isfinite(log["train_cls_losses"]).all()
    assert np.all(np.asarray(log["train_cls_losses"]) > 0)   # every case supervised: the head loss is not 0
    head_val = pd.read_csv(folder / "fold_0" / "validation" / "head_predictions.csv")
    splits = json.loads((roi_model["preprocessed"] / "splits_final.json").read_text())
    assert sorted(head_val["case_id"]) == sorted(splits[0]["val"])
    out = tmp_path / "pred"
    run([bin_of("nnUNetv2_predict_multitask"), "-i", str(roi_model["raw"] / "imagesTs"), "-o", str(out), "-d",
         DATASET_ID, "-c", "3d_fullres", "-tr", "MultiRecTrainer_ROI_smoke", "-f", "0", "-device", "cpu",
         "-npp", "0", "-nps", "0", "--disable_tta"], roi_model["env"])
    table = pd.read_csv(out / "predictions.csv", dtype={"case_id": str})
    n_test = len(list((roi_model["raw"] / "imagesTs").glob("*_0000.nii.gz")))
    assert len(table) == n_test and np.isfinite(table["risk_score"]).all()
    assert table["risk_score"].nunique() > 1
