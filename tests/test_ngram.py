"""Word n-gram language model: Kneser-Ney numbers by hand, normalisation, ARPA round trip, and its
effect in the lexicon decoder."""

from __future__ import annotations

import math
import random

import pytest
import torch

from wav2vec2_ee.ctc.decoding import LexiconBeamDecoder
from wav2vec2_ee.ctc.lexicon import lexicon_from_texts
from wav2vec2_ee.ctc.ngram import EOS, UNK, ArpaLM, NgramLM, read_arpa
from wav2vec2_ee.vocab import build_tokenizer


def test_bigram_kneser_ney_by_hand():
    # <s> a b </s>, <s> a c </s>; D = 0.5. Unigram continuation counts: a 1, b 1, c 1, </s> 2 (total 5,
    # 4 types) over 5 symbols (a b c </s> <unk>): P1(a) = 0.5/5 + 0.5*4/5/5 = 0.18, P1(</s>) = 0.38.
    lm = NgramLM([["a", "b"], ["a", "c"]], order=2, discount=0.5)
    # an unseen context (<unk>) is the unigram level itself
    assert lm.prob("a", ["zzz"]) == pytest.approx(0.18)
    assert lm.prob(EOS, ["zzz"]) == pytest.approx(0.38)
    assert lm.prob("zzz", ["zzz"]) == lm.prob(UNK, ["zzz"]) == pytest.approx(0.08)
    # P(b | a) = (1 - 0.5)/2 + 0.5*2/2 * P1(b) = 0.25 + 0.09
    assert lm.prob("b", ["a"]) == pytest.approx(0.34)
    # after c only </s> was seen: P(</s> | c) = 0.5/1 + 0.5 * 0.38, P(a | c) = 0.5 * 0.18
    assert lm.prob(EOS, ["c"]) == pytest.approx(0.69)
    assert lm.prob("a", ["c"]) == pytest.approx(0.09)
    # sentence start (empty history): raw counts of (<s>, a) = 2, one type: 1.5/2 + 0.5/2 * 0.18
    assert lm.prob("a") == pytest.approx(0.795)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_probabilities_sum_to_one_and_arpa_round_trips(order, tmp_path):
    rng = random.Random(order)
    words = ["one", "two", "three", "four", "five", "six"]
    sentences = [[rng.choice(words) for _ in range(rng.randint(1, 6))] for _ in range(60)]
    lm = NgramLM(sentences, order=order)
    contexts = [(), ("one",), ("one", "two"), ("six", "six", "six"), ("nope", "one"), ("two", "nope")]
    for context in contexts:
        assert sum(lm.prob(w, context) for w in lm.symbols) == pytest.approx(1.0, abs=1e-9)
    lm.to_arpa(tmp_path / "lm.arpa")
    arpa = ArpaLM(tmp_path / "lm.arpa")
    assert arpa.order == order and arpa.vocab == lm.vocab
    for context in contexts:
        for w in lm.symbols:
            assert arpa.log10_prob(w, context) == pytest.approx(lm.log10_prob(w, context), abs=1e-6)
    # a model of the training text is better on it than the uniform distribution
    assert lm.perplexity(sentences) < len(lm.symbols)


def test_bad_arpa_and_bad_arguments_are_named(tmp_path):
    bad = tmp_path / "lm.arpa"
    bad.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\nnot-a-number a\n")
    with pytest.raises(ValueError, match="lm.arpa:5"):
        read_arpa(bad)
    with pytest.raises(FileNotFoundError, match="missing.arpa"):
        read_arpa(tmp_path / "missing.arpa")
    with pytest.raises(ValueError, match="order"):
        NgramLM([["a"]], order=0)
    with pytest.raises(ValueError, match="sentence"):
        NgramLM([], order=2)


def _mixed_logits(tokenizer, spellings: list[tuple[str, float]], peak: float = 12.0) -> torch.Tensor:
    """``(frames, vocab)`` logits over aligned spellings of equal length: frame ``2i`` puts weight ``w``
    (in log space) on character ``i`` of each spelling, frame ``2i+1`` is a blank."""
    vocab = tokenizer.get_vocab()
    length = len(spellings[0][0])
    logits = torch.zeros(2 * length + 1, len(vocab))
    for i in range(length):
        for text, weight in spellings:
            ch = text[i].replace(" ", tokenizer.word_delimiter_token)
            logits[2 * i, vocab[ch]] = max(logits[2 * i, vocab[ch]].item(), peak + weight)
        logits[2 * i + 1, tokenizer.pad_token_id] = peak
    logits[-1, tokenizer.pad_token_id] = peak
    return logits


