"""HuggingFace transformers' MambaForCausalLM with its mixers swapped for
examples/mamba_block.ssm layers (weights copied by `ssmc.interop.from_transformers_mamba`,
a small random config, no download): the same logits, and the same greedy generation
token by token with step()."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import ssmc
from ssmc.interop import from_transformers_mamba

from ..conftest import ROOT

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _Swapped(nn.Module):
    """In a MambaBlock's place of `mixer`: the ssmc layer, without transformers' cache."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        assert cache is None
        return self.layer(hidden_states)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=37, hidden_size=8, state_size=4, num_hidden_layers=2,
                                   conv_kernel=4, expand=2, pad_token_id=0, eos_token_id=None)
    model = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        # Weights away from their initial values (dt_proj, D, A_log are structured at init).
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = ssmc.load(ROOT / "examples" / "mamba_block.ssm", backend="torch").MambaBlock
    layers = [from_transformers_mamba(block.mixer, cls) for block in model.backbone.layers]
    swapped = copy.deepcopy(model)
    for block, layer in zip(swapped.backbone.layers, layers):
        block.mixer = _Swapped(layer)
    return model, swapped, layers


def test_each_mixer_is_the_same_layer(models):
    model, _, layers = models
    h = torch.randn(2, 7, 8)
    with torch.no_grad():
        for block, layer in zip(model.backbone.layers, layers):
            torch.testing.assert_close(layer(h), block.mixer(h), atol=1e-6, rtol=1e-5)


def test_same_logits(models):
    model, swapped, _ = models
    ids = torch.randint(1, 37, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(swapped(ids, use_cache=False).logits, model(ids, use_cache=False).logits,
                                   atol=1e-5, rtol=1e-5)


def test_same_greedy_generation_with_step(models):
    model, _, layers = models
    bb = model.backbone
    prompt = torch.randint(1, 37, (2, 5), generator=torch.Generator().manual_seed(2))
    new = 6
    with torch.no_grad():
        want = model.generate(prompt, max_new_tokens=new, do_sample=False, use_cache=True)

        def block_input(i, h):
            return bb.layers[i].norm(h)

        # The prompt in one forward per layer (returning its state), then one step() per token.
        h = bb.embeddings(prompt)
        states = []
        for i, layer in enumerate(layers):
            y, s = layer(block_input(i, h), initial_state=layer.init_state(2), return_state=True)
            h = h + y
            states.append(s)
        logits = model.lm_head(bb.norm_f(h[:, -1]))
        tokens = prompt
        for _ in range(new):
            tok = logits.argmax(-1)
            tokens = torch.cat([tokens, tok[:, None]], dim=1)
            # Each step's logits are the full model's at that position.
            full = model(tokens, use_cache=False).logits[:, -2]
            torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)
            h = bb.embeddings(tok)
            for i, layer in enumerate(layers):
                y, states[i] = layer.step(block_input(i, h), states[i])
                h = h + y
            logits = model.lm_head(bb.norm_f(h))
    assert torch.equal(tokens, want), (tokens, want)


def test_a_mixer_of_another_layer_is_refused():
    cfg = transformers.MambaConfig(vocab_size=11, hidden_size=8, state_size=4, num_hidden_layers=1, use_bias=True)
    mixer = transformers.MambaForCausalLM(cfg).backbone.layers[0].mixer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = ssmc.load(ROOT / "examples" / "mamba_block.ssm", backend="torch").MambaBlock
    with pytest.raises(ValueError, match="use_bias=True"):
        from_transformers_mamba(mixer, cls)
