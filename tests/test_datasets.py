import numpy as np
import pytest
from PIL import Image

from persobench.core.errors import UserError
from persobench.core.images import load_image
from persobench.datasets import load_dreambench
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
    from persobench.core.config import DatasetConfig
    from persobench.datasets import datasets
    from persobench.datasets.dreambench import parse_prompts_and_classes

    _, objects, live = parse_prompts_and_classes((dreambench / "prompts_and_classes.txt").read_text(), "prompts")
    folder = tmp_path / "my_mug"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "a.png")
    for noun, expected in (("mug", objects), ("dog", live)):
        bench = datasets.get("folder")(DatasetConfig(name="folder", path=str(folder), class_noun=noun))
        assert list(bench.prompts_for(bench.subjects[0])) == list(expected) and len(expected) == 25


def _ramp16() -> Image.Image:
    """A 16-bit grey ramp 0 .. 65535 (Pillow's "I;16"): one column per level step."""
    arr = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
    return Image.fromarray(arr)


def test_sixteen_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    """Pillow's own convert clips 16-bit values at 255 (a white image); the loader scales them (x / 257)."""
    ramp = _ramp16()
    ramp.save(tmp_path / "grey16.png")
    expected = np.round(np.asarray(ramp, dtype=np.float64) / 257).astype(np.uint8)
    out = load_image(tmp_path / "grey16.png")
    assert out.mode == "RGB" and np.array_equal(np.asarray(out)[..., 0], expected)
    assert np.array_equal(np.asarray(out)[..., 1], expected) and np.asarray(out)[0, 16, 0] in (131, 132)
    Image.fromarray(np.asarray(ramp).astype(np.int32)).save(tmp_path / "grey32.tif")  # read back as "I"
    assert np.array_equal(np.asarray(load_image(tmp_path / "grey32.tif"))[..., 0], expected)


def test_float_images_are_read_as_0_to_1(tmp_path):
    arr = np.tile(np.linspace(0.0, 1.0, 32, dtype=np.float32), (32, 1))
    Image.fromarray(arr).save(tmp_path / "f.tif")
    out = np.asarray(load_image(tmp_path / "f.tif"))[..., 0]
    assert out[0, 0] == 0 and out[0, -1] == 255 and np.array_equal(out[0], np.round(arr[0] * 255).astype(np.uint8))


def test_every_colour_mode_becomes_the_colour_a_viewer_shows(tmp_path):
    red = (255, 0, 0)
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    Image.new("RGB", (32, 32), red).convert("P").save(tmp_path / "palette.png")
    Image.new("LA", (32, 32), (0, 0)).save(tmp_path / "la.png")  # fully transparent black: white on screen
    Image.new("1", (32, 32), 1).save(tmp_path / "one.png")
    assert np.abs(np.asarray(load_image(tmp_path / "cmyk.jpg")).astype(int) - red).max() <= 8
    assert np.asarray(load_image(tmp_path / "palette.png"))[0, 0].tolist() == list(red)
    assert np.asarray(load_image(tmp_path / "la.png"))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(load_image(tmp_path / "one.png"))[0, 0].tolist() == [255, 255, 255]


def _subject(folder, *names, colour="red"):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (32, 32), colour).save(folder / name, format="JPEG" if name.lower().endswith((".jpg", ".jpeg")) else "PNG")
    return folder


def test_hidden_system_and_non_image_files_are_ignored_and_any_name_loads(tmp_path):
    from persobench.datasets.dreambench import subject_images

    folder = _subject(tmp_path / "mug", "Photo 1.JPG", "été ☕.png", "IMG_0001.JPEG")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "._Photo 1.JPG").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork beside a copy
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (folder / "notes.txt").write_text("shot on my phone\n")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "subfolder").mkdir()
    names = [p.name for p in subject_images(folder)]
    assert sorted(names) == sorted(["Photo 1.JPG", "été ☕.png", "IMG_0001.JPEG"])
    assert all(load_image(folder / n).size == (32, 32) for n in names)


def _custom_bench(root):
    _subject(root / "my_mug", "a.jpg", "b.jpg")
    _subject(root / "rex", "1.png", "2.png", "3.png")
    _subject(root / "Mon chat", "x.png")
    _subject(root / "not_listed", "x.png")
    return root


