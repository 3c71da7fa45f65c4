import pytest

from persobench.core.config import expand_sweep, load_config, stable_hash
from persobench.core.errors import UserError


def test_defaults_load_and_overrides_apply_with_types():
    cfg = load_config(None, ["sampler.steps=12", "sampler.cfg_scale=3", "dataset.subjects=[a, b]", "model.dtype=bf16"])
    assert cfg.sampler.steps == 12
    assert cfg.sampler.cfg_scale == 3.0 and isinstance(cfg.sampler.cfg_scale, float)
    assert cfg.dataset.subjects == ["a", "b"]
    assert cfg.model.dtype == "bf16"


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\nsampler:\n  steps: 7\n  eta: 0.5\n")
    cfg = load_config(f, ["sampler.steps=9"])
    assert (cfg.name, cfg.sampler.steps, cfg.sampler.eta) == ("x", 9, 0.5)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("sampler.stepz=3", "unknown config key 'sampler.stepz'; allowed keys in sampler: batch_size, cfg_scale"),
        ("sampler.steps=ten", "'sampler.steps' must be int"),
        ("model.dtype=fp8", "'model.dtype' must be one of 'fp32' | 'fp16' | 'bf16'"),
        ("sampler.steps=-3", "sampler.steps must be a positive"),
        ("sampler.resolution=100", "multiple of 8"),
        ("model.local_files_only=3", "must be true or false"),
        ("methods=[]", "methods is empty"),
        ("bogus=1", "unknown config key 'bogus'"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, fragment):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nsampler: [steps: 3\n")
    with pytest.raises(UserError, match=r"not valid YAML at line \d+"):
        load_config(f)


def test_yaml_tags_never_execute_code(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(f)


def test_sweep_is_the_cartesian_grid():
    grid = expand_sweep(["sampler.cfg_scale=1,5", "seed=0,1,2"])
    assert len(grid) == 6
    assert ["sampler.cfg_scale=5", "seed=2"] in grid
    with pytest.raises(UserError):
        expand_sweep(["sampler.cfg_scale"])


def test_stable_hash_ignores_key_order_and_sees_values():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
