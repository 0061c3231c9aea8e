"""Image clustering (notebooks 05 and 06): data, the multimodal model, training and tables.

One module per concern; import the one you need (this package imports none of them):

* ``images``: :class:`~icc_utils.vision.images.ImageSet`, digits, ImageFolder trees, domain
  shifts, class-disjoint splits;
* ``shapes``: the procedural shapes set and its attribute-combination split;
* ``datasets``: loaders for the paper's conditional data (Stanford 40 Actions, ImageNet with
  attributes), from a user's own copy;
* ``episodes``: seeded image and conditional episodes, save/load, manifests;
* ``tower``: the embedded SigLIP-architecture tower, its image processor and pretraining;
* ``vlm``: LLaVA models with pooled image tokens (the embedded stand-in and the paper's),
  :class:`~icc_utils.vision.vlm.VisionICC`, image prompts, attention between images;
* ``train``: projector alignment and LoRA fine-tuning on image episodes;
* ``baselines``: per-episode score rows, chance, k-means on frozen features, Table 2;
* ``conditional``: notebook 06's data, captioners, paired episodes and Table 3;
* ``ictc``: the IC|TC baseline (captions -> labels -> c names -> assignments);
"""