def test_a_folder_of_subjects_with_a_classes_csv_is_a_custom_benchmark(tmp_path, dreambench):
    """subject,class lines (a header, blank lines and # comments allowed): DreamBench's prompts by class,
    subject selection and the live / object split as on DreamBench."""
    from persobench.core.config import DatasetConfig
    from persobench.datasets import datasets, select_subjects
    from persobench.datasets.dreambench import parse_prompts_and_classes

    _, objects, live = parse_prompts_and_classes((dreambench / "prompts_and_classes.txt").read_text(), "prompts")
    root = _custom_bench(tmp_path / "mine")
    (root / "classes.csv").write_text("subject,class\n# my things\nmy_mug, mug\n\nrex,dog\nMon chat,cat\n")
    bench = datasets.get("folder")(DatasetConfig(name="folder", path=str(root)))
    assert [(s.name, s.class_noun, s.kind, len(s.image_paths)) for s in bench.subjects] == [
        ("my_mug", "mug", "object", 2), ("rex", "dog", "live", 3), ("Mon chat", "cat", "live", 1)]
    assert list(bench.prompts_for(bench.subjects[0])) == list(objects)
    assert list(bench.prompts_for(bench.subjects[1])) == list(live)
    chosen = select_subjects(bench, DatasetConfig(name="folder", path=str(root), subjects=["rex"]))
    assert [s.name for s in chosen] == ["rex"]
    with pytest.raises(UserError, match="unknown subject"):
        select_subjects(bench, DatasetConfig(name="folder", path=str(root), subjects=["ball1"]))
    only_cats = datasets.get("folder")(DatasetConfig(name="folder", path=str(root), live_classes=["cat"]))
    assert [s.kind for s in only_cats.subjects] == ["object", "object", "live"]


def test_a_folder_of_subjects_with_dreambenchs_file_uses_its_prompts(tmp_path):
    from persobench.core.config import DatasetConfig
    from persobench.datasets import datasets

    root = _custom_bench(tmp_path / "mine")
    text = (TOYBENCH / "prompts_and_classes.txt").read_text()
    head, _, rest = text.partition("Object Prompts")
    (root / "prompts_and_classes.txt").write_text("subject_name,class\nmy_mug,mug\nrex,dog\n\nObject Prompts" + rest)
    bench = datasets.get("folder")(DatasetConfig(name="folder", path=str(root)))
    reference = load_dreambench(TOYBENCH)
    assert [s.name for s in bench.subjects] == ["my_mug", "rex"] and [s.kind for s in bench.subjects] == ["object", "live"]
    assert bench.object_prompts == reference.object_prompts and bench.live_prompts == reference.live_prompts


@pytest.mark.parametrize("csv, fragment", [
    ("my_mug,mug\nghost,dog\n", "lists subject 'ghost'"),
    ("my_mug,mug\nmy_mug,cup\n", "twice"),
    ("my_mug\n", "subject,class"),
    ("", "lists no subjects"),
])
def test_a_bad_classes_csv_names_the_line(tmp_path, csv, fragment):
    from persobench.core.config import DatasetConfig
    from persobench.datasets import datasets

    root = _custom_bench(tmp_path / "mine")
    (root / "classes.csv").write_text(csv)
    with pytest.raises(UserError, match=fragment):
        datasets.get("folder")(DatasetConfig(name="folder", path=str(root)))


def test_a_folder_of_subject_folders_without_a_classes_file_says_what_to_add(tmp_path):
    from persobench.core.config import DatasetConfig
    from persobench.datasets import datasets

    root = _custom_bench(tmp_path / "mine")
    with pytest.raises(UserError, match="classes.csv"):
        datasets.get("folder")(DatasetConfig(name="folder", path=str(root)))


