"""The training command's pieces: STN box targets and loss, optimizer groups of a fine-tune, a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from attnviz.models.zoo import ZooNet, ZooSpec
from attnviz.train import box_targets, build_parser, param_groups, stn_box_loss, train


def test_box_targets_square_and_anisotropic() -> None:
    boxes = torch.tensor([[8, 16, 24, 56], [0, 0, 64, 64], [30, 30, 32, 33]])  # (x0, y0, x1, y1) in a 64² image
    aniso = box_targets(boxes, 64, margin=1.0, square=False)
    torch.testing.assert_close(aniso[0], torch.tensor([0.25, 0.625, 16 / 32 - 1, 36 / 32 - 1]))
    torch.testing.assert_close(aniso[1], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(aniso[2, :2], torch.tensor([0.2, 0.2]))  # a window never zooms in past the head's bound
    square = box_targets(boxes, 64, margin=1.0)
    torch.testing.assert_close(square[0], torch.tensor([0.625, 0.625, 16 / 32 - 1, 36 / 32 - 1]))


def test_stn_box_loss_is_zero_on_the_target_window() -> None:
    """The map head's (s_x, s_y, t_x, t_y) are compared with the anisotropic target. With zero score weights its window is
    centred and its size set by the biases: on a centred box of that size the loss vanishes, on a shifted one it does not."""
    torch.manual_seed(0)
    model = ZooNet(ZooSpec("stn", "input", (("localizer", "map"),))).eval()
    centred = torch.tensor([[20, 12, 44, 52]])  # centre (32, 32): t = (0, 0)
    t = box_targets(centred, 64, square=False)[0]
    head = model.stn.head
    with torch.no_grad():
        s = (t[:2] - head.min_scale) / (1 - head.min_scale)
        head.size.weight.zero_()
        head.size.bias.copy_(torch.log(s / (1 - s)))
    x = torch.randn(2, 3, 64, 64)
    assert float(stn_box_loss(model, x, centred.expand(2, 4))) < 1e-10
    assert float(stn_box_loss(model, x, (centred + torch.tensor([10, 0, 10, 0])).expand(2, 4))) > 0.05


def test_new_parameters_get_their_own_learning_rate() -> None:
    args = build_parser().parse_args(["--model", "nonlocal_resnet", "--lr", "1e-3", "--new-lr-mult", "10"])
    model = ZooNet(ZooSpec("nonlocal", "stage2"))
    fresh = {n for n, _ in model.named_parameters() if n.startswith("context.")}
    groups = param_groups(model, args, fresh)
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for n, p in model.named_parameters() if n in fresh}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_tiny_fine_tune_writes_weights_and_card(tmp_path: Path) -> None:
    """Two steps of a fine-tune from a plain backbone: only the block is new, and the card names the recipe."""
    base = ZooNet(ZooSpec(None, "none"))
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    argv = ["--model", "nonlocal_resnet", "--init", str(tmp_path / "plain.safetensors"), "--steps", "2", "--batch", "4",
            "--new-lr-mult", "10", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path)]
    args = build_parser().parse_args(argv)
    args.argv = argv
    card = train(args)
    assert card["training"]["new_lr_mult"] == 10.0 and card["training"]["steps"] == 2
    weights = load_file(str(tmp_path / "nonlocal_resnet.safetensors"))
    torch.testing.assert_close(weights["stem.0.weight"], base.state_dict()["stem.0.weight"], atol=0.05, rtol=0)
    assert json.loads((tmp_path / "nonlocal_resnet.json").read_text())["sha256"] == card["sha256"]
