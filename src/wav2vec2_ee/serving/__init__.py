"""The transcription server (``wav2vec2-ee serve``, the ``[serve]`` extra): an OpenAI-compatible HTTP API
whose early exits absorb load.

* :mod:`.arguments`: the command's options and parser (torch-free: ``serve --help``);
* :mod:`.controller`: the load-adaptive operating point and the online accuracy check (pure objects);
* :mod:`.scheduler`: the bounded queue, dynamic batching and the one model worker (torch-free);
* :mod:`.uploads`: an upload's bytes to checked pieces of 16 kHz audio, split at pauses (torch-free);
* :mod:`.responses`: OpenAI's response formats (json, text, verbose_json, srt, vtt);
* :mod:`.frontier`: the operating points of a calibration (its dev exit table, simulated);
* :mod:`.engine`: mixed-policy batches on the early-exit engine (:class:`~.engine.BatchPolicy`);
* :mod:`.metrics`: the Prometheus series; :mod:`.service`: all of it behind the API;
* :mod:`.app`: the FastAPI app (routes, errors, limits, the page ``page.html``); :mod:`.cli`: the command.

How to run it, alone or as replicas: ``docs/guide.md``, "Serving".
"""
