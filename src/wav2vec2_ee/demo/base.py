"""``wav2vec2-ee demo --build-base``: the demo's pretrained CTC base, the embedded ``wav2vec2-base-960h``.

The original research fine-tunes a pretrained CTC model (``facebook/wav2vec2-base-960h``: CTC at its
last layer only) into an early-exit model. The demo does the same from a small base trained here:

1. a larger synthetic corpus than the demo's (:data:`BASE_CORPUS`: every train voice of the corpus
   builder, other sentences than the demo's, ~6 h); the demo's dev and test voices are never in it;
2. a wav2vec2 CTC model (:data:`BASE_MODEL`) trained from scratch with CTC at its last layer only, with
   speed perturbation, additive noise and reverberation (:class:`~wav2vec2_ee.data.augment.NoiseAndReverb`);
   its checkpoints let an interrupted build resume;
3. the final model saved as a plain ``Wav2Vec2ForCTC`` checkpoint (no exit heads; ``float16``
   safetensors), loadable by ``transformers`` alone, with its processor files, ``training_log.json``
   and a model card (``README.md``: the command, time, steps, data and WER per layer read through
   the final head, on the demo's held-out test voices and on training voices).

The presets (:data:`~.presets.BASE_PRESETS`) are in :mod:`.presets`. The packaged copy
(:data:`~.presets.PACKAGED_BASE`, installed with the package) is what this command wrote on the
project's 2-core machine; ``wav2vec2-ee demo`` fine-tunes it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..corpus import build_corpus
from ..corpus.external import build_external_split, check_voices, voice_by_name, voices_for
from ..data import read_texts
from ..device import cpu_description
from ..errors import UserError
from ..evaluation.conditions import WORD_TIME_CHECKS, check_conditions
from ..inference.word_times import write_word_times
from ..io import atomic_write_text
from ..loading import load_model
from .presets import (
    BASE_PRESETS,
    BASE_STAGE_MINUTES,
    BASE_STAGE_TRAINING,
    PACKAGED_BASE,
    PRESETS,
    QUICK_BASE,
    BasePreset,
    DemoPreset,
    base_stage_config,
    base_train_config,
)
from .runs import RunSpec, evaluate_run, format_wer_by_exit, say, show, train_run, write_training_word_times


def base_model_dir(preset: DemoPreset, out: Path, base: str | None = None) -> Path:
    """The base the demo fine-tunes: ``base`` when given (a folder of ``--build-base`` or any CTC
    checkpoint), else the preset's: the packaged one, or for ``--quick`` the smoke-test base in
    ``<out>/base/model`` (built first when missing)."""
    if base is not None:
        if not Path(base).is_dir():
            raise FileNotFoundError(f"--base {base}: no such checkpoint folder")
        return Path(base)
    if preset.base == "packaged":
        if not (PACKAGED_BASE / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"{PACKAGED_BASE}: the packaged demo base is missing (a broken installation?); build one "
                "with `wav2vec2-ee demo --build-base` and pass --base <output-dir>/base/model"
            )
        return PACKAGED_BASE
    model_dir = out / QUICK_BASE
    if not (model_dir / "model.safetensors").is_file():
        build_base(out / "base", quick=True)
    return model_dir


def export_plain_ctc(run_dir: Path, model_dir: Path, dtype: str = "float16") -> Path:
    """Save the trained base in ``run_dir`` as a plain ``Wav2Vec2ForCTC`` checkpoint in ``model_dir``.

    The config loses the early-exit fields (a ``Wav2Vec2Config``; loading it here gives the default exits
    read through ``lm_head``); weights are written as ``dtype`` safetensors, with the processor files.
    Raises ``ValueError`` when ``run_dir``'s model has exits below its top layer.
    """
    import torch
    from transformers import AutoProcessor, Wav2Vec2Config, Wav2Vec2ForCTC

    model = load_model(str(run_dir))
    if model.config.exit_layers != [model.config.num_hidden_layers]:
        raise UserError(
            f"{run_dir}: exits after layers {model.config.exit_layers}; a CTC base has one head, at the top"
        )
    values = model.config.to_dict()
    for key in ("exit_layers", "share_exit_heads", "architectures", "auto_map"):
        values.pop(key, None)
    config = Wav2Vec2Config(**values)
    config.architectures = ["Wav2Vec2ForCTC"]
    plain = Wav2Vec2ForCTC(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("exit_heads.")}
    plain.load_state_dict(state, strict=True)
    plain.to(getattr(torch, dtype)).save_pretrained(str(model_dir))
    AutoProcessor.from_pretrained(str(run_dir)).save_pretrained(str(model_dir))
    return model_dir


def _train_spec(preset: BasePreset, out: Path, corpus: Path) -> RunSpec:
    model_file = out / "configs" / "model.json"
    atomic_write_text(model_file, json.dumps(preset.model, indent=2) + "\n")
    train = base_train_config(preset, model_file, corpus)
    return RunSpec("train", "CTC at the last layer only, from scratch", train)


#: The top of the base's model card: its metadata and what it is.
_CARD_HEADER = """---
library_name: transformers
pipeline_tag: automatic-speech-recognition
tags: [wav2vec2, ctc, wav2vec2-ee, synthetic-speech]
---
# wav2vec2-ee demo base

