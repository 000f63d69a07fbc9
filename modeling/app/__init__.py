"""The front door: from media and a question to an answer, for users.

- `videoqa`: `VideoQA` (load, ask, run with timings and stats) and its `Result`.
- `options`: `MediaOptions`, how videos and images are sampled and sized, validated once.
- `inputs`: media reading (decord, as qwen-vl-utils reads, without its removed torchvision fallback), the chat
  template and the processor; `decode`.
- `checkpoints`: a checkpoint's files checked before anything is loaded (`CheckpointError`).
- `timing`: the time to the first token and the peak memory of a `generate` call.
- `pictures`: the token-fates and token-budget pictures.
- `cli`: the `qwen-prunevid` command line (`python -m modeling`).

Builds on `modeling.integration` (the model), `modeling.demo` (the offline model and clip) and `modeling.prunevid`
(the settings); nothing below imports from here. Importing this package imports neither torch nor transformers.
"""
