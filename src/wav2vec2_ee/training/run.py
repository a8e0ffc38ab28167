"""The training run, in numbered steps (like ``run_speech_recognition_ctc.py``'s ``main``)."""

from __future__ import annotations

import json
import logging
import math
import pickle
import statistics
from collections.abc import Callable
from pathlib import Path

from transformers import TrainingArguments, Wav2Vec2Processor, set_seed
from transformers.trainer_utils import TrainOutput

from ..checkpoints import refused_pickle_error
from ..data import DataError, PreparationReport, SpeechDataset, load_split, prepare_utterances
from ..data.alignments import load_word_gaps
from ..data.augment import NoiseAndReverb, SpeedPerturbation
from ..data.conditions import CONDITIONS, RecordingConditions
from ..data.dataset import DataCollatorCTCWithPadding
from ..errors import UserError
from ..loading import load_model
from ..modeling import Wav2Vec2EEForCTC
from ..objectives import build_objective
from ..vocab import build_processor
from .arguments import DataArguments, ModelArguments, ObjectiveArguments, RunArguments
from .outputs import SUMMARY_NAME, prepare_output_dir, run_settings, save_final_model
from .precision import choose_cpu_bf16
from .skips import gather_skip_counts
from .teacher import build_teacher_labels
from .trainer import EarlyExitTrainer

logger = logging.getLogger(__name__)


def parse_config_overrides(text: str | None) -> dict:
    """``"a=1,b=0.1,c=true"`` → ``{"a": 1, "b": 0.1, "c": True}`` (values parsed as JSON where they can be)."""
    out: dict = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--config-overrides: expected key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(value.strip())
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


def build_model(model_args: ModelArguments, vocab_size: int, pad_token_id: int) -> Wav2Vec2EEForCTC:
    """Step 2: the student, from a checkpoint or a config, shaped by the model arguments (the one place
    where a config alone gives a randomly initialised model)."""
    model = load_model(
        model_args.model,
        allow_random_init=True,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        num_hidden_layers=model_args.num_hidden_layers,
        exit_layers=model_args.exit_layers,
        share_exit_heads=model_args.share_exit_heads,
        **parse_config_overrides(model_args.config_overrides),
    )
    if model_args.reinit_encoder:
        model.reinit_encoder()
    if model_args.freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model


def log_model(model: Wav2Vec2EEForCTC, objective) -> None:
    """Log the model's shape, size and objective."""
    logger.info(
        "model: %d layers, exits after %s, %.2f M parameters (%.2f M trainable); objective %s",
        model.config.num_hidden_layers,
        model.config.exit_layers,
        sum(p.numel() for p in model.parameters()) / 1e6,
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        objective.name,
    )


def check_arguments(
    data_args: DataArguments, run_args: RunArguments, training_args: TrainingArguments
) -> None:
    """Step 1: the inputs that must exist before any work is done (``UserError`` / ``DataError``)."""
    if not training_args.output_dir:
        raise UserError("--output-dir is required")
    if data_args.data is None:
        raise UserError("--data is required: a LibriSpeech root, a JSONL/CSV manifest or a saved HF dataset")
    if not Path(data_args.data).exists():
        raise DataError(f"--data {data_args.data}: no such folder or file")
    if data_args.pad_to_multiple_of is not None and data_args.pad_to_multiple_of < 1:
        raise UserError(
            f"--pad-to-multiple-of must be a positive number of samples, got {data_args.pad_to_multiple_of}"
        )
    if run_args.time_budget is not None and run_args.time_budget <= 0:
        raise UserError(f"--time-budget must be a positive number of seconds, got {run_args.time_budget}")
    check_training_length(training_args.max_steps, training_args.num_train_epochs)


def check_training_length(max_steps: int, num_train_epochs: float) -> None:
    """Refuse a run that would train no step (a ``UserError`` naming the flags): ``--max-steps 0``, or no
    step count (``--max-steps`` negative: transformers' "train ``--num-train-epochs``", -1 by default)
    with ``--num-train-epochs`` that is not a finite number above 0. The Trainer would train one step,
    or none, and save a model that learned nothing."""
    if max_steps == 0:
        raise UserError(
            "--max-steps 0: no step to train; give a positive --max-steps, or -1 (the default) to train "
            "--num-train-epochs"
        )
    if max_steps < 0 and not (math.isfinite(num_train_epochs) and num_train_epochs > 0):
        raise UserError(
            f"--max-steps {max_steps} (train --num-train-epochs) with --num-train-epochs {num_train_epochs:g}: "
            "no step to train; give --num-train-epochs above 0 or a positive --max-steps"
        )