A small wav2vec2 CTC model (the embedded counterpart of `facebook/wav2vec2-base-960h`): CTC at its last
layer only, no exit heads. `wav2vec2-ee demo` fine-tunes it into an early-exit model. It is a plain
`Wav2Vec2ForCTC` checkpoint (float16 safetensors): `Wav2Vec2ForCTC.from_pretrained(this_folder)` and
`pipeline("automatic-speech-recognition", model=this_folder)` read it.
"""


def _model_card(preset: BasePreset, command: str, record: dict) -> str:
    """The base's ``README.md``."""
    if record.get("stages"):
        return _staged_model_card(preset, record)
    wer = record["wer"]
    test = format_wer_by_exit({"test (held-out voices)": wer["test"]})
    train_voices = ", ".join(f"layer {k}: {100 * v:.1f} %" for k, v in wer["train_voices"].items())
    model = preset.model
    timing = record["timing"]
    corpus = record["corpus"]
    return f"""{_CARD_HEADER}
## How it was made
```
{command}
```
- model: {model["num_hidden_layers"]} transformer layers, hidden size {model["hidden_size"]}, \
{model["num_attention_heads"]} heads, feed-forward {model["intermediate_size"]}, pre-LN; CNN \
{model["conv_dim"]} strides {model["conv_stride"]} (20 ms frames); {record["parameters"] / 1e6:.2f} M parameters
- data: the eSpeak NG corpus builder (`wav2vec2-ee make-corpus`), {corpus["num_utterances"]["train"]} \
training utterances ({corpus["hours"]["train"]:.2f} h), every training voice of the builder (seed \
{preset.corpus["seed"]}); the demo's dev and test voices are never in it
- augmentation: speed perturbation {preset.training["speed_perturbation"]}, additive white/pink/brown \
noise (p={preset.training["noise_prob"]}, SNR {preset.training["noise_snr_db"]} dB), synthetic \
reverberation (p={preset.training["reverb_prob"]}, RT60 {preset.training["reverb_rt60"]} s), SpecAugment \
time masks (p={model["mask_time_prob"]})
- training: {timing["steps"]} steps of batch {preset.training["per_device_train_batch_size"]} in \
{timing["train_runtime"] / 60:.1f} min ({timing["seconds_per_step"]:.2f} s/step) on \
{record["machine"]}; AdamW, peak learning rate {preset.training["learning_rate"]}, cosine schedule \
(time budget {record["train_minutes"]:g} min); final training loss {record["final_loss"]}
- `training_log.json`: the Trainer's log (loss, learning rate, gradient norm every 100 steps)

## WER per layer, read through the final head (greedy)
On the demo corpus's test split (voices never heard in training), every second layer's hidden states
read by the final `lm_head` (the original research's first table row):
```
{test}
```
On training voices (the demo corpus's train split, other sentences than this model's training,
{record["train_voice_utterances"]} utterances), at the final layer: {train_voices}.{_other_lines(record)}
"""


