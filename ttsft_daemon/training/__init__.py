"""Piper training for the daemon (piper-tts[train] 1.8.0, run in a child process).

* `runner`: `train()`, `read_state()`, `write_trainer_csv()`, `TrainingState`, checkpoint retention.
* `launcher`: `python -m ttsft_daemon.training.launcher fit|export|inspect`: piper.train with the fixes of the
  wheel's defects installed in-process, atomic checkpoints and a progress file.
* `export`: `export_voice()` (ONNX + config for PiperVoice), `evaluate_voice()` (Whisper word error rate).
* `mas`: monotonic alignment search adapter + numpy reference; `quality`: quality level -> model sizes;
  `progress`: file names and records shared by the trainer and the daemon; `sample_data`: a spoken test set.

Importing this package (or `runner`, `export`, `progress`) does not import torch; `launcher` does.
"""
