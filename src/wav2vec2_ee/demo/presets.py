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

#: Where the packaged base lives (``wav2vec2_ee/resources/demo_base``).
PACKAGED_BASE = Path(__file__).resolve().parent.parent / "resources" / "demo_base"
#: Where ``--build-base --quick`` puts its smoke-test base, under the demo's output folder.
QUICK_BASE = Path("base") / "model"

#: The base model: a wav2vec2 encoder sized for a CPU. The CNN front end is cheaper than wav2vec2's
#: (5 layers, first stride 10, group norm on the first layer only) with the same 20 ms frame rate; a
#: pre-LN (stable layer norm) transformer of 8 layers; one CTC head at the top (``exit_layers`` = the
#: last layer only: CTC at the last layer, as ``wav2vec2-base-960h``).
BASE_MODEL: dict = {
    "conv_dim": [64, 128, 128, 128, 128],
    "conv_stride": [10, 4, 2, 2, 2],
    "conv_kernel": [20, 4, 4, 4, 2],
    "feat_extract_norm": "group",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 64,
    "num_conv_pos_embedding_groups": 8,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
    "final_dropout": 0.0,
    "layerdrop": 0.0,
    "ctc_loss_reduction": "mean",
    "hidden_size": 256,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "hidden_dropout": 0.05,
    "mask_time_prob": 0.05,
    "mask_time_length": 5,
    "exit_layers": [8],
}

#: The base's corpus: the builder's every train voice, sentences of another seed than the demo's corpus.
BASE_CORPUS: dict = {"num_train": 20000, "num_dev": 200, "num_test": 200, "seed": 1}

#: The base's training (names of ``wav2vec2-ee train``'s options); ``max_steps`` is an upper bound, the
#: time budget decides the steps (and fits the learning-rate schedule to them).
BASE_TRAINING: dict = {
    "objective": "ee",
    "freeze_feature_encoder": False,
    "train_splits": list(TRAIN_SPLITS),
    "cache_audio": True,
    "train_sampling_strategy": "group_by_length",
    "speed_perturbation": [0.9, 1.0, 1.1],
    "noise_prob": 0.15,
    "noise_snr_db": [5.0, 30.0],
    "reverb_prob": 0.15,
    "reverb_rt60": [0.15, 0.6],
    "pad_to_multiple_of": 1600,
    "per_device_train_batch_size": 16,
    "learning_rate": 2e-3,
    "warmup_steps": 500,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 0.05},
    "max_steps": 30000,
    "max_grad_norm": 5.0,
    "weight_decay": 0.01,
    "seed": 0,
}

#: How a stage of the base (``--build-base --continue``) trains, beside :data:`BASE_TRAINING`: a warm
#: restart from the current base's weights with one new learning-rate cycle (half the first build's
#: peak, a short warm-up, cosine to 5 %), bfloat16 where the CPU has it and it measures faster
#: (``--auto-bf16``), no dropout (the base underfits: its WER on training voices equals its WER on
#: held-out voices, and dropout's random masks cost ~15 % of a step on a CPU), and the recording
#: conditions of real audio (:class:`~wav2vec2_ee.data.conditions.RecordingConditions`) beside the noise
#: and reverberation. ``max_steps`` is an upper bound: the stage's time budget decides.
#:
#: From stage 4 on, the conditions the base failed most (stage 3, last layer, x clean WER: pauses 2.8,
#: reverberation 2.7, babble 1.9, noise 1.8, tempo 1.6-1.8, silence 1.5; 0.1 s of 20 dB noise around each
#: utterance of a long recording 1.5) come about twice as often (about one training utterance in five is
#: left clean), and the silence around and inside an utterance lies over a noise floor 10-65 dB below the
#: speech (was 40-65: a noisy room's lead-in was heard only where noise and silence met, 1.5 % of the
#: utterances). Stages 1-3 trained with noise and reverberation 0.15, tempo 0.15, babble and silence 0.1.
#: From stage 5 on, one utterance in five by another voice (pitch and formants scaled by 0.8-1.25, the
#: length kept): stage 4 read Festival's female HTS voice at 84.5 % WER and the same audio shifted down
#: by 0.8 at 54.5 %: the talkers the corpus builder makes cover too few vocal tracts.
#: From stage 6 on, reverberation up to an RT60 of 1.0 s and tempo 0.7-1.4x: stage 5 lost most where the
#: checks sit at the edge of what training drew (reverberation 0.6 s: 3.0x its clean WER, tempo 0.8x /
#: 1.25x: 1.7 / 2.0x), and ordinary rooms and talkers go beyond 0.6 s and a quarter.
BASE_STAGE_TRAINING: dict = {
    "learning_rate": 1e-3,
    "warmup_steps": 300,
    "max_steps": 100000,
    "auto_bf16": True,
    "config_overrides": "hidden_dropout=0.0",
    "voice_prob": 0.2,
    "noise_prob": 0.25,
    "reverb_prob": 0.25,
    "reverb_rt60": [0.15, 1.0],
    "tempo_prob": 0.2,
    "tempo_range": [0.7, 1.4],
    "babble_prob": 0.15,
    "silence_prob": 0.3,
    "silence_floor_db": [10.0, 65.0],
    "gain_prob": 0.1,
    "clipping_prob": 0.08,
    "telephone_prob": 0.1,
    "codec_prob": 0.08,
}

