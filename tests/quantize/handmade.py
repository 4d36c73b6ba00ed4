"""Hand-made backbones with a known quantization weakness, as runs `quantize` takes (`run=`): each loses
accuracy under post-training int8 for one stated reason, so a test can check that the right remedy fixes it."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from edgetl.data.imagefolder import load_images, scan
from edgetl.rundir import FinetuneRecord, RunData
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.train.run import Run


class FragileNet(nn.Module):
    """A conv net with one fragile layer: channel 7 of `stem` is a large, dense signal (hundreds)
    while the others span ~[0, 3]. Any per-tensor int8 range for that tensor either crushes the small
    channels (which carry the classes) or clips the large one, so every calibration method fails and
    only keeping the layers around that tensor in float helps. With `fragile=False` the same net
    has no outlier and quantizes plainly (the control)."""

    def __init__(self, fragile: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(8, 16, 1)
        self.tail = nn.Sequential(*(m for _ in range(4) for m in (nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())))
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.tail:  # variance-preserving, so the embedding itself is no harder than int8 allows
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if fragile:
            with torch.no_grad():
                self.stem.weight[7] = 0
                self.stem.weight[7, :, 1, 1] = 150.0
                self.stem.bias[7] = 500.0
                self.mix.weight[:, 7] = 0.0
        self.embedding_dim = 16

    def forward(self, x):
        x = torch.relu(self.mix(torch.relu(self.stem(x))))
        return torch.flatten(self.pool(self.tail(x)), 1)


def handmade_run(signs, tmp_path, backbone: nn.Module, name: str, config: dict | None = None) -> Run:
    """`backbone` with a head fitted to its float embeddings of signs["train"] (which is also its val split),
    as a run dir at tmp_path/name; `config` is its recorded recipe (what QAT reuses)."""
    spec = PreprocessSpec(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    folder = scan(signs["train"])
    loaded = load_images(folder.samples, spec.size)
    backbone = backbone.eval()
    with torch.no_grad():
        emb = backbone(torch.from_numpy(spec.normalize(loaded.images)))
    head = nn.Linear(backbone.embedding_dim, len(folder.classes))
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    mean, std = emb.mean(0), emb.std(0) + 1e-6
    for _ in range(300):  # a head fitted to the float embeddings
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head((emb - mean) / std), torch.from_numpy(loaded.labels))
        loss.backward()
        opt.step()
    with torch.no_grad():  # fold the standardisation into the head
        head.weight /= std
        head.bias -= head.weight @ mean
    path = tmp_path / name
    path.mkdir()
    np.savez(path / "head.npz", W=head.weight.detach().numpy(), b=head.bias.detach().numpy(), version=1)
    (path / "labels.json").write_text(json.dumps(list(folder.classes)))
    record = FinetuneRecord(
        stage="finetune", backbone=name, weights="none", classes=len(folder.classes), img_size=32,
        freeze="none", trainable_stages=(), val_top1=0.0, test_top1=None, epochs=0, head_epochs=0, best_epoch=0,
        seconds=0.0, seconds_embed=0.0, seconds_head=0.0, seconds_finetune=0.0, world_size=1,
        data=RunData(train_dir=str(signs["train"]), val_dir=str(signs["train"]), test_dir=None, train=0, val=0,
                     test=None), versions={}, config=config or {})
    return Run(path, backbone, head.eval(), folder.classes, spec, record)


def fragile_run(signs, tmp_path, fragile: bool = True) -> Run:
    return handmade_run(signs, tmp_path, FragileNet(fragile), "fragile" if fragile else "sturdy")


class RoundingNet(nn.Module):
    """A conv net whose second layer's weights all sit just above a rounding point: each is (k + 0.49) int8
    steps, the step set by one large weight per channel that reads a dead (always zero) channel. In float
    that weight does nothing; in int8 every other weight rounds down by half a step, so each output drops
    by about half a step times the sum of its (positive, ReLU'd) inputs: a mean shift many times the
    features' own spread, whichever activation ranges calibration picks. Bias correction removes the mean
    of that shift; what is left varies with each image's brightness. `relu`: a ReLU after the second
    layer (which the shift then also clips); `step`: the int8 weight step of the second layer."""

    def __init__(self, step: float = 0.1, relu: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            nn.init.kaiming_normal_(self.stem.weight, nonlinearity="relu")
            self.stem.weight[7] = 0.0
            self.stem.bias[7] = -1.0  # channel 7 is dead after the ReLU
            w = (torch.round(torch.randn(8, 8, 3, 3) * 0.75) + 0.49) * step
            w[:, 7] = 0.0
            w[:, 7, 1, 1] = 127 * step
            self.mix.weight.copy_(w)
            self.mix.bias.zero_()
        self.embedding_dim, self.relu = 8, relu

    def forward(self, x):
        x = self.mix(torch.relu(self.stem(x)))
        return torch.flatten(self.pool(torch.relu(x) if self.relu else x), 1)


def rounding_run(signs, tmp_path, **kw) -> Run:
    return handmade_run(signs, tmp_path, RoundingNet(**kw), "rounding", {"batch_size": 8, "augment": False})
