"""The training order: length-grouped batches whose order depends on ``(seed, epoch)`` alone."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """``LengthGroupedSampler`` whose order is drawn from ``seed + epoch`` alone.

    The plain sampler draws from the global RNG, so a run resumed in the middle of a later epoch would
    see another order than the uninterrupted run. Here the order of epoch ``e`` is a function of
    ``(seed, e)``: identical after a resume and on every process. ``set_epoch`` is called by
    ``accelerate``'s data loader at the start of every epoch.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int, dataset=None):
        super().__init__(batch_size, lengths=lengths)
        self.seed = int(seed)
        self.epoch = 0
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):  # speed perturbation draws per epoch too
            self.dataset.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        lengths = self.lengths
        if hasattr(self.dataset, "lengths_in_epoch"):  # speed-perturbed lengths: group what gets padded
            lengths = self.dataset.lengths_in_epoch(self.epoch)
        order = get_length_grouped_indices(lengths, self.batch_size, generator=generator)
        if hasattr(self.dataset, "schedule"):  # items prepared ahead in this order
            self.dataset.schedule(order)
        return iter(order)


def epoch_seeded_sampler(args: TrainingArguments, dataset) -> EpochSeededLengthGroupedSampler | None:
    """The sampler for ``--train-sampling-strategy group_by_length`` over a dataset with ``lengths``
    (one batch of ``train_batch_size * gradient_accumulation_steps`` grouped at a time, seeded by
    ``--data-seed`` or ``--seed``); ``None`` otherwise (the Trainer's own sampler then)."""
    if args.train_sampling_strategy != "group_by_length" or not hasattr(dataset, "lengths"):
        return None
    seed = args.data_seed if args.data_seed is not None else args.seed
    return EpochSeededLengthGroupedSampler(
        args.train_batch_size * args.gradient_accumulation_steps,
        lengths=dataset.lengths,
        seed=seed,
        dataset=dataset,
    )