#: Minutes of one stage's training loop (the issue's bound: one learning-rate cycle of at most 150).
BASE_STAGE_MINUTES = 150.0

#: A second engine beside eSpeak in the base's training: CMU Flite's voices ``kal16``, ``awb`` and ``rms``
#: (Flite's ``slt`` and every Festival voice stay unheard, for the robustness check).
BASE_FLITE_SPLIT: dict = {
    "split": "train_flite",
    "num_utterances": 5000,
    "voices": ["kal16", "awb", "rms"],
    "seed": 2,
}

#: The base's check on an engine no training split used: the demo's test sentences by Festival's voices.
BASE_ROBUSTNESS_CHECK: dict = {"synthesizer": "festival", "voices": None, "num": 100}


@dataclass(frozen=True)
class BasePreset:
    """What ``--build-base`` builds: the corpus, the model, the training and its time budget."""

    name: str
    corpus: dict
    model: dict
    training: dict
    #: minutes for the training loop (``train --time-budget-minutes``)
    train_minutes: float
    #: greedy evaluation of the training voices on at most this many utterances of the demo corpus
    train_voice_utterances: int = 400
    #: splits spoken by other synthesizers, built into the base corpus and trained on beside ``train``:
    #: ``{"split", "num_utterances", "voices", "seed"}`` (:func:`~wav2vec2_ee.corpus.external.build_external_split`)
    other_synthesizers: tuple[dict, ...] = ()
    #: a check on an engine no training split used: ``{"synthesizer", "voices", "num"}``, the first ``num``
    #: sentences of the demo corpus's test split spoken by every voice, read at the final layer
    robustness_check: dict | None = None


BASE_PRESETS: dict[str, BasePreset] = {
    "default": BasePreset(
        "default",
        BASE_CORPUS,
        BASE_MODEL,
        BASE_TRAINING,
        train_minutes=125.0,
        other_synthesizers=(BASE_FLITE_SPLIT,),
        robustness_check=BASE_ROBUSTNESS_CHECK,
    ),
    # smoke test of the command: tiny corpus and model, a few steps
    "quick": BasePreset(
        "quick",
        {"num_train": 200, "num_dev": 20, "num_test": 20, "seed": 1},
        {
            **BASE_MODEL,
            "hidden_size": 32,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "conv_dim": [16, 32, 32, 32, 32],
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4,
            "exit_layers": [4],
        },
        {**BASE_TRAINING, "max_steps": 12, "warmup_steps": 2, "per_device_train_batch_size": 4},
        train_minutes=5.0,
        train_voice_utterances=20,
    ),
}


#: The early-exit model of the demo: the base with exits after every second layer.
DEMO_EXIT_LAYERS = [2, 4, 6, 8]

