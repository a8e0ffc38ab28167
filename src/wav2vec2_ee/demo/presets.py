"""The demo's presets: corpus size, model, training budgets and decoders, and the train configs they make.

Plain data and the functions that turn it into ``wav2vec2-ee train`` arguments; nothing here trains.
The DKD weights come from the objective's default (:data:`wav2vec2_ee.objectives.DEFAULT_DKD_ALPHA`),
the one source of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write_text
from ..objectives import DEFAULT_DKD_ALPHA

#: The corpus split the demo trains on (its words are the lexicon of the lexicon decoder).
TRAIN_SPLITS = ("train",)

#: The demo model: a wav2vec2 encoder sized for a CPU. The CNN front end is cheaper than wav2vec2's
#: (5 layers, first stride 10, group norm on the first layer only) with the same 20 ms frame rate;
#: pre-LN (stable layer norm) transformer of 6 layers, exits after layers 2, 4 and 6.
DEMO_MODEL: dict = {
    "hidden_size": 192,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "intermediate_size": 768,
    "conv_dim": [64, 128, 128, 128, 128],
    "conv_stride": [10, 4, 2, 2, 2],
    "conv_kernel": [20, 4, 4, 4, 2],
    "feat_extract_norm": "group",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 64,
    "num_conv_pos_embedding_groups": 8,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
    "final_dropout": 0.0,
    "layerdrop": 0.0,
    "mask_time_prob": 0.0,
    "ctc_loss_reduction": "mean",
    "exit_layers": [2, 4, 6],
}

#: Training arguments of the EE run from scratch (names of ``wav2vec2-ee train``'s options).
DEMO_TRAINING: dict = {
    "objective": "ee",
    "freeze_feature_encoder": False,
    "train_splits": list(TRAIN_SPLITS),
    "cache_audio": True,
    "train_sampling_strategy": "group_by_length",
    # held-out voices are the hard part: in 4600-step runs the model reached 5 % WER on training voices
    # and 51 % on unheard ones; speed perturbation (tempo, pitch and formants) took the latter to 44 %
    # (docs/results.md has the runs)
    "speed_perturbation": [0.9, 1.0, 1.1],
    # batches in few shapes: oneDNN reuses its CNN convolution kernels (1.25-1.5x faster steps on CPU)
    "pad_to_multiple_of": 1600,
    "per_device_train_batch_size": 8,
    "learning_rate": 3e-3,
    "warmup_steps": 300,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
    "max_steps": 4500,
    "max_grad_norm": 5.0,
    "weight_decay": 0.0,
    "seed": 0,
}

#: Settings common to every demo run (no intermediate checkpoints: a run is the unit of resumption).
RUN_DEFAULTS: dict = {
    "save_strategy": "no",
    "report_to": "none",
    "logging_steps": 50,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": False,
}

#: How the ``--reproduce`` runs that start from the EE model differ from it (a shorter, gentler schedule).
DEMO_FINETUNE: dict = {"learning_rate": 5e-4, "warmup_steps": 50, "max_steps": 800}


@dataclass(frozen=True)
class Decoding:
    """The decoders of an evaluation besides greedy decoding (which always runs).

    ``lexicon_beam_size``: flashlight's lexicon-constrained beam search over the words of the training
    transcripts (``None``: greedy only); ``lm_order``: with the lexicon search, the same search with a
    Kneser-Ney word n-gram model of those transcripts, weighted ``lm_weight``, with ``lm_word_score``.
    """

    lexicon_beam_size: int | None = None
    lm_order: int | None = None
    lm_weight: float = 1.0
    lm_word_score: float = 1.0


@dataclass(frozen=True)
class DemoPreset:
    """Everything that defines one demo: corpus size, model, training budget and evaluated splits."""

    name: str
    corpus: dict
    model: dict
    training: dict
    finetune: dict
    eval_splits: tuple[str, ...] = ("test",)
    lexicon_beam_size: int | None = 500
    #: the third column: the lexicon decoder with a word n-gram model of the training transcripts; weight
    #: and word score chosen on the dev split (held-out voices too) of the default corpus, never on test
    lm_order: int | None = 3
    lm_weight: float = 1.0
    lm_word_score: float = 1.0
    reproduce_splits: tuple[str, ...] = ("test", "dev")
    #: what a time budget keeps back for the evaluation after training (greedy, lexicon and LM columns
    #: took 20-30 s on 2 cores) and for saving and loading the model
    evaluation_seconds: float = 45.0

    def decoding(self, lexicon: bool = True) -> Decoding:
        """The preset's decoders; ``lexicon=False``: greedy decoding only."""
        if not lexicon:
            return Decoding()
        return Decoding(self.lexicon_beam_size, self.lm_order, self.lm_weight, self.lm_word_score)


