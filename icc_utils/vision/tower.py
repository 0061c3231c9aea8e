"""The embedded vision tower (SigLIP architecture): its configuration, image processor and
supervised pretraining on the training classes only. It is our stand-in for SigLIP, not SigLIP.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..io import write_json
from .images import ImageSet, images_hash, to_rgb

if TYPE_CHECKING:
    import torch
    from transformers import SiglipImageProcessor, SiglipVisionConfig


#: Parts of a tower's training objective (``TowerConfig.objective`` joins them with "+").
TOWER_OBJECTIVES = ("classify", "contrastive", "reconstruct")


@dataclass(frozen=True)
class TowerConfig:
    """The embedded vision tower (SigLIP architecture) and its supervised pretraining."""

    image_size: int = 8            # digits are 8x8
    patch_size: int = 2            # a 4x4 feature grid: k = 1/2/4 give 16/4/1 tokens per image
    hidden_size: int = 96
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 192
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    objective: str = "classify"    # "+"-joined parts of TOWER_OBJECTIVES (see pretrain_tower)
    temperature: float = 0.2       # contrastive: NT-Xent temperature
    shift: int = 1                 # contrastive: random translation of each view, pixels
    noise: float = 0.2             # contrastive: Gaussian pixel noise of each view (pixels scaled to [-1, 1])

    def siglip_config(self) -> "SiglipVisionConfig":
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig(image_size=self.image_size, patch_size=self.patch_size, num_channels=3,
                                  hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                                  num_attention_heads=self.num_attention_heads,
                                  intermediate_size=self.intermediate_size)


def image_processor_for(image_size: int) -> "SiglipImageProcessor":
    """A SigLIP image processor for the embedded tower: nearest resize, [0,1] scale, mean/std 0.5."""
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(do_resize=True, size={"height": image_size, "width": image_size}, resample=0,
                                do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=False)


def pixel_values(processor, images: np.ndarray) -> "torch.Tensor":
    """``(N, 3, S, S)`` float pixels for uint8 images through the model's image processor."""
    rgb = to_rgb(images)
    return processor(images=list(rgb), return_tensors="pt")["pixel_values"]


def check_objective(objective: str, name: str = "objective") -> list[str]:
    """The parts of a ``"+"``-joined tower objective (``"classify+reconstruct"``), checked."""
    parts = [p.strip() for p in str(objective).split("+")]
    bad = [p for p in parts if p not in TOWER_OBJECTIVES]
    if bad or len(set(parts)) < len(parts):
        raise ValueError(f"{name}={objective!r} is not allowed; join distinct parts of {list(TOWER_OBJECTIVES)} "
                         "with '+', e.g. 'classify+reconstruct'")
    return parts


def augment(pixels: "torch.Tensor", config: TowerConfig, generator: "torch.Generator") -> "torch.Tensor":
    """A random view of each image (pixels in [-1, 1]): a translation by up to ``config.shift`` pixels (the
    border filled with the background, -1) and Gaussian noise of std ``config.noise``; colours are kept."""
    import torch

    n, ch, h, w = pixels.shape
    k = int(config.shift)
    padded = torch.nn.functional.pad(pixels, (k, k, k, k), value=-1.0)
    dy, dx = (torch.randint(0, 2 * k + 1, (2, n), generator=generator) if k else torch.zeros(2, n, dtype=torch.long))
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return out + config.noise * torch.randn(out.shape, generator=generator)


