"""Each objective against a straightforward re-computation: a loop over utterances with F.ctc_loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wav2vec2_ee.objectives import build_objective, greedy_pseudo_labels
from wav2vec2_ee.vocab import build_tokenizer

from conftest import tiny_config

BLANK, DELIM = 0, 4


def _batch(batch=3, frames=30, vocab=32, exits=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(batch, frames, vocab, generator=g) * 3 for _ in range(exits)]
    lengths = torch.tensor([frames, frames - 7, frames - 12][:batch])
    labels = torch.full((batch, 9), -100, dtype=torch.long)
    for b, n in enumerate([9, 5, 3][:batch]):
        labels[b, :n] = torch.randint(5, vocab, (n,), generator=g)
    return logits, lengths, labels


def _ctc_one(z, T, y, reduction):
    """CTC of one utterance, computed alone (no padding at all)."""
    lp = F.log_softmax(z[:T].double(), -1).unsqueeze(1)
    y = y[y >= 0]
    loss = F.ctc_loss(lp, y[None], torch.tensor([T]), torch.tensor([len(y)]), blank=BLANK, reduction="sum")
    return loss / len(y) if reduction == "mean" else loss


def _ctc_ref(z, lengths, labels, reduction):
    losses = [_ctc_one(z[b], int(lengths[b]), labels[b], reduction) for b in range(z.shape[0])]
    return sum(losses) / len(losses) if reduction == "mean" else sum(losses)


def _greedy_ref(z, T):
    ids, prev = [], None
    for t in z[:T].argmax(-1).tolist():
        if t != prev and t != BLANK:
            ids.append(t)
        prev = t
    while ids and ids[0] == DELIM:
        ids.pop(0)
    while ids and ids[-1] == DELIM:
        ids.pop()
    return ids


def _pad(rows):
    out = torch.full((len(rows), max(1, max(map(len, rows)))), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("num_exits", [None, 2])
def test_ee_objective_matches_loop(reduction, num_exits):
    cfg = tiny_config(ctc_loss_reduction=reduction)
    logits, lengths, labels = _batch()
    out = build_objective("ee", cfg, num_exits=num_exits)(logits, lengths, labels)
    n = num_exits or 4
    expected = sum(_ctc_ref(logits[k], lengths, labels, reduction) for k in range(n))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert sorted(out.terms) == sorted(f"ctc_exit_{layer}" for layer in cfg.exit_layers[:n])
    assert out.terms["ctc_exit_1"].item() == pytest.approx(
        _ctc_ref(logits[0], lengths, labels, reduction).item(), rel=1e-5
    )


@pytest.mark.parametrize("num_exits", [None, 2, 4])
def test_kd_objective_matches_loop(num_exits):
    cfg = tiny_config(ctc_loss_reduction="sum")
    logits, lengths, labels = _batch()
    teacher = _batch(seed=7)[0][-1]
    y_hat = _pad([_greedy_ref(teacher[b], int(lengths[b])) for b in range(3)])
    out = build_objective("kd", cfg, ee_alpha=0.3, num_exits=num_exits)(logits, lengths, labels, y_hat)
    n = num_exits or 4
    ee = sum(_ctc_ref(logits[k], lengths, labels, "sum") for k in range(n))
    kd = sum(_ctc_ref(logits[k], lengths, y_hat, "sum") for k in range(n) if k < 3)
    assert out.loss.item() == pytest.approx((0.3 * ee + 0.7 * kd).item(), rel=1e-5)
    assert ("kd_exit_4" in out.terms) is False
    assert ("kd_exit_1" in out.terms) is True


def test_kd_requires_teacher_labels():
    logits, lengths, labels = _batch()
    with pytest.raises(ValueError, match="teacher_labels"):
        build_objective("kd", tiny_config())(logits, lengths, labels)


@pytest.mark.parametrize("num_exits", [None, 3])
def test_dkd_objective_matches_loop(num_exits):
    cfg = tiny_config(ctc_loss_reduction="mean")
    alphas = [0.6, 0.7, 0.8, 1.0]
    logits, lengths, labels = _batch()
    logits = [z.clone().requires_grad_(True) for z in logits]
    out = build_objective("dkd", cfg, ee_alpha=alphas, num_exits=num_exits)(logits, lengths, labels)
    y_hat = _pad([_greedy_ref(logits[-1][b].detach(), int(lengths[b])) for b in range(3)])
    n = num_exits or 4
    expected = 0.0
    for k in range(n):
        expected += alphas[k] * _ctc_ref(logits[k].detach(), lengths, labels, "mean")
        if k < 3:
            expected += (1 - alphas[k]) * _ctc_ref(logits[k].detach(), lengths, y_hat, "mean")
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # no gradient flows through the pseudo-labels: the last exit only gets its (weight 1.0) CTC gradient
    out.loss.backward()
    if n == 4:
        ref = logits[-1].detach().clone().requires_grad_(True)
        from wav2vec2_ee.objectives import ctc_at_exit

        ctc_at_exit(ref, lengths, labels, BLANK, cfg).backward()
        assert torch.allclose(logits[-1].grad, ref.grad, atol=1e-6)


def test_dkd_alpha_length_must_match_exits():
    with pytest.raises(ValueError, match="one weight per exit"):
        build_objective("dkd", tiny_config(), ee_alpha=[0.65, 0.70, 0.75, 0.80, 0.85, 1.00])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_objective("kd", tiny_config(), ee_alpha=1.5)
    with pytest.raises(ValueError, match="unknown objective 'xx'"):
        build_objective("xx", tiny_config())
    with pytest.raises(ValueError, match="num_exits"):
        build_objective("ee", tiny_config(), num_exits=5)


@pytest.mark.parametrize("inverse", [True, False])
@pytest.mark.parametrize("num_exits", [None, 1])
def test_confidence_objective_matches_loop(inverse, num_exits):
    cfg = tiny_config()
    logits, lengths, labels = _batch()
    out = build_objective("confidence", cfg, inverse_confidence=inverse, num_exits=num_exits)(
        logits, lengths, labels
    )
    expected = 0.0
    for k in range(num_exits or 4):
        z = logits[k]
        tops = [F.log_softmax(z[b, : int(lengths[b])].double(), -1).max(-1).values for b in range(3)]
        c = max(0.1, math.exp(torch.cat(tops).mean().item()))
        per = [
            _ctc_one(z[b], int(lengths[b]), labels[b], "sum").item() / int((labels[b] >= 0).sum())
            for b in range(3)
        ]
        w = 1 / c if inverse else c
        expected += sum(p * w for p in per) / 3
        assert out.terms[f"confidence_exit_{cfg.exit_layers[k]}"].item() == pytest.approx(c, rel=1e-5)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_confidence_is_floored_and_constant():
    cfg = tiny_config()
    logits, lengths, labels = _batch()
    flat = [torch.zeros_like(z, requires_grad=True) for z in logits]  # uniform: exp(-log 32) < 0.1
    out = build_objective("confidence", cfg)(flat, lengths, labels)
    assert out.terms["confidence_exit_1"].item() == pytest.approx(0.1)
    out.loss.backward()  # the confidence carries no gradient; the loss still does through CTC
    assert flat[0].grad is not None


def test_greedy_pseudo_labels_match_tokenizer_round_trip():
    tok = build_tokenizer()
    logits, lengths, _ = _batch(batch=3, frames=40)
    # make word delimiters and blanks frequent, and one leading/trailing delimiter
    for z in logits:
        z[:, ::3, DELIM] += 6
        z[:, 1::4, BLANK] += 6
        z[0, 0, DELIM] += 50
    z = logits[0]
    got = greedy_pseudo_labels(z, lengths, BLANK, DELIM)
    for b in range(3):
        T = int(lengths[b])
        ids = z[b, :T].argmax(-1).tolist()
        text = tok.decode(ids)  # CTC grouping, blank removal, '|' to spaces
        expected = tok(text.strip().replace(" ", "|")).input_ids
        row = got[b][got[b] >= 0].tolist()
        # the tokenizer collapses runs of spaces; ids keep a delimiter per blank-separated run
        collapsed = [t for i, t in enumerate(row) if not (t == DELIM and i and row[i - 1] == DELIM)]
        assert collapsed == expected
        assert row == _greedy_ref(z[b], T)
    assert (got[:, :][got < 0] == -100).all()


class _FixedTeacher(torch.nn.Module):
    """Stands in for a frozen teacher: fixed logits ``(batch, frames, vocab)``; counts its calls."""

    def __init__(self, logits, lengths):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.logits, self.lengths, self.calls = logits, lengths, 0

    def forward(self, values, attention_mask=None):
        self.calls += 1
        return type("Out", (), {"logits": self.logits, "output_lengths": self.lengths})()


def test_pseudo_labels_come_from_one_component():
    """TeacherLabels decides every objective's pseudo-labels: kd's frozen teacher in training, the
    student's own last exit in kd's evaluation and always in dkd (the labels dkd makes itself), none
    for ee and confidence."""
    from wav2vec2_ee.training.teacher import TeacherLabels

    cfg = tiny_config(ctc_loss_reduction="mean")
    logits, lengths, labels = _batch()
    own = _pad([_greedy_ref(logits[-1][b], int(lengths[b])) for b in range(3)])
    batch = {"input_values": torch.zeros(3, 800)}
    for name in ("ee", "confidence"):
        assert TeacherLabels.for_objective(build_objective(name, cfg)) is None

    dkd_objective = build_objective("dkd", cfg, ee_alpha=[0.6, 0.7, 0.8, 1.0])
    dkd = TeacherLabels.for_objective(dkd_objective)
    for training in (True, False):
        assert dkd.before_forward(batch, training) is None
        got = dkd.after_forward(None, logits, lengths, training)
        assert torch.equal(got, own)
        with_labels = dkd_objective(logits, lengths, labels, got).loss
        assert with_labels.item() == dkd_objective(logits, lengths, labels).loss.item()

    teacher_logits = _batch(seed=7)[0][-1]
    teacher = _FixedTeacher(teacher_logits, lengths)
    kd = TeacherLabels.for_objective(build_objective("kd", cfg), teacher)
    from_teacher = kd.before_forward(batch, training=True)
    expected = _pad([_greedy_ref(teacher_logits[b], int(lengths[b])) for b in range(3)])
    assert teacher.calls == 1 and torch.equal(from_teacher, expected)
    assert kd.after_forward(from_teacher, logits, lengths, training=True) is from_teacher
    assert kd.before_forward(batch, training=False) is None and teacher.calls == 1
    assert torch.equal(kd.after_forward(None, logits, lengths, training=False), own)
    # kd with no teacher at all: no labels in training (the objective then says so), its own in evaluation
    alone = TeacherLabels.for_objective(build_objective("kd", cfg))
    assert (
        alone.before_forward(batch, True) is None and alone.after_forward(None, logits, lengths, True) is None
    )
    assert torch.equal(alone.after_forward(None, logits, lengths, False), own)
