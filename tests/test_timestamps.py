"""Times in a transcript (wav2vec2_ee.timestamps): words from a CTC frame sequence, SRT and WebVTT."""

from __future__ import annotations

from wav2vec2_ee.timestamps import Segment, Word, format_srt, format_vtt, word_frames, words_from_frames

BLANK, BAR = 0, 4
TOKENS = {5: "a", 6: "b", 7: "c", 8: "d", BAR: "|"}


def test_words_span_the_frames_of_their_characters():
    #        0  1  2  3  4    5  6  7  8  9 10 11   12 13
    ids = [0, 5, 5, 0, 6, BAR, 0, 0, 7, 0, 7, 8, 0, 0]
    # "ab" (frames 1-4), then "ccd": c at 8, a second c at 10 (a blank between: a repeated letter), d at 11
    assert word_frames(ids, BLANK, BAR) == [([5, 6], 1, 5), ([7, 7, 8], 8, 12)]
    words = words_from_frames(ids, TOKENS, BLANK, BAR, frame_seconds=0.02, offset=10.0)
    assert words == [Word("ab", 10.02, 10.1), Word("ccd", 10.16, 10.24)]
    assert word_frames([0, 0, BAR, 0], BLANK, BAR) == [] and word_frames([], BLANK, BAR) == []
    # a character held over several frames ends the word at its last frame
    assert word_frames([5, 5, 5, 0, 0], BLANK, BAR) == [([5], 0, 3)]


def test_subtitle_formats():
    segments = [Segment(0.5, 2.25, "hello world"), Segment(3723.0, 3724.5, "later"), Segment(5.0, 6.0, "")]
    assert format_srt(segments) == (
        "1\n00:00:00,500 --> 00:00:02,250\nhello world\n\n2\n01:02:03,000 --> 01:02:04,500\nlater\n"
    )
    assert format_vtt(segments) == (
        "WEBVTT\n\n00:00:00.500 --> 00:00:02.250\nhello world\n\n01:02:03.000 --> 01:02:04.500\nlater\n"
    )
    row = Segment(1.0, 2.0, "hi", words=[Word("hi", 1.1, 1.3)], exit_layer=4).to_dict()
    assert row == {"start": 1.0, "end": 2.0, "text": "hi", "words": [{"text": "hi", "start": 1.1, "end": 1.3}],
                   "exit_layer": 4}  # fmt: skip