def nt_xent(z: "torch.Tensor", temperature: float) -> tuple["torch.Tensor", int]:
    """SimCLR's loss on ``2n`` embeddings (rows i and i+n are two views of one image): cross-entropy of each
    view against its partner among the other ``2n - 1``; also how many views find their partner first."""
    import torch

    z = torch.nn.functional.normalize(z, dim=-1)
    n2 = len(z)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    target = (torch.arange(n2) + n2 // 2) % n2
    return torch.nn.functional.cross_entropy(sim, target), int((sim.argmax(-1) == target).sum())


def pretrain_tower(imageset: ImageSet, classes: Sequence[str], out_dir: str | Path, config: TowerConfig = TowerConfig(),
                   attribute_keys: Sequence[str] = ()) -> dict:
    """Train the embedded SigLIP-architecture tower to classify ``classes`` (training classes only).

    ``config.objective``: ``"classify"``: mean-pooled last hidden state -> linear head, cross-entropy;
    ``"reconstruct"``: a small decoder rebuilds the image from the mean-pooled features of a noisy copy
    (what k-means and a one-token image see keeps what the pixels hold);
    ``"contrastive"``: SimCLR (two augmented views per image, :func:`augment`, NT-Xent through a small
    projection head, :func:`nt_xent`), which needs no labels and keeps what tells images apart, so
    classes the tower never saw stay apart (a classifier of the training classes maps an unseen class
    onto them); parts joined with ``"+"`` add their losses. AdamW, seeded. With
    ``attribute_keys`` the tower learns those attributes instead, one head each (summed losses;
    ``train_accuracy`` is then the mean over heads): features that name each attribute
    separately carry over to unseen attribute combinations, where a head over the combinations
    themselves memorises them (notebook 06). The tower (without the heads) is saved to
    ``out_dir`` with its image processor; a finished run with the same config, data and targets
    is reused. Returns the run's record (train accuracy per epoch, seconds).
    """
    import time

    import torch
    from transformers import SiglipVisionModel

    out_dir = Path(out_dir)
    keep = [i for i in range(imageset.n_images) if imageset.class_names[int(imageset.labels[i])] in set(classes)]
    data_id = images_hash(imageset.images[keep])
    targets = list(attribute_keys) or ["class"]
    record_path = out_dir / "tower_training.json"
    if record_path.exists():
        rec = json.loads(record_path.read_text())
        if rec.get("config") == asdict(config) and rec.get("data_sha256") == data_id and \
                rec.get("targets", ["class"]) == targets:
            return rec
    torch.manual_seed(config.seed)
    tower = SiglipVisionModel(config.siglip_config())
    proc = image_processor_for(config.image_size)
    x = pixel_values(proc, imageset.images[keep])
    if attribute_keys:
        columns = [[str(imageset.attributes[k][i]) for i in keep] for k in attribute_keys]
    else:
        columns = [[imageset.class_names[int(imageset.labels[i])] for i in keep]]
    names = [sorted(set(col)) for col in columns]
    ys = [torch.tensor([n.index(v) for v in col]) for n, col in zip(names, columns)]
    heads = torch.nn.ModuleList(torch.nn.Linear(config.hidden_size, len(n)) for n in names)
    opt = torch.optim.AdamW(list(tower.parameters()) + list(heads.parameters()), lr=config.learning_rate)
    gen = torch.Generator().manual_seed(config.seed)
    history, t0 = [], time.perf_counter()
    n = len(keep)
    parts = check_objective(config.objective)
    supervised, contrastive, reconstruct = (p in parts for p in TOWER_OBJECTIVES)
    if contrastive:
        projection = torch.nn.Sequential(torch.nn.Linear(config.hidden_size, config.hidden_size), torch.nn.GELU(),
                                         torch.nn.Linear(config.hidden_size, 32))
        opt.add_param_group({"params": list(projection.parameters())})
    if reconstruct:
        decoder = torch.nn.Sequential(torch.nn.Linear(config.hidden_size, 2 * config.hidden_size), torch.nn.GELU(),
                                      torch.nn.Linear(2 * config.hidden_size, x[0].numel()))
        opt.add_param_group({"params": list(decoder.parameters())})
    for epoch in range(config.epochs):
        tower.train()
        order = torch.randperm(n, generator=gen)
        correct, total = 0, 0
        for s in range(0, n, config.batch_size):
            idx = order[s:s + config.batch_size]
            loss = 0
            if supervised:
                feats = tower(pixel_values=x[idx]).last_hidden_state.mean(1)
                for head, y in zip(heads, ys):
                    logits = head(feats)
                    loss = loss + torch.nn.functional.cross_entropy(logits, y[idx])
                    correct += int((logits.argmax(-1) == y[idx]).sum())
                    total += len(idx)
            if contrastive and len(idx) > 1:
                views = torch.cat([augment(x[idx], config, gen), augment(x[idx], config, gen)])
                z = projection(tower(pixel_values=views).last_hidden_state.mean(1))
                c_loss, hits = nt_xent(z, config.temperature)
                loss = loss + c_loss
                correct, total = correct + hits, total + len(z)
            if reconstruct:
                noisy = x[idx] + config.noise * torch.randn(x[idx].shape, generator=gen)
                out = decoder(tower(pixel_values=noisy).last_hidden_state.mean(1))
                loss = loss + torch.nn.functional.mse_loss(out, x[idx].flatten(1))
            if torch.is_tensor(loss):   # a contrastive-only batch of one image has no pair: nothing to learn
                opt.zero_grad()
                loss.backward()
                opt.step()
        last = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        history.append({"epoch": epoch + 1, "loss": last, "train_accuracy": correct / max(total, 1)})
    tower.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    tower.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    rec = {"config": asdict(config), "targets": targets, "classes": names[0] if not attribute_keys else
           dict(zip(attribute_keys, names)), "n_images": n, "data_sha256": data_id,
           "history": history, "seconds": round(time.perf_counter() - t0, 2)}
    write_json(record_path, rec)
    return rec
