"""Published scoring conventions as named presets for `metrics.preset`.

Each preset sets every MetricsConfig field that differs between published protocols, so a table
can say which paper's numbers it is comparable with; fields the user writes explicitly win
(core/config.py `load_config`). Pure data: config validation imports it before any model loads.

| preset | DINO | CLIP (I, T) | image scale | pairing, reference set | CLIP-T scale | source |
|---|---|---|---|---|---|---|
| dreambench | dino-vits16 | clip-vit-b32 | raw | all-pairs, all | raw | [1] [2] |
| custom-diffusion | dino-vits16 | clip-vit-b32 | raw | all-pairs, all | w2.5 | [2] |
| dreambench++ | dino-vits8 | clip-vit-b32 | x100 | one-to-one, first | x100 | [3] |

[1] Ruiz et al., DreamBooth (CVPR 2023, arXiv:2208.12242) section 4.1: DINO = mean pairwise cosine between
    ViT-S/16 DINO embeddings of generated and real images, CLIP-I the same with CLIP, CLIP-T the
    prompt-image CLIP cosine; no evaluation code was released. Its preprocessing is taken from [2].
[2] adobe-research/custom-diffusion `customconcept101/evaluate.py`: DINO = torch.hub dino_vits16 after
    Resize(256, bicubic) / CenterCrop(224) / ImageNet mean-std; CLIP = `clip.load("ViT-B/32")` after
    Resize(224, bicubic) / CenterCrop(224) / OpenAI mean-std; image metrics = np.mean over every
    generated x target pair (`image_feats @ image_feats_ref.T`); text alignment = CLIPScore
    `w * clip(cos, 0)` with w = 2.5, on the prompts.json text as written, no prefix.
[3] yuangpeng/dreambench_plus `dreambench_plus/metrics/dino_score.py` and `clip_score.py`: DINO v1 =
    torch.hub dino_vits8 with the same 256/224 ImageNet recipe; CLIP = HF openai/clip-vit-base-patch32
    (CLIPProcessor: shorter side 224 bicubic, centre crop 224, OpenAI mean-std); every score is
    100 x cosine; images are paired one-to-one (src_image/<id>/i_j.jpg with tgt_image/<id>/i_j.jpg,
    the single image each generation was conditioned on); CLIP-T text = the caption that names the
    subject (`prompt_gt`). Its DINOv2 score and GPT ratings are not reproduced here.

Named deviations, the same in every preset:
- Images load through persobench's one loader (EXIF orientation applied, transparency composited on
  white), as DreamBench++'s `load_image` does; custom-diffusion's `evaluate.py` opens and converts
  without either, so on a rotated or transparent file `dreambench` / `custom-diffusion` scores differ from
  that script's (on DreamBench's own JPEGs, which carry neither, they agree).
- CLIP's centre crop is torchvision's (offset round((side - 224) / 2)); DreamBench++ runs HF's
  CLIPProcessor, whose offset is floor((side - 224) / 2): a one-pixel shift on some odd-sized images.

`clip_t_text` stays `class` (the prompt with the class noun in place of the identifier) in every
preset: [3] scores the caption naming the subject, [1] and [2] do not say which text (an identifier
token like "sks" is meaningless to CLIP); it is still written next to every score.
"""

from __future__ import annotations

from typing import Any

from ...core.config import metric_presets

_REAL = {"dino_backbone": "dino-vits16", "clip_backbone": "clip-vit-b32", "image_scale": "raw", "pairing": "all-pairs",
         "reference_set": "all", "clip_t_text": "class"}

PRESETS: dict[str, dict[str, Any]] = {
    "dreambench": {**_REAL, "clip_t_scale": "raw"},
    "custom-diffusion": {**_REAL, "clip_t_scale": "w2.5"},
    "dreambench++": {**_REAL, "dino_backbone": "dino-vits8", "image_scale": "x100", "pairing": "one-to-one",
                     "reference_set": "first", "clip_t_scale": "x100"},
}


_DOCS = {
    "dreambench": "DreamBooth's DreamBench protocol (Ruiz et al. 2023, Table 1)",
    "custom-diffusion": "Custom Diffusion's evaluate.py conventions (CLIP-T as 2.5 x cosine)",
    "dreambench++": "DreamBench++'s DINO / CLIP conventions (ViT-S/8, one-to-one, x100)",
}
for _name, _fields in PRESETS.items():
    metric_presets.register(_name, _DOCS[_name])(_fields)