def test_every_unusable_image_is_listed_in_one_error_or_skipped_with_a_warning_each(tmp_path, caplog):
    from persobench.core.config import DatasetConfig
    from persobench.datasets import check_images, datasets

    root = _custom_bench(tmp_path / "mine")
    (root / "classes.csv").write_text("my_mug,mug\nrex,dog\n")
    (root / "my_mug" / "a.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.new("RGB", (2, 2)).save(root / "rex" / "2.png")
    (root / "rex" / "3.png").write_bytes(b"")
    bench = datasets.get("folder")(DatasetConfig(name="folder", path=str(root)))
    with pytest.raises(UserError) as e:
        check_images(list(bench.subjects), skip_bad=False)
    message = str(e.value)
    assert "\n" not in message and "3 image(s) cannot be used" in message and "skip_bad_images=true" in message
    for fragment in ("a.jpg' (cannot be read", "2.png' (2x2 px", "3.png' (empty file, 0 bytes)"):
        assert fragment in message, message
    with caplog.at_level("WARNING", logger="persobench"):
        kept = check_images(list(bench.subjects), skip_bad=True)
    assert [[p.name for p in s.image_paths] for s in kept] == [["b.jpg"], ["1.png"]]
    assert len(caplog.records) == 3 and all("skipped" in r.getMessage() and "\n" not in r.getMessage() for r in caplog.records)
    (root / "rex" / "1.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="subject 'rex' has no usable image"):
        check_images(list(datasets.get("folder")(DatasetConfig(name="folder", path=str(root))).subjects), skip_bad=True)


def test_subject_names_in_any_script_get_their_own_store_folder():
    from persobench.harness.store import subject_slug

    assert subject_slug("backpack_dog") == "backpack-dog" and subject_slug("ball1") == "ball1"  # existing stores resume
    names = ["été", "ete", "猫", "狗", "Mon chat"]
    assert len({subject_slug(n) for n in names}) == len(names)
    assert subject_slug("été").startswith("ete-")


def test_two_subjects_that_would_share_a_store_folder_are_refused(tmp_path):
    from persobench.core.config import DatasetConfig, RunConfig
    from persobench.datasets import datasets
    from persobench.harness.runner import check_subjects

    root = tmp_path / "mine"
    _subject(root / "my_mug", "a.png")
    _subject(root / "my-mug", "a.png")
    (root / "classes.csv").write_text("my_mug,mug\nmy-mug,mug\n")
    bench = datasets.get("folder")(DatasetConfig(name="folder", path=str(root)))
    with pytest.raises(UserError, match="share the store folder 'my-mug'"):
        check_subjects(RunConfig(), list(bench.subjects))


def test_a_config_files_dataset_section_belongs_to_the_dataset_it_names(tmp_path):
    from persobench.core.config import PACKAGED_DEFAULT, load_config, written

    mine = tmp_path / "mine.yaml"
    mine.write_text("dataset: {name: dreambench, path: /data/db, subjects: [dog], max_prompts: 3}\nmetrics: {names: [dino]}\n")
    same = load_config(mine, ["dataset.images_per_prompt=1"])
    assert same.dataset.subjects == ["dog"] and same.dataset.max_prompts == 3 and same.dataset.path == "/data/db"
    other = load_config(mine, ["dataset.name=folder", "dataset.path=/photos/mug", "dataset.class_noun=mug"])
    assert other.dataset.subjects is None and other.dataset.max_prompts is None and other.dataset.path == "/photos/mug"
    assert written(other, "metrics.names")  # written in a user's file
    default = load_config(PACKAGED_DEFAULT, ["dataset.name=dreambench", "dataset.path=/data/db"])
    assert default.dataset.subjects is None and default.dataset.images_per_prompt == 4
    assert not written(default, "metrics.names") and written(load_config(PACKAGED_DEFAULT, ["metrics.names=[oracle]"]), "metrics.names")


def test_sixteen_bit_grey_with_a_transparent_key_is_scaled_then_composited(tmp_path):
    """A 16-bit grey PNG with a tRNS colour key: the key's pixels go white, the others are scaled to 8 bits
    (Pillow's RGBA conversion would clip them to 255)."""
    arr = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    path = tmp_path / "grey16.png"
    Image.fromarray(arr).save(path, transparency=0)
    assert Image.open(path).mode.startswith("I") and Image.open(path).info.get("transparency") == 0
    out = np.asarray(load_image(path)).astype(int)
    assert (out[:, 0] == 255).all()  # the keyed (transparent) column, on white
    assert abs(out[0, 32, 0] - round(arr[0, 32] / 257)) <= 1 and abs(out[0, 1, 0] - round(arr[0, 1] / 257)) <= 1
