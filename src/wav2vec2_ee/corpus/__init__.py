"""Synthetic English speech corpus generated with eSpeak NG (the project's embedded default dataset).

Main entry point: :func:`build_corpus`, which writes train / dev / test splits in the LibriSpeech
folder layout (16 kHz mono FLAC + ``*.trans.txt``). Submodules:

* :mod:`.espeak`: ctypes wrapper around libespeak-ng (``espeakng-loader``), with an ``espeak-ng`` binary fallback;
* :mod:`.text`: deterministic utterance generator driven by ``resources/vocabulary.json`` and ``grammar.json``;
* :mod:`.voices`: accents x voice variants = speakers, and their disjoint train / dev / test split;
* :mod:`.build`: planning, parallel synthesis and the on-disk layout;
* :mod:`.external`: splits spoken by other engines (CMU Flite, Festival; Debian packages), for variety in
  training and for checks on speech the eSpeak corpus builder did not make.
"""

from .build import PRESETS, CorpusSummary, build_corpus, load_summary, plan_corpus
from .espeak import BackendUnavailableError, ESpeakSynthesizer, synthesize
from .text import TRANSCRIPT_CHARS, UtteranceGenerator, generate_utterances, load_grammar
from .voices import Speaker, list_speakers, speakers_by_split

__all__ = [
    "PRESETS",
    "TRANSCRIPT_CHARS",
    "BackendUnavailableError",
    "CorpusSummary",
    "ESpeakSynthesizer",
    "Speaker",
    "UtteranceGenerator",
    "build_corpus",
    "generate_utterances",
    "list_speakers",
    "load_grammar",
    "load_summary",
    "plan_corpus",
    "speakers_by_split",
    "synthesize",
]