def _percent(wer: dict | None) -> str:
    """``{layer: wer}`` as ``"a / b / c %"`` (``-`` when missing)."""
    if not wer:
        return "-"
    return " / ".join(f"{100 * v:.1f}" for _, v in sorted((int(k), v) for k, v in wer.items())) + " %"


def _staged_model_card(preset: BasePreset, record: dict) -> str:
    """The base's ``README.md`` once it has been trained in stages: every stage on one line."""
    stages = record["stages"]
    model = preset.model
    corpus = record["corpus"]
    rows = []
    for st in stages:
        wer = st["wer"]
        rows.append(
            f"| {st['stage']} | `{st['command']}` | {st['started_from']} | {st['minutes']:.0f} | {st['steps']} | "
            f"{st['seconds_per_step']:.3f} | {st.get('precision', 'float32')} | {st['machine']} | "
            f"{st['final_loss']} | {_percent(wer.get('test'))} | {_percent(wer.get('other_synthesizer'))} |"
        )
    last = stages[-1]
    notes = "".join(f"\n\nStage {st['stage']}: {st['note']}" for st in stages if st.get("note"))
    test = format_wer_by_exit({"test (held-out voices)": record["wer"]["test"]})
    conditions = record.get("conditions")
    conditions_text = ""
    if conditions:
        lines = [f"{name:22s} {100 * wer:6.1f} %" for name, wer in conditions["wer"].items()]
        conditions_text = (
            "\n\nUnder recording conditions (`benchmarks/check_conditions.py`, the same test sentences, "
            f"layer {conditions['layer']}):\n```\n" + "\n".join(lines) + "\n```"
        )
    return f"""{_CARD_HEADER}
## How it was made: in stages
It was trained from scratch by `wav2vec2-ee demo --build-base` (stage 0), then continued by
`wav2vec2-ee demo --build-base --continue` (a warm restart from the previous stage's weights, one new
learning-rate cycle of at most {BASE_STAGE_MINUTES:g} minutes; its recipe: `BASE_STAGE_TRAINING` in
`wav2vec2_ee/demo/presets.py`: bfloat16 where the CPU measures it faster, no dropout, the recording conditions of
real audio beside noise and reverberation). Each stage's log is in `docs/demo-base/`.

| stage | command | started from | minutes | steps | s/step | precision | CPU | final loss | test WER, layers 2/4/6/8 | Festival, layer 8 |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}{notes}

- model: {model["num_hidden_layers"]} transformer layers, hidden size {model["hidden_size"]}, \
{model["num_attention_heads"]} heads, feed-forward {model["intermediate_size"]}, pre-LN; CNN \
{model["conv_dim"]} strides {model["conv_stride"]} (20 ms frames); {record["parameters"] / 1e6:.2f} M parameters
- data: the eSpeak NG corpus builder (`wav2vec2-ee make-corpus`), {corpus["num_utterances"]["train"]} \
training utterances ({corpus["hours"]["train"]:.2f} h), every training voice of the builder (seed \
{preset.corpus["seed"]}); the demo's dev and test voices are never in it{_other_lines(record, festival=False)}
- `training_log.json`: the Trainer's log of the last stage (loss, learning rate, gradient norm every 100 steps)

## WER per layer, read through the final head (greedy), after stage {last["stage"]}
On the demo corpus's test split (voices never heard in training), every second layer's hidden states
read by the final `lm_head` (the original research's first table row):
```
{test}
```
On training voices (the demo corpus's train split, other sentences than this model's training,
{record["train_voice_utterances"]} utterances), at the final layer: \
{", ".join(f"layer {k}: {100 * v:.1f} %" for k, v in record["wer"]["train_voices"].items())}.{_festival_line(record)}{conditions_text}
"""


