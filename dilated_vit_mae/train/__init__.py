"""
Training: the machinery shared by pre-training (`scripts/run_mae.py`) and fine-tuning (`scripts/run_finetune.py`),
in the spirit of MAE's `engine_*.py` / `util/misc.py`.

- `core`: what both training scripts share, used from one place: their common flags (`training_parser`), the data
  source and its summary, the image processor for a config (`load_image_processor`), the schedule
  (`training_schedule`), the accelerator and the run folder (`start_run` -> `RunContext`: log, trackers, resume,
  checkpoints, the final save), the trainer state (`TrainerState`), the on-device loss meter of the loop
  (`StepMeter`) and the run summary's common keys;
- `lifecycle`: the output folder's rules (which files a run wrote, its generated model card included), run
  identity, resume checks, staged saves, CLI errors (exit 2);
- `checkpoints`: step checkpoints (save, prune, load) and the optimizer's weight-decay groups;
- `distributed`: the accelerator for every engine (DDP, FSDP2, DeepSpeed) with no silent fallback;
- `finetune`: the fine-tuning recipe (MAE's and the small-data one), layer-wise lr decay, mixup, the loss;
- `redaction`: secrets kept out of logs, run summaries and tracker configs.

Imports run one way: `train` imports `data` and the Hub files; `evaluation`, `publish` and the scripts import
`train`, never the reverse.
"""