def speed_perturbation(factors: list[float] | None, seed: int) -> SpeedPerturbation | None:
    """The training audio's speed perturbation by ``factors`` (``None``: off), drawn from ``seed``."""
    if not factors:
        return None
    try:
        perturbation = SpeedPerturbation(tuple(factors), seed=seed)
    except ValueError as err:
        raise UserError(f"--speed-perturbation: {err}") from err
    logger.info("speed perturbation of the training audio: factors %s", list(perturbation.factors))
    return perturbation


def noise_and_reverb(data_args: DataArguments, seed: int) -> NoiseAndReverb | None:
    """The training audio's noise and reverberation (``None``: both off)."""
    if not (data_args.noise_prob or data_args.reverb_prob):
        return None
    try:
        augmentation = NoiseAndReverb(
            noise_prob=data_args.noise_prob,
            snr_db=tuple(data_args.noise_snr_db),
            reverb_prob=data_args.reverb_prob,
            rt60=tuple(data_args.reverb_rt60),
            seed=seed,
        )
    except ValueError as err:
        raise UserError(f"--noise-prob/--reverb-prob: {err}") from err
    logger.info("training audio augmentation: %s", augmentation)
    return augmentation


def recording_conditions(data_args: DataArguments, seed: int) -> RecordingConditions | None:
    """The training audio's recording conditions (``None``: all off)."""
    probs = {f"{name}_prob": getattr(data_args, f"{name}_prob") for name in CONDITIONS}
    if not any(probs.values()):
        return None
    try:
        conditions = RecordingConditions(
            **probs,
            voice_range=tuple(data_args.voice_range),
            tempo_range=tuple(data_args.tempo_range),
            babble_snr_db=tuple(data_args.babble_snr_db),
            silence_floor_db=tuple(data_args.silence_floor_db),
            seed=seed,
        )
    except ValueError as err:
        raise UserError(
            f"recording conditions (--voice-prob, --tempo-prob, --silence-prob, ...): {err}"
        ) from err
    logger.info("training audio recording conditions: %s", conditions)
    return conditions


def build_train_dataset(
    data_args: DataArguments,
    processor: Wav2Vec2Processor,
    frames: Callable[[int], int],
    training_args: TrainingArguments,
) -> tuple[SpeechDataset, PreparationReport]:
    """Step 3a: the checked training utterances, and the report of those left out.

    ``frames`` maps a number of samples to the model's number of CTC frames.
    """
    train_utts = load_split(data_args.data, data_args.train_splits)
    if data_args.max_train_samples:
        train_utts = train_utts[: data_args.max_train_samples]
    train_items, report = prepare_utterances(
        train_utts,
        processor.tokenizer,
        frames_for_samples=frames,
        max_duration=data_args.max_duration,
        min_duration=data_args.min_duration,
        strict=data_args.strict,
        progress=not training_args.disable_tqdm,
        desc="checking training data",
        verify_audio=data_args.verify_audio,
    )
    logger.info("training data: %s", report.summary())
    if not train_items:
        raise DataError(f"{data_args.data}: no usable training utterances in {data_args.train_splits}")
    dataset = SpeechDataset(
        train_items,
        processor.feature_extractor,
        cache_audio=data_args.cache_audio,
        strict=data_args.strict,
        speed_perturbation=speed_perturbation(data_args.speed_perturbation, training_args.seed),
        frames_for_samples=frames,
        noise_and_reverb=noise_and_reverb(data_args, training_args.seed),
        conditions=recording_conditions(data_args, training_args.seed),
        word_gaps=load_word_gaps(data_args.data, data_args.train_splits or [])
        if data_args.silence_prob
        else None,
    )
    if training_args.world_size == 1 and training_args.dataloader_num_workers == 0:
        # one process, no loader workers: the next two batches are prepared in a background thread while
        # the model trains (with several processes, each one's sampler order holds the others' items)
        dataset.prefetch = 2 * training_args.per_device_train_batch_size
    return dataset, report