def _festival_line(record: dict) -> str:
    check, wer = record.get("robustness_check"), record["wer"].get("other_synthesizer")
    if not (check and wer):
        return ""
    cells = ", ".join(f"layer {k}: {100 * v:.1f} %" for k, v in wer.items())
    return (
        f"\n\nOn speech of an engine no training split used ({check['synthesizer']}, the first {check['num']} "
        f"test sentences by each of its voices), at the final layer: {cells}."
    )


def _other_lines(record: dict, festival: bool = True) -> str:
    """The model card's lines on other synthesizers (none for a base trained on eSpeak NG alone)."""
    lines = []
    for other in record["corpus"].get("other_synthesizers", []):
        lines.append(
            f"Also trained on `{other['split']}`: {other['num_utterances']} utterances ({other['hours']:.2f} h) "
            f"spoken by {', '.join(other['voices'])} (`wav2vec2-ee make-corpus --synthesizer`)."
        )
    if not festival:
        return "".join(f"; {line[0].lower()}{line[1:]}" for line in lines)
    check, wer = record.get("robustness_check"), record["wer"].get("other_synthesizer")
    if check and wer:
        cells = ", ".join(f"layer {k}: {100 * v:.1f} %" for k, v in wer.items())
        lines.append(
            f"On speech of an engine no training split used ({check['synthesizer']}, the first {check['num']} "
            f"test sentences by each of its voices), at the final layer: {cells}."
        )
    return "".join(f"\n\n{line}" for line in lines)


def _machine() -> str:
    return cpu_description()


def _stage_zero(record: dict) -> dict:
    """The from-scratch build of a base's ``build_record.json`` (written before stages existed) as the
    first line of the stage table."""
    timing = record["timing"]
    return {
        "stage": 0,
        "command": record["command"],
        "started_from": "scratch",
        "minutes": timing["train_runtime"] / 60,
        "steps": timing["steps"],
        "seconds_per_step": timing["seconds_per_step"],
        "precision": "float32",
        "machine": record["machine"],
        "final_loss": record["final_loss"],
        "wer": record["wer"],
    }


def previous_stages(base: Path) -> list[dict]:
    """The stages of the base in folder ``base`` (its ``build_record.json``; an older record is its
    stage 0); empty when it has no record (any other CTC model)."""
    path = Path(base) / "build_record.json"
    if not path.is_file():
        return []
    record = json.loads(path.read_text(encoding="utf-8"))
    return list(record.get("stages") or [_stage_zero(record)])


