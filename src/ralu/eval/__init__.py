"""``ralu eval``: generate every method on the same prompts and seeds (one GPU or many), score, report.

- :mod:`.prompts`: built-in prompt sets and prompt files;
- :mod:`.methods`: method specs (``baseline:50``, ``steps:10``, presets, custom schedules, ``+teacache``);
- :mod:`.generate`: sharded, resumable generation with one JSONL manifest row per image;
- :mod:`.metrics` / :mod:`.score`: metrics as optional extras, each lazy-imported;
- :mod:`.report`: the paper's table layout and quality-vs-speedup plots;
- :mod:`.speed`: latency done properly (warm-up, synchronised, median, peak memory);
- :mod:`.export`: GenEval and T2I-CompBench folder layouts.
"""
