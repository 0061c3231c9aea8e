"""icc_utils.vision (tower, vlm, train) on tiny random LLaVA models (SigLIP-architecture tower + tiny Llama /
Qwen2 text model)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from icc_utils.cache import ReplyCache  # noqa: E402
from icc_utils.finetune import FinetuneConfig  # noqa: E402
from icc_utils.vision import tower as T, train as FT, vlm as V  # noqa: E402


@dataclass(frozen=True)
class _Set:
    """A minimal ImageSet: 8x8 grayscale images, two classes (bright top half / bright bottom half)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list = field(default_factory=lambda: ["top", "bottom", "left"])
    attributes: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class _Ep:
    id: str
    indices: list
    labels: list
    params: dict = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return len(self.labels)

    @property
    def n_clusters(self) -> int:
        return len(set(self.labels))


def _imageset(n_per_class: int = 12, seed: int = 0) -> _Set:
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for c in range(3):
        for _ in range(n_per_class):
            x = rng.integers(0, 40, (8, 8))
            if c == 0:
                x[:4] += 200
            elif c == 1:
                x[4:] += 200
            else:
                x[:, :4] += 200
            imgs.append(np.clip(x, 0, 255).astype(np.uint8))
            labels.append(c)
    return _Set("toy", np.stack(imgs), np.array(labels))


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tower")
    rec = T.pretrain_tower(_imageset(), ["top", "bottom"], d,
                           T.TowerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, epochs=15, batch_size=8))
    return d, rec


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def vlm_dir(request, tower_dir, tmp_path_factory):
    lm = request.getfixturevalue(f"tiny_{request.param}_dir")
    return V.build_embedded_llava(tower_dir[0], tmp_path_factory.mktemp(f"vlm-{request.param}"), language_model=str(lm))


def test_pool_features_shapes_and_values():
    feats = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    assert V.pool_features(feats, 1) is feats
    p2 = V.pool_features(feats, 2)
    assert p2.shape == (2, 4, 3)
    grid = feats[0, :, 0].reshape(4, 4)
    assert p2[0, 0, 0].item() == pytest.approx(grid[:2, :2].mean().item())
    assert p2[0, 3, 0].item() == pytest.approx(grid[2:, 2:].mean().item())
    assert V.pool_features(feats, 4).shape == (2, 1, 3)
    assert V.pool_features(feats, 3).shape == (2, 1, 3)        # no padding: floor(4/3) = 1
    with pytest.raises(ValueError, match="kernel=5"):
        V.pool_features(feats, 5)
    with pytest.raises(ValueError, match="square grid"):
        V.pool_features(torch.zeros(1, 6, 2), 1)


def test_table7_token_counts_on_a_siglip_384_tower(tiny_qwen2_dir):
    """The paper model's geometry (SigLIP 384/14, 27x27 grid): 729/169/81/9 tokens for k=1/2/3/9,
    counted from real features, and the LLaVA forward accepts exactly that many image tokens."""
    from transformers import (AutoConfig, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration,
                              SiglipVisionConfig)

    tok = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    tok.add_special_tokens({"additional_special_tokens": [V.IMAGE_TOKEN]})
    text = AutoConfig.from_pretrained(tiny_qwen2_dir)
    text.vocab_size = len(tok)
    vision = SiglipVisionConfig(image_size=384, patch_size=14, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32)
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                      image_token_id=tok.convert_tokens_to_ids(V.IMAGE_TOKEN),
                      vision_feature_select_strategy="full", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    px = torch.randn(1, 3, 384, 384)
    for k, expected in [(1, 729), (2, 169), (3, 81), (9, 9)]:
        V.set_pooling(model, k)
        assert V.tokens_per_image(model, k) == expected
        feats = model.model.get_image_features(pixel_values=px).pooler_output
        assert feats[0].shape[0] == expected
        ids = tok(V.IMAGE_TOKEN * expected + "hi", return_tensors="pt").input_ids
        with torch.no_grad():
            model(input_ids=ids, pixel_values=px)
        short = tok(V.IMAGE_TOKEN * (expected - 1) + "hi", return_tensors="pt").input_ids
        with pytest.raises(Exception, match="do not match"):
            with torch.no_grad():
                model(input_ids=short, pixel_values=px)
    with pytest.raises(ValueError, match="kernel=28"):
        V.set_pooling(model, 28)


def test_pretrained_tower_learns_its_classes(tower_dir):
    _, rec = tower_dir
    assert rec["classes"] == ["bottom", "top"] and rec["n_images"] == 24
    assert rec["history"][-1]["train_accuracy"] >= 0.9
    assert rec["history"][-1]["train_accuracy"] > rec["history"][0]["train_accuracy"] or \
        rec["history"][0]["train_accuracy"] == 1.0