def build_base(
    out: Path,
    quick: bool = False,
    train_minutes: float | None = None,
    overwrite: bool = False,
    demo_corpus: Path | None = None,
    continue_from: Path | None = None,
    progress: bool = True,
) -> Path:
    """Build the demo base into ``out`` (``<out>/model`` is the result) and return that folder.

    Steps: the base corpus (``<out>/corpus``), the demo corpus (``demo_corpus``, default beside ``out``:
    ``<out>/../corpus``; its test voices are the held-out evaluation), the training (``<out>/train``, resumed from its last
    checkpoint when interrupted), the plain CTC export, the evaluations and the model card.

    With ``continue_from`` (a base folder: the packaged one for ``--build-base --continue``), the
    training is a stage instead (:func:`~.presets.base_stage_config`, ``<out>/stage-<n>``): a warm restart
    from its weights with one new learning-rate cycle of ``train_minutes`` (default
    :data:`~.presets.BASE_STAGE_MINUTES`); the record and the model card list every stage so far. The
    word times of the training splits (``words.ctm``, where the stage's pauses go) are written first by
    that base's greedy alignment where missing.
    ``progress=False``: no progress bars (corpus or training).
    """

    preset = BASE_PRESETS["quick" if quick else "default"]
    _check_engines(preset)  # a missing synthesizer is named now, not after the eSpeak corpus is built
    corpus_dir = out / "corpus"
    summary = build_corpus(corpus_dir, **preset.corpus, progress=progress and sys.stderr.isatty())
    say(
        f"base corpus {corpus_dir}: train {summary.num_utterances['train']} utterances "
        f"({summary.hours['train']:.2f} h)"
    )
    other_hours = _other_synthesizers(preset, corpus_dir, progress)
    demo_corpus = out.parent / "corpus" if demo_corpus is None else Path(demo_corpus)
    demo = build_corpus(demo_corpus, **PRESETS["quick" if quick else "default"].corpus, progress=False)
    say(f"demo corpus {demo_corpus}: test {demo.num_utterances['test']} utterances of held-out voices")
    check_split = _robustness_split(preset, demo_corpus)

    stages = []
    if continue_from is None:
        spec = _train_spec(preset, out, corpus_dir)
        minutes = preset.train_minutes if train_minutes is None else train_minutes
    else:
        stages = previous_stages(continue_from)
        config = base_stage_config(preset, Path(continue_from).resolve(), corpus_dir)
        write_training_word_times(continue_from, corpus_dir, config["train_splits"])
        spec = RunSpec(
            f"stage-{len(stages)}", f"stage {len(stages)}: a warm restart from {continue_from}", config
        )
        minutes = BASE_STAGE_MINUTES if train_minutes is None else train_minutes
    timing = train_run(spec, out, overwrite=overwrite, time_budget=60.0 * minutes, progress=progress)
    run_dir = out / spec.name
    model_dir = export_plain_ctc(run_dir, out / "model")
    say(f"base model (plain Wav2Vec2ForCTC, float16): {model_dir}")

    top = int(preset.model["num_hidden_layers"])
    layers = list(range(2, top + 1, 2))  # every second layer through the final head
    test = evaluate_run(model_dir, out / "eval", demo_corpus, ("test",), overwrite=True, exits=layers)
    test = test["greedy"]["test"]
    train_voices = evaluate_run(
        model_dir, out / "eval_train_voices", demo_corpus, ("train",), overwrite=True, exits=[top]
    )
    train_wer = train_voices["greedy"]["train"]
    wer = {"test": test, "train_voices": train_wer}
    if check_split is not None:
        other = evaluate_run(
            model_dir, out / "eval_other", demo_corpus, (check_split,), overwrite=True, exits=[top]
        )
        wer["other_synthesizer"] = other["greedy"][check_split]
    run_summary = json.loads((run_dir / "run_summary.json").read_text(encoding="utf-8"))
    log = run_summary.get("log_history", [])
    losses = [e["loss"] for e in log if "loss" in e]
    command = (
        "wav2vec2-ee demo --build-base"
        + (" --quick" if quick else "")
        + (" --continue" if continue_from is not None else "")
        + (f" --base-minutes {train_minutes:g}" if train_minutes is not None else "")
    )
    final_loss = round(float(losses[-1]), 4) if losses else None
    if continue_from is not None:
        stages.append(
            {
                "stage": len(stages),
                "command": command,
                "started_from": f"stage {len(stages) - 1}" if stages else str(continue_from),
                "minutes": timing["train_runtime"] / 60,
                "steps": timing["steps"],
                "seconds_per_step": timing["seconds_per_step"],
                "precision": timing.get("precision", "float32"),
                "machine": _machine(),
                "final_loss": final_loss,
                "wer": wer,
                "recipe": BASE_STAGE_TRAINING,
            }
        )
    record = {
        "command": command,
        "train_minutes": minutes,
        "timing": timing,
        "corpus": {
            "num_utterances": summary.num_utterances,
            "hours": summary.hours,
            **preset.corpus,
            "other_synthesizers": [
                {**o, "hours": other_hours[o["split"]]} for o in preset.other_synthesizers
            ],
        },
        "robustness_check": preset.robustness_check,
        "wer": wer,
        "train_voice_utterances": train_voices["utterances"]["train"],
        "parameters": _count_parameters(model_dir),
        "machine": _machine(),
        "final_loss": final_loss,
        "stages": stages,
    }
    atomic_write_text(model_dir / "training_log.json", json.dumps(log, indent=1) + "\n")
    atomic_write_text(model_dir / "build_record.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(model_dir / "README.md", _model_card(preset, record["command"], record))
    if continue_from is not None:
        conditions = record_conditions(model_dir, demo_corpus, out / "conditions", preset)
        say("recording conditions, layer {}: {}".format(
            top, ", ".join(f"{name} {100 * wer:.1f} %" for name, wer in conditions.items())
        ))  # fmt: skip
    show(format_wer_by_exit({"test (held-out voices), read through the final head": test}))
    say(f"training voices, layer {top}: {100 * train_wer[top]:.1f} % WER")
    if check_split is not None:
        say(
            f"{check_split} (an engine no training split used), layer {top}: {100 * wer['other_synthesizer'][top]:.1f} % WER"
        )
    return model_dir


def _check_engines(preset: BasePreset) -> None:
    """Raise :class:`~wav2vec2_ee.corpus.external.SynthesizerUnavailableError` if an engine or a voice the
    preset's other synthesizers or its robustness check need is not installed."""
    voices = [voice_by_name(v) for o in preset.other_synthesizers for v in o["voices"]]
    check = preset.robustness_check
    if check:
        voices += voices_for(check.get("voices"), check["synthesizer"])
    check_voices(voices)


def _other_synthesizers(preset: BasePreset, corpus_dir: Path, progress: bool = True) -> dict[str, float]:
    """Build the preset's splits of other synthesizers into the base corpus; hours per split."""
    hours = {}
    for other in preset.other_synthesizers:
        record = build_external_split(
            corpus_dir,
            other["split"],
            int(other["num_utterances"]),
            other["voices"],
            seed=int(other.get("seed", 0)),
            progress=progress and sys.stderr.isatty(),
        )
        hours[other["split"]] = record["hours"]
        say(
            f"base corpus {corpus_dir}: {other['split']} {record['num_utterances']} utterances ({record['hours']:.2f} h)"
        )
    return hours


def _robustness_split(preset: BasePreset, demo_corpus: Path) -> str | None:
    """The preset's check on another engine: the demo test sentences spoken by its voices (the split's
    name), or ``None`` without one."""
    check = preset.robustness_check
    if not check:
        return None
    split = f"check_{check['synthesizer']}"
    texts = read_texts(demo_corpus, ["test"])[: int(check["num"])]
    build_external_split(
        demo_corpus, split, texts, check.get("voices"), engine=check["synthesizer"], every_voice=True, prosody=False,
        progress=False,
    )  # fmt: skip
    return split


def record_conditions(
    model_dir: Path, demo_corpus: Path, work_dir: Path, preset: BasePreset, names: list[str] | None = None
) -> dict:
    """Evaluate the base in ``model_dir`` at its last layer under the recording conditions of
    :data:`~wav2vec2_ee.evaluation.conditions.CONDITION_CHECKS` (the demo corpus's test split, built into
    ``work_dir``), add them to its ``build_record.json`` (and to its last stage) and rewrite its model
    card. ``names``: the conditions (default: all; the test split's word times, for the pauses between
    words, are written first by the packaged base when missing). Returns ``{name: wer}``."""
    top = int(preset.model["num_hidden_layers"])
    if names is None or any(n in WORD_TIME_CHECKS for n in names):
        write_word_times(PACKAGED_BASE, demo_corpus, "test")
    wer = check_conditions(model_dir, demo_corpus, "test", work_dir, names=names, exits=[top])
    at_top = {name: by_layer[top] for name, by_layer in wer.items()}
    path = model_dir / "build_record.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    record["conditions"] = {"layer": top, "wer": at_top}
    if record.get("stages"):
        record["stages"][-1]["conditions"] = at_top
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    atomic_write_text(model_dir / "README.md", _model_card(preset, record["command"], record))
    return at_top


def _count_parameters(model_dir: Path) -> int:
    """Number of weights in ``model_dir/model.safetensors`` (read from the header)."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (not iterable)