def build_eval_dataset(
    data_args: DataArguments,
    processor: Wav2Vec2Processor,
    frames: Callable[[int], int],
    training_args: TrainingArguments,
) -> SpeechDataset | None:
    """Step 3b: the checked evaluation utterances of ``--eval-splits`` (``None`` without them)."""
    if not data_args.eval_splits:
        return None
    eval_items, eval_report = prepare_utterances(
        load_split(data_args.data, data_args.eval_splits),
        processor.tokenizer,
        frames_for_samples=frames,
        strict=data_args.strict,
        progress=not training_args.disable_tqdm,
        desc="checking evaluation data",
        verify_audio=data_args.verify_audio,
    )
    logger.info("evaluation data: %s", eval_report.summary())
    return SpeechDataset(
        eval_items, processor.feature_extractor, cache_audio=data_args.cache_audio, strict=data_args.strict
    )


def decide_precision(
    run_args: RunArguments,
    training_args: TrainingArguments,
    model: Wav2Vec2EEForCTC,
    dataset: SpeechDataset,
    pad_to_multiple_of: int | None,
) -> dict:
    """Step 4b: the training precision. With ``--auto-bf16`` on a CPU (and neither ``--bf16`` nor
    ``--fp16``), :func:`~.precision.choose_cpu_bf16` measures the model on a batch of the median training
    length and sets ``--bf16`` (in place) when bfloat16 is faster; returns what was decided, for the
    run summary."""
    decided = {"bf16": bool(training_args.bf16), "fp16": bool(training_args.fp16)}
    if not run_args.auto_bf16 or training_args.bf16 or training_args.fp16:
        return decided
    if training_args.device.type != "cpu":
        logger.info("--auto-bf16: ignored on %s (use --bf16 or --fp16 there)", training_args.device)
        return decided
    samples = int(statistics.median(dataset.lengths))
    if pad_to_multiple_of:
        samples = -(-samples // pad_to_multiple_of) * pad_to_multiple_of
    choice = choose_cpu_bf16(model, training_args.per_device_train_batch_size, samples)
    logger.info("--auto-bf16: %s; training in %s", choice.reason, "bfloat16" if choice.bf16 else "float32")
    if choice.bf16:
        training_args.bf16 = True
        training_args.mixed_precision = "bf16"  # what TrainingArguments derives from --bf16 when parsed
    return {
        **decided,
        "bf16": choice.bf16,
        "auto_bf16": {
            "reason": choice.reason,
            "float32_seconds": choice.float32_seconds,
            "bfloat16_seconds": choice.bfloat16_seconds,
            "batch": [training_args.per_device_train_batch_size, samples],
        },
    }


def set_objective_arguments(training_args: TrainingArguments, objective, model: Wav2Vec2EEForCTC) -> None:
    """Step 5: the Trainer settings the objective needs (in place)."""
    training_args.remove_unused_columns = False
    training_args.label_names = ["labels"]
    training_args.prediction_loss_only = True
    if training_args.ddp_find_unused_parameters is None:
        # manual exit activation leaves the upper layers and heads without gradient
        training_args.ddp_find_unused_parameters = (
            objective.exits_needed < model.config.num_exits or model.config.layerdrop > 0
        )


def train(trainer: EarlyExitTrainer, resume: bool, checkpoint: str | None) -> TrainOutput:
    """Step 6: ``trainer.train()``, from ``checkpoint`` (:func:`prepare_output_dir`'s choice with
    ``resume``; the skip counts too), else from scratch."""
    if resume:
        logger.info("resuming from %s", checkpoint or "scratch (no complete checkpoint found)")
    trainer.restore_skip_counts(checkpoint)
    try:
        return trainer.train(resume_from_checkpoint=checkpoint)
    except pickle.UnpicklingError as err:  # the Trainer unpickles optimizer/scheduler/RNG with weights_only
        if checkpoint is None:
            raise
        raise refused_pickle_error(checkpoint, err) from err


def save_results(
    trainer: EarlyExitTrainer,
    processor: Wav2Vec2Processor,
    result: TrainOutput,
    report: PreparationReport,
    counts: dict,
    precision: dict | None = None,
) -> None:
    """Step 7 (process 0): the final model with its processor, and ``run_summary.json`` with the data
    report and the run's skip counts (``counts``, gathered over the processes), written so that they
    appear together or not at all (:func:`~.outputs.save_final_model`)."""
    output_dir = trainer.args.output_dir
    summary = {
        "train_metrics": result.metrics,
        "data": {"kept": report.kept, "skipped": report.skipped, "skip_counts": dict(report.counts())},
        "bad_items_at_training_time": counts["bad_audio"],
        "skipped_nonfinite_batches": counts["skipped_nonfinite_batches"],
        "skipped_updates": counts["skipped_updates"],
        "objective": trainer.objective.name,
        "exit_layers": trainer.model.config.exit_layers,
        "precision": precision,
        "log_history": trainer.state.log_history,  # the Trainer's log (loss, learning rate, ...)
    }

    def write(folder: Path) -> None:
        trainer.save_model(str(folder), _internal_call=True)  # internal: no hub push of a temporary folder
        processor.save_pretrained(folder)
        Path(folder, SUMMARY_NAME).write_text(json.dumps(summary, indent=2), encoding="utf-8")

    save_final_model(output_dir, write)
    if trainer.args.push_to_hub:  # what save_model did before the save became atomic
        trainer.push_to_hub(commit_message="Model save", revision=trainer.args.hub_revision)
    anything = report.skipped or any(counts.values())
    (logger.warning if anything else logger.info)(
        "data: %s; unreadable at training time: %d; non-finite batches skipped: %d; "
        "optimizer steps skipped: %d (details in %s)",
        report.summary(),
        len(counts["bad_audio"]),
        counts["skipped_nonfinite_batches"],
        counts["skipped_updates"],
        Path(output_dir, "run_summary.json"),
    )


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    objective_args: ObjectiveArguments,
    run_args: RunArguments,
    training_args: TrainingArguments,
) -> EarlyExitTrainer:
    """Train, in the numbered steps of the functions above; returns the trainer (its model is the
    trained student)."""
    check_arguments(data_args, run_args, training_args)
    settings = run_settings(model_args, data_args, objective_args, training_args)
    run_folder, checkpoint = prepare_output_dir(training_args.output_dir, settings, run_args)
    model_dir = model_args.model if model_args.model and Path(model_args.model).is_dir() else None
    processor = build_processor(model_dir)
    tokenizer = processor.tokenizer

    # 2. model and objective (seeded: the same --seed gives the same initial weights)
    set_seed(training_args.seed)
    model = build_model(model_args, len(tokenizer), tokenizer.pad_token_id)
    objective = build_objective(
        objective_args.objective,
        model.config,
        ee_alpha=objective_args.ee_alpha,
        num_exits=objective_args.num_exits,
        inverse_confidence=objective_args.inverse_confidence,
        word_delimiter_id=tokenizer.word_delimiter_token_id,
    )
    log_model(model, objective)

    # 3. data; 4. pseudo-labels (kd: a frozen teacher, outside the student, never saved with it)
    frames = model._get_feat_extract_output_lengths
    train_dataset, report = build_train_dataset(data_args, processor, frames, training_args)
    eval_dataset = build_eval_dataset(data_args, processor, frames, training_args)
    teacher_path = objective_args.teacher or model_args.model
    teacher_labels = build_teacher_labels(objective, teacher_path, tokenizer, training_args)

    # 5. the trainer (the output folder marked as this run's); 6. train; 7. save the final model with
    # its processor, and the summary
    set_objective_arguments(training_args, objective, model)
    precision = decide_precision(run_args, training_args, model, train_dataset, data_args.pad_to_multiple_of)
    if training_args.should_save:
        run_folder.path.mkdir(parents=True, exist_ok=True)
        run_folder.remove_stale_temporary_folders()
        run_folder.write_record()
    trainer = EarlyExitTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=DataCollatorCTCWithPadding(
            processor.feature_extractor, pad_to_multiple_of=data_args.pad_to_multiple_of
        ),
        processing_class=processor,
        objective=objective,
        teacher_labels=teacher_labels,
        time_budget=run_args.time_budget,
        run_folder=run_folder,
    )
    result = train(trainer, run_args.resume, checkpoint)
    counts = gather_skip_counts(trainer.skip_counts())  # in every process: a collective
    if trainer.is_world_process_zero():
        save_results(trainer, processor, result, report, counts, precision)
    return trainer