def test_tower_can_learn_attribute_heads_instead_of_classes(tmp_path):
    base = _imageset()
    # two attributes of the toy images: which half is bright, and whether the class index is even
    attrs = {"half": np.array([["top", "bottom", "left"][l] for l in base.labels]),
             "parity": np.array(["even" if l % 2 == 0 else "odd" for l in base.labels])}
    s = _Set("toy-attrs", base.images, base.labels, attributes=attrs)
    cfg = T.TowerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, epochs=15,
                        batch_size=8)
    rec = T.pretrain_tower(s, ["top", "bottom", "left"], tmp_path, cfg, attribute_keys=["half", "parity"])
    assert rec["targets"] == ["half", "parity"] and rec["classes"] == {"half": ["bottom", "left", "top"],
                                                                       "parity": ["even", "odd"]}
    assert rec["history"][-1]["train_accuracy"] >= 0.9
    # same config and data, other targets: retrained, not reused
    again = T.pretrain_tower(s, ["top", "bottom", "left"], tmp_path, cfg)
    assert again["targets"] == ["class"] and again["classes"] == ["bottom", "left", "top"]


@pytest.mark.parametrize("objective", ["contrastive", "reconstruct", "classify+contrastive"])
def test_tower_objectives_without_labels_train_and_keep_an_unseen_class_apart(objective, tmp_path):
    """The label-free objectives train (their loss falls) and, trained on two classes, the tower's features still
    tell the third class (never seen) from them: its images are nearer each other than the seen classes'."""
    s = _imageset()
    cfg = T.TowerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, epochs=12,
                        batch_size=8, objective=objective)
    rec = T.pretrain_tower(s, ["top", "bottom"], tmp_path, cfg)
    assert rec["config"]["objective"] == objective and rec["history"][-1]["loss"] < rec["history"][0]["loss"]
    from transformers import SiglipVisionModel

    tower = SiglipVisionModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        f = tower(pixel_values=T.pixel_values(T.image_processor_for(8), s.images)).last_hidden_state.mean(1).numpy()
    centres = np.stack([f[s.labels == c].mean(0) for c in range(3)])
    within = np.linalg.norm(f[s.labels == 2] - centres[2], axis=1).mean()
    assert within < min(np.linalg.norm(centres[2] - centres[:2], axis=1))


def test_a_tower_objective_outside_the_allowed_parts_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"objective='classify\+sketch' is not allowed"):
        T.pretrain_tower(_imageset(), ["top", "bottom"], tmp_path, T.TowerConfig(epochs=1, objective="classify+sketch"))