PRESETS: dict[str, DemoPreset] = {
    "default": DemoPreset("default", {"size": "default"}, DEMO_MODEL, DEMO_TRAINING, DEMO_FINETUNE),
    # smoke test: the same pipeline on a tiny corpus and model, a few steps (WER is not the point)
    "quick": DemoPreset(
        "quick",
        {"size": "quick"},
        {
            **DEMO_MODEL,
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "conv_dim": [32, 64, 64, 64, 64],
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4,
            "exit_layers": [2, 4],
        },
        {**DEMO_TRAINING, "max_steps": 40, "warmup_steps": 5, "learning_rate": 2e-3},
        {**DEMO_FINETUNE, "max_steps": 10, "warmup_steps": 2},
        lexicon_beam_size=20,
    ),
}


def dkd_alphas(num_exits: int) -> list[float]:
    """Per-exit EE weights of dynamic KD for ``num_exits`` exits, from the objective's default
    :data:`~wav2vec2_ee.objectives.DEFAULT_DKD_ALPHA` (the seed's ``[0.65, 0.70, 0.75, 0.80, 0.85, 1.00]``
    for 6 exits): its first rising weights at the exits before the last (continued with its step where
    the model has more exits than the default) and its last weight at the last exit.
    """
    rising, last = DEFAULT_DKD_ALPHA[:-1], DEFAULT_DKD_ALPHA[-1]
    step = rising[1] - rising[0]
    weights = [
        rising[k] if k < len(rising) else round(rising[-1] + step * (k + 1 - len(rising)), 2)
        for k in range(num_exits - 1)
    ]
    return [float(w) for w in weights] + [float(last)]


def train_config(preset: DemoPreset, model_file: str | os.PathLike, corpus: str | os.PathLike) -> dict:
    """The ``wav2vec2-ee train`` arguments of the preset's EE run (``output_dir`` is set per run)."""
    return {**preset.training, **RUN_DEFAULTS, "model": str(model_file), "data": str(corpus)}


def write_config_files(
    configs_dir: str | os.PathLike = "configs", output_dir: str = "demo_out"
) -> list[Path]:
    """Write ``demo[_quick].json`` + ``demo[_quick]_model.json``: the presets' EE runs as train configs.

    ``wav2vec2-ee train configs/demo.json`` then repeats the demo's training (after ``wav2vec2-ee demo``
    or ``make-corpus demo_out/corpus`` built the corpus). Regenerate after changing a preset::

        python -c "from wav2vec2_ee.demo import write_config_files; write_config_files()"
    """
    written = []
    for name, preset in PRESETS.items():
        stem = "demo" if name == "default" else f"demo_{name}"
        root = Path(output_dir) if name == "default" else Path(output_dir) / name
        model_file = Path(configs_dir) / f"{stem}_model.json"
        config = {**train_config(preset, model_file.as_posix(), (root / "corpus").as_posix())}
        config["output_dir"] = (root / "ee").as_posix()
        for path, data in ((model_file, preset.model), (Path(configs_dir) / f"{stem}.json", config)):
            atomic_write_text(path, json.dumps(data, indent=2) + "\n")
            written.append(path)
    return written
