"""Argument dataclasses of `wav2vec2-ee train` (used with ``HfArgumentParser`` beside ``TrainingArguments``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ..errors import UserError


@dataclass
class ModelArguments:
    """Which model to start from and how to shape it."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local folder of a checkpoint to start from: ours, a plain Wav2Vec2ForCTC or "
            "Wav2Vec2Model, or one written by the original research code. A folder (or config.json file) "
            "with only a config builds a randomly initialised model. Default: a fresh wav2vec2-base config."
        },
    )
    num_hidden_layers: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the first N encoder layers (baselines without early exits of N layers)."
        },
    )
    exit_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Encoder layers with an exit head, increasing (default: every second layer)."},
    )
    share_exit_heads: bool | None = field(
        default=None,
        metadata={
            "help": "One CTC head shared by all exits, as in the original code (default: one per exit, or "
            "what the checkpoint has)."
        },
    )
    reinit_encoder: bool = field(
        default=False,
        metadata={"help": "Re-initialise the transformer layers (train from scratch), keeping the CNN."},
    )
    freeze_feature_encoder: bool = field(
        default=True, metadata={"help": "Freeze the CNN feature encoder (as the seed did when fine-tuning)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated config overrides, e.g. 'hidden_dropout=0.1,mask_time_prob=0.05,layerdrop=0.0'."
        },
    )


@dataclass
class DataArguments:
    """Where the audio and transcripts come from."""

    data: str | None = field(
        default=None,
        metadata={
            "help": "A LibriSpeech-layout root, a JSONL/CSV manifest (audio, text[, duration, id]) or a "
            "Hugging Face dataset saved with save_to_disk."
        },
    )
    train_splits: list[str] = field(
        default_factory=lambda: ["train-clean-100"],
        metadata={
            "help": "Split folder(s) joined for training, e.g. train-clean-100 train-clean-360 train-other-500."
        },
    )
    eval_splits: list[str] | None = field(
        default=None, metadata={"help": "Split(s) for the Trainer's evaluation loss (with --eval-strategy)."}
    )
    max_duration: float | None = field(
        default=20.0, metadata={"help": "Skip training utterances longer than this many seconds."}
    )
    min_duration: float | None = field(default=None, metadata={"help": "Skip utterances shorter than this."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training utterances (for quick runs)."}
    )
    strict: bool = field(
        default=False,
        metadata={
            "help": "Stop at the first bad item (unreadable audio, empty transcript, ...) instead of skipping it."
        },
    )
    verify_audio: bool = field(
        default=False,
        metadata={
            "help": "Decode every audio file while checking the data (one full pass over the audio) instead of "
            "reading headers only, so that files with a sound header but broken data (a truncated FLAC) are "
            "reported before training; without it they are skipped and counted when training reads them."
        },
    )
    cache_audio: bool = field(
        default=False, metadata={"help": "Keep decoded audio in memory after its first read (small corpora)."}
    )
    speed_perturbation: list[float] | None = field(
        default=None,
        metadata={
            "help": "Speed perturbation of the training audio: each utterance, each epoch, played faster or "
            "slower by one of these factors (pitch, formants and tempo together, as Kaldi's sox speed), "
            "e.g. 0.9 1.0 1.1. Default off."
        },
    )
    noise_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of adding white, pink or brown noise to a training utterance, at an SNR drawn "
            "from --noise-snr-db (default 0: off)."
        },
    )
    noise_snr_db: list[float] = field(
        default_factory=lambda: [5.0, 30.0],
        metadata={"help": "Range of the signal-to-noise ratio of --noise-prob, in dB (low high)."},
    )
    reverb_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of reverberating a training utterance with a synthetic room impulse response "
            "(exponentially decaying noise) whose RT60 is drawn from --reverb-rt60 (default 0: off)."
        },
    )
    reverb_rt60: list[float] = field(
        default_factory=lambda: [0.15, 0.6],
        metadata={"help": "Range of the reverberation time (RT60) of --reverb-prob, in seconds (low high)."},
    )
    voice_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of another talker's voice: pitch and formants of a training utterance scaled "
            "together by a factor drawn from --voice-range, its length and tempo kept (vocal tract length "
            "perturbation on the waveform: resampled, then slowed back by WSOLA) (default 0: off)."
        },
    )
    voice_range: list[float] = field(
        default_factory=lambda: [0.8, 1.25],
        metadata={"help": "Range of the pitch and formant factor of --voice-prob (1.25 = 25 %% higher)."},
    )
    tempo_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of playing a training utterance faster or slower with its pitch kept (WSOLA), "
            "by a factor drawn from --tempo-range (default 0: off)."
        },
    )
    tempo_range: list[float] = field(
        default_factory=lambda: [0.8, 1.25],
        metadata={"help": "Range of the tempo factor of --tempo-prob (1.25 = 25 %% faster)."},
    )
    babble_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of mixing 1-3 other training utterances underneath (babble) at a speech-to-"
            "babble ratio drawn from --babble-snr-db (default 0: off)."
        },
    )
    babble_snr_db: list[float] = field(
        default_factory=lambda: [10.0, 25.0], metadata={"help": "Range of --babble-prob's ratio, in dB."}
    )
    silence_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of adding silence before (0.2-1.5 s) and after (0.2-2 s) a training utterance "
            "and up to 2 pauses of 0.3-1 s, over a pink noise floor --silence-floor-db below the speech "
            "(default 0: off). The pauses go between words where the split has its word times (<split>/"
            "words.ctm, e.g. from `wav2vec2-ee transcribe MODEL <split> --format ctm`), else at the quietest "
            "moments. A file that is mostly silence is normalised louder: training "
            "with it teaches the model that level."
        },
    )
    silence_floor_db: list[float] = field(
        default_factory=lambda: [40.0, 65.0],
        metadata={
            "help": "Range of how far below the speech the noise floor of --silence-prob lies, in dB (low high; "
            "a low value: a noisy room, whose noise alone fills the lead-in, the pauses and the tail)."
        },
    )
    gain_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of a gain of -20..+6 dB and a DC offset of up to 5 %% of full scale before any "
            "clipping (alone, both are undone by the feature extractor's normalisation) (default 0: off)."
        },
    )
    clipping_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of driving a training utterance 3-15 dB over full scale, then clipping it "
            "(hard) or saturating it (tanh), half of the time each (default 0: off)."
        },
    )
    telephone_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of the telephone channel: 8 kHz, 300-3400 Hz band, G.711 mu-law 8-bit "
            "companding (default 0: off)."
        },
    )
    codec_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of a lossy codec round trip: Ogg Vorbis or MP3 through soundfile, at a "
            "compression level of 0.3-0.9 (default 0: off)."
        },
    )
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata={
            "help": "Pad each batch's audio to a multiple of this many samples (e.g. 1600 = 0.1 s). Padded "
            "samples are masked, but batches then come in few distinct shapes, so the convolution kernels "
            "oneDNN compiles per input shape on CPU are reused: the demo's CPU training ran 1.25-1.5x faster "
            "with 1600 or 3200. Default: pad to the longest utterance of the batch."
        },
    )


