import numpy as np
import pytest
from PIL import Image

from persobench.datasets import load_dreambench
from persobench.datasets.dreambench import load_image
from persobench.errors import UserError
from persobench.toyworld.plugin import TOYBENCH
from persobench.toyworld.render import render
from persobench.toyworld.tokenizer import build_tokenizer_files
from persobench.toyworld.toybench import export_toybench
from persobench.toyworld.world import Identity, Pose, Scene, vocabulary_words


def test_dreambench_layout_is_parsed(dreambench):
    bench = load_dreambench(dreambench)
    assert len(bench.subjects) == 30
    assert len(bench.object_prompts) == 25 and len(bench.live_prompts) == 25
    live = {s.name for s in bench.subjects if s.kind == "live"}
    assert live == {"cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"}
    dog = next(s for s in bench.subjects if s.name == "dog")
    assert dog.class_noun == "dog" and len(dog.image_paths) >= 4
    assert "a {0} {1} wearing a red hat" in bench.prompts_for(dog)
    assert bench.object_prompts[0] == "a {0} {1} in the jungle"


def test_renderer_is_deterministic_in_the_scene():
    ident = Identity("cup", "red", "blue", "dotted", "fine", 0.3)
    scene = Scene(ident, Pose(0.5, 0.55, 0.3, 5.0, True), context="beach", seed=42)
    a, b = render(scene), render(scene)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    other = render(Scene(ident, scene.pose, context="beach", seed=43))
    assert not np.array_equal(a.image, other.image)  # the seed moves the background texture
    assert 0.1 < a.mask.mean() < 0.7  # the subject is a real, sizeable region



def test_renderer_counts_the_secondary_colour_only_where_it_shows():
    pose = Pose(0.5, 0.55, 0.3, 0.0, False)

    def shown(cls, pattern, **kw):
        return render(Scene(Identity(cls, "blue", "yellow", pattern, "coarse", 0.0), pose, seed=1, **kw)).secondary_pixels

    assert shown("ball", "plain") == 0  # no pattern, no trim: the secondary colour is nowhere
    assert shown("ball", "checkered") > 100 and shown("vase", "plain") > 0  # pattern / the vase's lip
    repainted = Scene(Identity("ball", "blue", "red", "checkered", "coarse", 0.0), pose, prop="red", seed=1)
    assert render(repainted).secondary_pixels == 0  # "a red ball" repaints the primary into the secondary's colour
    assert 0 < shown("cat", "plain", accessory="hat") < shown("cat", "plain")  # the hat covers the inner ears
    image = render(Scene(Identity("ball", "blue", "yellow", "checkered", "coarse", 0.0), pose, seed=1)).image
    yellow = (image[..., 0] > 200) & (image[..., 1] > 170) & (image[..., 2] < 90)
    assert abs(int(yellow.sum()) - shown("ball", "checkered")) < 0.25 * shown("ball", "checkered")

def test_toybench_export_reads_with_the_dreambench_loader(tmp_path):
    out = export_toybench(tmp_path / "tb", per_class=2, references=4)
    bench = load_dreambench(out)
    assert len(bench.subjects) == 10
    assert {s.class_noun for s in bench.subjects} == {"ball", "box", "vase", "cup", "cat"}
    assert all(len(s.image_paths) == 4 for s in bench.subjects)
    assert [s.kind for s in bench.subjects if s.class_noun == "cat"] == ["live", "live"]
    again = export_toybench(tmp_path / "tb2", per_class=2, references=4)
    assert (out / "ball1" / "00.jpg").read_bytes() == (again / "ball1" / "00.jpg").read_bytes()


def test_shipped_toybench_matches_a_fresh_export(tmp_path):
    fresh = export_toybench(tmp_path / "tb")
    shipped = sorted(p.relative_to(TOYBENCH) for p in TOYBENCH.rglob("*") if p.is_file())
    assert shipped == sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert all((TOYBENCH / p).read_bytes() == (fresh / p).read_bytes() for p in shipped)


def test_every_toy_word_is_one_token(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(build_tokenizer_files(tmp_path / "tok"))
    split = [w for w in vocabulary_words() if len(tok(w).input_ids) != 3]
    assert split == []
    assert tok.model_max_length == 24
    assert len(tok("an unseen wordzz").input_ids) > 4  # byte-level fallback still tokenizes anything


@pytest.mark.parametrize(
    "writer, message",
    [
        (lambda p: p.write_bytes(b"not an image at all"), "cannot be read"),
        (lambda p: Image.new("RGB", (1, 1)).save(p, format="PNG"), "at least 16 px"),
        (lambda p: Image.new("I;16", (32, 32)).save(p, format="PNG"), "16-bit"),
    ],
)
def test_bad_images_name_the_file(tmp_path, writer, message):
    path = tmp_path / "bad.png"
    writer(path)
    with pytest.raises(UserError, match=message) as e:
        load_image(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "L", "P"])
def test_other_8bit_modes_become_rgb(tmp_path, mode):
    path = tmp_path / "x.jpg" if mode == "CMYK" else tmp_path / "x.png"
    Image.new(mode, (32, 32)).save(path)
    assert load_image(path).mode == "RGB"


def test_a_custom_folder_gets_dreambenchs_prompts_for_its_class(tmp_path, dreambench):
    """A folder subject gets exactly what a DreamBench subject of its class gets: the 25 object prompts,
    or the 25 live ones for a live class (not the toy world's list)."""
    from persobench.datasets import datasets
    from persobench.datasets.dreambench import parse_prompts_and_classes
    from persobench.harness.config import DatasetConfig

    _, objects, live = parse_prompts_and_classes((dreambench / "prompts_and_classes.txt").read_text(), "prompts")
    folder = tmp_path / "my_mug"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "a.png")
    for noun, expected in (("mug", objects), ("dog", live)):
        bench = datasets.get("folder")(DatasetConfig(name="folder", path=str(folder), class_noun=noun))
        assert list(bench.prompts_for(bench.subjects[0])) == list(expected) and len(expected) == 25
