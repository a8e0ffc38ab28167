"""Shared fixtures: tiny random configs and generated audio (no network, no hub)."""

from __future__ import annotations

import pytest
import torch

from wav2vec2_ee.configuration import Wav2Vec2EEConfig
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.vocab import build_tokenizer


def tiny_config(**overrides) -> Wav2Vec2EEConfig:
    """A wav2vec2 config small enough for unit tests (hidden 16, 4 layers, stride 4*... )."""
    kwargs = dict(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        pad_token_id=0,
        exit_layers=[1, 2, 3, 4],
    )
    kwargs.update(overrides)
    return Wav2Vec2EEConfig(**kwargs)


@pytest.fixture
def config() -> Wav2Vec2EEConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    models gain nothing from threads, and OpenMP threads on a busy machine cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    """The bundled 32-symbol character tokenizer."""
    return build_tokenizer()


def sharpened_model(**overrides) -> Wav2Vec2EEForCTC:
    """A tiny random model (:func:`tiny_config` with ``overrides``) whose exit heads are sharpened, so
    exits differ in entropy and transcript."""
    torch.manual_seed(0)
    model = Wav2Vec2EEForCTC(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for k in range(model.config.num_exits):
            model.head(k).weight.mul_(40.0)
    return model