#: Training arguments of the demo's EE fine-tuning of the base (names of ``wav2vec2-ee train``'s
#: options; the time budget may cut ``max_steps``). The CNN stays frozen, as the original's fine-tuning.
DEMO_TRAINING: dict = {
    "objective": "ee",
    "freeze_feature_encoder": True,
    "train_splits": list(TRAIN_SPLITS),
    "cache_audio": True,
    "train_sampling_strategy": "group_by_length",
    "speed_perturbation": [0.9, 1.0, 1.1],
    # the recording conditions the base was trained with (its noise and reverberation, the stages'
    # conditions): fine-tuned on clean, tightly cut utterances only, the exits forget them (a lead-in of
    # 0.1 s of noise alone raised the last exit's WER from 29.5 % to 39.9 %: check_long_recording.py)
    "noise_prob": BASE_TRAINING["noise_prob"],
    "noise_snr_db": BASE_TRAINING["noise_snr_db"],
    "reverb_prob": BASE_TRAINING["reverb_prob"],
    "reverb_rt60": BASE_TRAINING["reverb_rt60"],
    **{k: v for k, v in BASE_STAGE_TRAINING.items() if k.endswith("_prob") or k == "silence_floor_db"},
    # batches in few shapes: oneDNN reuses its CNN convolution kernels (1.25-1.5x faster steps on CPU)
    "pad_to_multiple_of": 1600,
    "per_device_train_batch_size": 8,
    # a quarter of the base's peak: the shallow exits learn while the top keeps what the base learned
    "learning_rate": 5e-4,
    "warmup_steps": 100,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
    "max_steps": 2500,
    "max_grad_norm": 5.0,
    "weight_decay": 0.0,
    "seed": 0,
    # bfloat16 where the CPU has it and it measures faster (the stages' choice): the demo's step, forward
    # and backward of batch 8 x 1.1 s with the CNN frozen, 0.15-0.17 s against 0.23-0.24 s in float32 on an
    # AMD EPYC with AVX512_BF16: more steps in the same minutes
    "auto_bf16": True,
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
DEMO_FINETUNE: dict = {"learning_rate": 2.5e-4, "warmup_steps": 50, "max_steps": 500}


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
    #: the base it fine-tunes: ``"packaged"`` (:data:`PACKAGED_BASE`) or ``"quick"`` (built by
    #: ``--build-base --quick`` into ``<output>/base/model`` when missing)
    base: str
    #: the EE model: the base's config with the demo's ``exit_layers``
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
    #: took 20-30 s on 2 cores for the 6-layer model of the demo from scratch, more with 4 exits of 8 layers)
    #: and for saving and loading the model
    evaluation_seconds: float = 60.0

    def decoding(self, lexicon: bool = True) -> Decoding:
        """The preset's decoders; ``lexicon=False``: greedy decoding only."""
        if not lexicon:
            return Decoding()
        return Decoding(self.lexicon_beam_size, self.lm_order, self.lm_weight, self.lm_word_score)


PRESETS: dict[str, DemoPreset] = {
    "default": DemoPreset(
        "default",
        {"size": "default"},
        "packaged",
        {**BASE_MODEL, "exit_layers": DEMO_EXIT_LAYERS},
        DEMO_TRAINING,
        DEMO_FINETUNE,
    ),
    # smoke test: the same pipeline on a tiny corpus and base, a few steps (WER is not the point)
    "quick": DemoPreset(
        "quick",
        {"size": "quick"},
        "quick",
        {**BASE_PRESETS["quick"].model, "exit_layers": [2, 4]},
        {**DEMO_TRAINING, "max_steps": 40, "warmup_steps": 5},
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


def train_config(preset: DemoPreset, base: str | os.PathLike, corpus: str | os.PathLike) -> dict:
    """The ``wav2vec2-ee train`` arguments of the preset's EE run from the base model folder ``base``
    (``output_dir`` is set per run)."""
    return {
        **preset.training,
        **RUN_DEFAULTS,
        "model": str(base),
        "exit_layers": list(preset.model["exit_layers"]),
        "data": str(corpus),
    }


def base_train_config(preset: BasePreset, model_file: str | os.PathLike, corpus: str | os.PathLike) -> dict:
    """The ``wav2vec2-ee train`` arguments of ``--build-base``'s training (``output_dir`` set per run):
    checkpoints every 500 steps, so that an interrupted build resumes from the last one."""
    splits = list(preset.training["train_splits"]) + [o["split"] for o in preset.other_synthesizers]
    return {
        **preset.training,
        **RUN_DEFAULTS,
        "train_splits": splits,
        "logging_steps": 100,
        "save_strategy": "steps",
        "save_steps": 500,
        "save_total_limit": 1,
        "resume": True,
        "model": str(model_file),
        "data": str(corpus),
    }


def base_stage_config(preset: BasePreset, start: str | os.PathLike, corpus: str | os.PathLike) -> dict:
    """The ``wav2vec2-ee train`` arguments of a stage of the base (``--build-base --continue``): the
    from-scratch build's (:func:`base_train_config`) from the weights of the base folder ``start``, with
    :data:`BASE_STAGE_TRAINING` (the quick preset keeps its few steps)."""
    config = base_train_config(preset, start, corpus)
    stage = dict(BASE_STAGE_TRAINING)
    if preset.name == "quick":
        stage.update(max_steps=preset.training["max_steps"], warmup_steps=preset.training["warmup_steps"])
    return {**config, **stage, "exit_layers": list(preset.model["exit_layers"])}


def write_config_files(
    configs_dir: str | os.PathLike = "configs", output_dir: str = "demo_out"
) -> list[Path]:
    """Write the presets' runs as train configs: ``demo.json`` / ``demo_quick.json`` (the EE fine-tuning of
    the packaged base / of the quick smoke-test base) and ``demo_base.json`` + ``demo_base_model.json``
    (the training of the base, ``--build-base``).

    ``wav2vec2-ee train configs/demo.json`` then repeats the demo's training (after ``wav2vec2-ee demo``
    or ``make-corpus demo_out/corpus`` built the corpus), from the repository's root. Regenerate after
    changing a preset::

        python -c "from wav2vec2_ee.demo import write_config_files; write_config_files()"
    """
    configs = Path(configs_dir)
    out = Path(output_dir)
    packaged = PACKAGED_BASE.relative_to(PACKAGED_BASE.parents[2])  # wav2vec2_ee/resources/demo_base
    bases = {"default": Path("src") / packaged, "quick": out / "quick" / QUICK_BASE}
    files: dict[Path, dict] = {}
    for name, preset in PRESETS.items():
        root = out if name == "default" else out / name
        config = train_config(preset, bases[name].as_posix(), (root / "corpus").as_posix())
        files[configs / ("demo.json" if name == "default" else f"demo_{name}.json")] = {
            **config,
            "output_dir": (root / "ee").as_posix(),
        }
    base = BASE_PRESETS["default"]
    model_file = configs / "demo_base_model.json"
    files[model_file] = base.model
    files[configs / "demo_base.json"] = {
        **base_train_config(base, model_file.as_posix(), (out / "base" / "corpus").as_posix()),
        "output_dir": (out / "base" / "train").as_posix(),
    }
    for path, data in files.items():
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return list(files)
