"""The CTC machinery shared by evaluation, inference, export and the demo (imported downward by each).

* :mod:`.decoding`: greedy and beam decoding, the lexicon-constrained beam search and its n-best
  posteriors (``greedy_decode``, ``greedy_decode_exits``, ``ctc_collapse``, ``BeamSearchDecoder``,
  ``LexiconBeamDecoder``, ``nbest_posterior``);
* :mod:`.decoder_spec`: one lexicon beam search (lexicon, n-best, beam, LM) from its options;
  :mod:`.lexicon`, :mod:`.ngram`: the lexicon and the Kneser-Ney word n-gram LM;
* :mod:`.metrics`: WER and per-frame statistics (``word_errors``, ``split_errors``,
  ``mean_frame_entropy``, ``mean_max_prob``);
* :mod:`.model`: a checkpoint loaded for inference (``load_evaluation_model``);
* :mod:`.engine`: the batched exit forward (``iter_exit_logits``, ``length_grouped_batches``).

The torch-free runtime (:mod:`wav2vec2_ee.lite`) uses none of these: it has numpy kernels of its own
and the policy core (:mod:`wav2vec2_ee.policy_core`).
"""