@dataclass
class ObjectiveArguments:
    """The training objective (see wav2vec2_ee.objectives)."""

    objective: str = field(
        default="ee",
        metadata={"help": "ee | kd | dkd | confidence.", "choices": ["ee", "kd", "dkd", "confidence"]},
    )
    ee_alpha: list[float] | None = field(
        default=None,
        metadata={
            "help": "kd: the EE weight a in a*EE + (1-a)*KD (default 0.3); dkd: one weight per exit "
            "(default 0.65 0.70 0.75 0.80 0.85 1.00)."
        },
    )
    num_exits: int | None = field(
        default=None,
        metadata={
            "help": "Manual exit activation: only the first N exits contribute to the loss (default all)."
        },
    )
    inverse_confidence: bool = field(
        default=True,
        metadata={
            "help": "confidence: divide each exit's CTC loss by its confidence (True) or multiply (False)."
        },
    )
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "kd: the frozen teacher checkpoint (default: the checkpoint the student starts from)."
        },
    )


@dataclass
class RunArguments:
    """How the run starts."""

    resume: bool = field(
        default=False,
        metadata={
            "help": "Resume from the last complete checkpoint in --output-dir (optimizer, scheduler, RNG and "
            "data order included) written with this run's settings (run_settings.json: objective, model, "
            "data, schedule, batch size, seed, ...; --max-steps and --num-train-epochs may change); newer "
            "checkpoints of another run are passed over, and a checkpoint of another run alone is refused "
            "naming the settings that differ. Starts fresh when there is no checkpoint."
        },
    )
    resume_ignore_settings: bool = field(
        default=False,
        metadata={
            "help": "With --resume: continue the last complete checkpoint even when it was written with other "
            "settings (or records none), e.g. to change the learning rate of a run on purpose."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an --output-dir that holds other files than an unfinished run of ours with these "
            "settings (another program's, a run with other settings, or a finished run: its final model and "
            "run_summary.json, the same command run again). Files of the same names are overwritten; folders "
            "this run did not write (checkpoint-* and eval/ included) are never deleted. Without it such a "
            "folder is refused."
        },
    )
    time_budget_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Wall-clock minutes for the training loop: when the measured pace would overrun them, "
            "the run plans fewer steps than --max-steps and plays the learning-rate schedule compressed "
            "to them (warm-up and decay intact), so it ends on time on any machine. Counts this "
            "session's training (also after --resume). Default: no budget."
        },
    )
    time_budget: float | None = field(  # seconds: the config-file key; --time-budget is deprecated
        default=None, metadata={"help": argparse.SUPPRESS}
    )
    progress: bool = field(default=True, metadata={"help": "Show the Trainer's progress bars."})
    auto_bf16: bool = field(
        default=False,
        metadata={
            "help": "On a CPU: measure a few forward + backward passes of the model in float32 and in bfloat16 "
            "autocast at start-up and train in bfloat16 (as --bf16 true) when it is at least 1.1x faster; never "
            "on a CPU without native bfloat16 (AVX512_BF16 / AMX), where it is emulated and slower. Ignored "
            "with --bf16 / --fp16 or on a GPU. The decision and both timings are logged and kept in "
            "run_summary.json."
        },
    )

    def __post_init__(self) -> None:
        if self.time_budget_minutes is None:
            return
        seconds = 60.0 * float(self.time_budget_minutes)
        if self.time_budget is not None and self.time_budget != seconds:
            raise UserError(
                f"two time budgets: --time-budget-minutes {self.time_budget_minutes:g} and "
                f"time_budget {self.time_budget:g} s (deprecated); give only --time-budget-minutes"
            )
        if not seconds > 0:
            raise UserError(
                f"--time-budget-minutes must be a positive number, got {self.time_budget_minutes}"
            )
        self.time_budget = seconds
