import pytest
import torch

from persobench.core.attention import capture_cross_attention, cross_attention_layers, layer_resolution
from persobench.core.components import load_components
from persobench.core.config import ModelConfig
from persobench.core.errors import UserError
from persobench.core.sampling import encode_text


@pytest.fixture(scope="module")
def components(tiny_model):
    return load_components(ModelConfig(source=str(tiny_model), device="cpu"))


def test_capture_keeps_outputs_records_maps_and_restores(components):
    unet, c = components.unet, components
    x = torch.randn(2, *c.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    emb = encode_text(c.tokenizer, c.text_encoder, ["a red ball", "a cat at night"])
    before = dict(unet.attn_processors)
    plain = unet(x, t, encoder_hidden_states=emb).sample
    with capture_cross_attention(unet, feature="hidden", feature_layers=cross_attention_layers(unet)[:1]) as cap:
        recorded = unet(x, t, encoder_hidden_states=emb).sample
    maps = cap.maps
    assert list(cap.features) == cross_attention_layers(unet)[:1]
    assert torch.allclose(plain, recorded, atol=1e-5)
    assert set(maps) == set(cross_attention_layers(unet))
    for name, m in maps.items():
        side = c.latent_shape[1] // layer_resolution(unet, name)
        assert m.shape == (2, side * side, c.tokenizer.model_max_length)
        assert torch.allclose(m.sum(-1), torch.ones(2, side * side), atol=1e-5)  # softmax over tokens
    assert {k: type(v) for k, v in unet.attn_processors.items()} == {k: type(v) for k, v in before.items()}


def test_unknown_layer_lists_the_real_ones(components):
    with pytest.raises(UserError, match="unknown cross-attention layer.*this UNet has: down_blocks"):
        with capture_cross_attention(components.unet, ["up_blocks.9.attn2.processor"]):
            pass


def test_layer_groups(components):
    from persobench.core.attention import select_layers

    unet = components.unet
    every = cross_attention_layers(unet)
    assert select_layers(unet, ["all"]) == every
    up_mid = select_layers(unet, ["up-mid"])
    assert up_mid and all(n.startswith("up_blocks") for n in up_mid)
    assert select_layers(unet, ["res:1"]) == [n for n in every if layer_resolution(unet, n) == 1]
    with pytest.raises(UserError, match="unknown cross-attention layer or group 'up-middle'"):
        select_layers(unet, ["up-middle"])