def test_language_model_changes_the_lexicon_decoders_choice():
    tokenizer = build_tokenizer()
    texts = ["A CAR"] * 20 + ["THE CAT"] * 2 + ["A BIG CAR", "THE CAR"]
    lexicon = lexicon_from_texts(texts, tokenizer)
    # the acoustics slightly prefer CAT over CAR
    logits = _mixed_logits(tokenizer, [("A CAT", 0.3), ("A CAR", 0.0)])
    plain = LexiconBeamDecoder(tokenizer, lexicon, nbest=2, beam_size=50, word_score=0.0)
    assert plain.decode(logits) == "A CAT"
    lm = NgramLM([t.split() for t in texts], order=2)
    fused = LexiconBeamDecoder(
        tokenizer, lexicon, nbest=2, beam_size=50, word_score=0.0, lm=lm, lm_weight=1.0
    )
    assert fused.decode(logits) == "A CAR"
    # the n-best scores now include the LM: the best one gains its log-probabilities
    assert fused.nbest(logits)[0].score != plain.nbest(logits)[0].score


def test_kenlm_fusion_of_an_arpa_file_in_both_beam_searches(tmp_path):
    """flashlight's native KenLM reads our ARPA files; weights stay on natural-log probabilities, so an
    ARPA file of a model decodes as the model itself; the lexicon-free beam search fuses it over the
    model's own (lower-case) words."""
    from wav2vec2_ee.ctc.decoding import BeamSearchDecoder

    tokenizer = build_tokenizer()
    texts = ["A CAR"] * 20 + ["THE CAT"] * 2 + ["A BIG CAR", "THE CAR"]
    lexicon = lexicon_from_texts(texts, tokenizer)
    logits = _mixed_logits(tokenizer, [("A CAT", 0.3), ("A CAR", 0.0)])
    lm = NgramLM([t.split() for t in texts], order=2)
    lm.to_arpa(tmp_path / "lm.arpa")
    in_memory = LexiconBeamDecoder(
        tokenizer, lexicon, nbest=2, beam_size=50, word_score=0.0, lm=lm, lm_weight=1.0
    )
    from_file = LexiconBeamDecoder(
        tokenizer,
        lexicon,
        nbest=2,
        beam_size=50,
        word_score=0.0,
        lm=ArpaLM(tmp_path / "lm.arpa"),
        lm_weight=1.0,
    )
    a, b = in_memory.nbest(logits), from_file.nbest(logits)
    assert [h.text for h in a] == [h.text for h in b] and a[0].text == "A CAR"
    assert abs(a[0].score - b[0].score) < 1e-3
    # natural-log weights: the best hypothesis's score gains lm_weight * ln P(words) over the plain search
    plain = LexiconBeamDecoder(tokenizer, lexicon, nbest=2, beam_size=50, word_score=0.0)
    expected = sum(
        math.log(lm.prob(w, ctx)) for w, ctx in [("A", ()), ("CAR", ("A",)), ("</s>", ("A", "CAR"))]
    )
    car = next(h for h in plain.nbest(logits) if h.text == "A CAR")
    assert abs(a[0].score - car.score - expected) < 1e-3
    lower = tmp_path / "lower.arpa"  # a model of lower-case words, as most ARPA files are
    NgramLM([t.lower().split() for t in texts], order=2).to_arpa(lower)
    beam = BeamSearchDecoder(tokenizer, beam_width=50, kenlm_model=str(lower), alpha=1.0, beta=0.0)
    assert beam.decode(logits) == "a car"
    bad = tmp_path / "spaces.arpa"
    bad.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0 a\n\n\\end\\\n")
    with pytest.raises(ValueError, match="spaces.arpa"):
        LexiconBeamDecoder(tokenizer, lexicon, lm=ArpaLM(bad), lm_weight=1.0)