def test_projector_alignment_trains_only_the_projector(vlm_dir, tmp_path):
    s = _imageset(n_per_class=4)
    caps = [["bright top", "bright bottom", "bright left"][l] for l in s.labels]
    out = tmp_path / "aligned"
    rec = FT.align_projector(vlm_dir, s, caps, out, kernels=(4, 2), epochs=2, batch_size=4, learning_rate=5e-3)
    assert [h["kernel"] for h in rec["history"][:4]] == [4, 2, 4, 2]
    assert rec["final_loss"] < rec["history"][0]["loss"]
    before, _, _ = V.load_vlm(str(vlm_dir))
    after, _, _ = V.load_vlm(str(out))
    b, a = before.state_dict(), after.state_dict()
    changed = {k for k in b if not torch.equal(b[k], a[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)
    # the aligned directory is a plain LLaVA model; a second call with the same inputs reuses it
    assert FT.align_projector(vlm_dir, s, caps, out, kernels=(4, 2), epochs=2, batch_size=4,
                              learning_rate=5e-3)["history"] == rec["history"]
    with pytest.raises(ValueError, match="one per image"):
        FT.align_projector(vlm_dir, s, caps[:-1], tmp_path / "x")


def test_embedded_style_llava_prompt_matches_features(vlm_dir):
    model, tok, proc = V.load_vlm(str(vlm_dir), kernel=2)
    assert V.feature_grid(model) == 4 and V.tokens_per_image(model, 2) == 4
    s = _imageset()
    ep = _Ep("e0", [0, 13, 1, 14], [0, 1, 0, 1], {"n_clusters": 2})
    prompt = V.image_prompt(tok, ep, V.tokens_per_image(model, 2))
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    image_id = model.config.image_token_id
    assert int((ids == image_id).sum()) == 4 * 4
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=T.pixel_values(proc, s.images[ep.indices]))
    assert out.logits.shape[1] == ids.shape[1]


def test_tower_weights_survive_assembly(tower_dir, vlm_dir):
    from transformers import SiglipVisionModel

    tower = SiglipVisionModel.from_pretrained(tower_dir[0])
    model, _, _ = V.load_vlm(str(vlm_dir))
    inner = model.model.vision_tower.state_dict()
    for k, v in tower.state_dict().items():
        assert torch.equal(inner[k], v), k


def test_generation_is_batched_cached_and_order_independent(vlm_dir, tmp_path):
    s = _imageset()
    eps = [_Ep(f"e{i}", list(range(i, i + 3 + i)), [0] * (3 + i), {"n_clusters": 2}) for i in range(3)]
    icc = V.VisionICC(str(vlm_dir), kernel=4, batch_size=2)
    cache = ReplyCache(tmp_path / "r.jsonl")
    preds = icc.predict(eps, s, constrained=True, cache=cache)
    assert all(p.well_formed for p in preds)        # constrained: always a list of n labels in 0..c-1
    assert [len(p.labels) for p in preds] == [3, 4, 5]
    alone = V.VisionICC(str(vlm_dir), kernel=4, batch_size=1).predict(eps[::-1], s, constrained=True)
    assert [p.reply for p in alone[::-1]] == [p.reply for p in preds]
    again = icc.predict(eps, s, constrained=True, cache=ReplyCache(tmp_path / "r.jsonl"))
    assert all(p.cached for p in again) and [p.reply for p in again] == [p.reply for p in preds]
    # other images -> another cache key
    s2 = _Set("toy2", 255 - s.images, s.labels)
    assert not any(p.cached for p in icc.predict(eps[:1], s2, constrained=True, cache=cache))


def test_captions_are_per_image_batched_and_cached(vlm_dir, tmp_path):
    s = _imageset(n_per_class=3)
    icc = V.VisionICC(str(vlm_dir), kernel=2, batch_size=4)
    cache = ReplyCache(tmp_path / "captions.jsonl")
    caps = icc.caption(s, [0, 4, 7], max_new_tokens=5, cache=cache)
    assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    assert len(cache) == 3                              # one cached reply per image, written as produced
    # an image captioned alone gets the caption it got in a batch (greedy, left padding)
    alone = V.VisionICC(str(vlm_dir), kernel=2, batch_size=1).caption(s, [4], max_new_tokens=5)
    assert alone == [caps[1]]
    # cached: a second call with the same cache generates nothing
    icc.chat.generate_batch = None                      # would raise if called
    assert icc.caption(s, [0, 4, 7], max_new_tokens=5, cache=ReplyCache(tmp_path / "captions.jsonl")) == caps


def test_image_finetune_adapter_and_projector_round_trip(vlm_dir, tmp_path):
    from peft import PeftModel

    s = _imageset()
    eps = [_Ep(f"t{i}", [i, 12 + i, i + 1, 13 + i], [0, 1, 0, 1], {"n_clusters": 2}) for i in range(4)]
    cfg = FinetuneConfig(model="unused", lora_r=4, lora_alpha=8, per_device_batch_size=2,
                         gradient_accumulation_steps=1, save_steps=1, learning_rate=1e-2)
    res = FT.train_image_icc(cfg, vlm_dir, 2, eps, s, tmp_path / "adapter")
    assert res.finished and res.global_step == 2
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "loss_curve.csv"} <= files
    acfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert acfg["modules_to_save"] == ["multi_modal_projector"]
    # the trained projector and LoRA weights come back on load, and differ from the base model's
    base, _, _ = V.load_vlm(str(vlm_dir), kernel=2)
    tuned, _, _ = V.load_vlm(str(vlm_dir), adapter=str(tmp_path / "adapter"), kernel=2)
    assert isinstance(tuned, PeftModel)
    b = base.model.multi_modal_projector.projector.linear_1.weight
    t = tuned.get_base_model().model.multi_modal_projector.modules_to_save["default"].projector.linear_1.weight
    assert not torch.equal(b, t)
    trained = res.model.get_base_model().model.multi_modal_projector.modules_to_save["default"].projector.linear_1.weight
    assert torch.equal(t, trained.detach())
    # LoRA went to the language model only, never to the vision tower
    names = [n for n, _ in tuned.named_parameters() if "lora_" in n]
    assert names and all("language_model" in n for n in names)
    # a rerun with the same config and data reuses the finished adapter
    assert FT.train_image_icc(cfg, vlm_dir, 2, eps, s, tmp_path / "adapter").reused
