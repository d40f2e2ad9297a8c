#!/usr/bin/env python
"""Linear probe of a frozen encoder on CelebA's attributes (or any single label column), with accelerate.

    accelerate launch scripts/linear_probe.py --model_name_or_path outputs/dilated-vit-mae-sample   # shipped sample
    accelerate launch scripts/linear_probe.py --model_name_or_path outputs/my-run --celeba_dir /data/celeba \\
        --pooling mean
    accelerate launch scripts/linear_probe.py --model_name_or_path facebook/vit-mae-base \\
        --dataset_name flwrlabs/celeba --output_dir outputs/probe-vit-mae-base           # ViTMAE, for comparison

The encoder (ours, or any transformers ViTMAE checkpoint, loaded with `AutoModel`) is frozen and sees the whole image
(`mask_ratio=0`); one feature per image (`--pooling cls|mean`) is extracted for the train and evaluation splits with the
model's own image processor (`dilated_vit_mae.data.transforms.eval_view`), sharded over the processes and gathered with
`gather_for_metrics`, and cached on disk (keyed by the checkpoint's weights, pooling, data, split and transform, and
checked against the image files' sizes and times: features of changed images are recomputed), so a second probe of the
same model (other labels, other probe settings) skips the encoder. A linear classifier (MAE's:
BatchNorm1d without affine, then Linear) is trained on the main process: multi-label BCE on the 40 attributes
(`--label_columns`, default every CelebA attribute present), or cross-entropy on one `--label_column`.

Reported: the mean of per-attribute accuracies (the CelebA convention) and the majority-class floor (the training
split's majority class of each attribute, scored on the evaluation split), through
`dilated_vit_mae.evaluation.metrics.load_metric("mean_attribute_accuracy")`; for one label column, accuracy and the majority floor;
and, where it is cheap (small sets), a logistic regression on the raw pixels of the same split (`raw_pixel_baseline`).
Where this differs from MAE's `main_linprobe.py`: the classifier trains on one fixed (evaluation) view of every image,
cached, with AdamW at lr 1e-3 (90 epochs, 10 warmup, cosine, batch 256, last partial batch dropped); MAE's sees a new
RandomResizedCrop + flip of every image each epoch and uses LARS at lr 0.1 x batch / 256 with batch 16,384.
Written to OUTPUT_DIR/linear_probe_results.json (OUTPUT_DIR defaults to the model folder when it is local, so the model
card can pick the numbers up).

`--protocol knn` replaces the linear classifier by DINO's weighted k-NN on the same (cached) features: L2-normalised
features, the `--knn_k` (20) most cosine-similar training images vote with weight exp(similarity / `--knn_temperature`
(0.07)); multi-label attributes are voted on one by one by the same neighbours. Written to OUTPUT_DIR/knn_results.json,
with the same score keys as the linear probe plus `knn_accuracy` (the headline: the mean attribute accuracy, or the
accuracy for one label column).

    accelerate launch scripts/linear_probe.py --model_name_or_path outputs/my-run --protocol knn
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from dilated_vit_mae.data.fingerprint import dataset_images_fingerprint  # noqa: E402
from dilated_vit_mae.train.core import (  # noqa: E402
    add_label_arguments,
    check_shared_arguments,
    data_source,
    launch_command,
    load_splits,
    training_parser,
)
from dilated_vit_mae.train.lifecycle import check_model_folder, positive_float, positive_int, run_cli  # noqa: E402
from dilated_vit_mae.evaluation.probe import (  # noqa: E402
    DEFAULT_FEATURE_CACHE_DIR,
    KNN_K,
    KNN_TEMPERATURE,
    PROBE_BATCH_SIZE,
    PROBE_EPOCHS,
    PROBE_LEARNING_RATE,
    PROBE_WARMUP_EPOCHS,
    FeatureCache,
    extract_features,
    knn_predict,
    load_frozen_encoder,
    model_fingerprint,
    predict_linear_probe,
    probe_scores,
    raw_pixel_baseline,
    train_linear_probe,
)
from dilated_vit_mae.data.labels import class_ids, drop_missing_labels, label_matrix, resolve_label_columns  # noqa: E402
from dilated_vit_mae.train.redaction import publishable, secret_values  # noqa: E402
from dilated_vit_mae.data.seeding import IndexedTransform  # noqa: E402
from dilated_vit_mae.data.transforms import collate_examples, eval_view  # noqa: E402


logger = get_logger(__name__)

RESULTS_FILE = "linear_probe_results.json"
KNN_RESULTS_FILE = "knn_results.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # the data flags of the training scripts (no abbreviations: `--tok` for `--token` would slip past redaction)
    parser, groups = training_parser(__doc__, defaults={"dataloader_num_workers": 0}, groups=("data",))
    data = groups["data"]
    data.add_argument("--train_split", default="train", help="Split the classifier is trained on.")
    data.add_argument("--eval_split", default="test", help="Split the accuracy is reported on.")
    add_label_arguments(data)

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_name_or_path", required=True, help="A folder saved by run_mae.py, or a ViTMAE checkpoint."
    )
    model.add_argument("--revision")
    model.add_argument("--token", help="Hub token for private models/datasets.")
    model.add_argument("--trust_remote_code", action="store_true")

    features = parser.add_argument_group("features")
    features.add_argument(
        "--pooling", choices=["cls", "mean"],
        help="CLS token or mean patch token (default: cls; mean for a fine-tuned global-pool classifier, as its head read).",
    )  # fmt: skip
    features.add_argument("--per_device_batch_size", type=int, default=64)
    features.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    features.add_argument("--feature_cache_dir", default=str(DEFAULT_FEATURE_CACHE_DIR))
    features.add_argument("--no_feature_cache", action="store_true", help="Neither read nor write cached features.")

    parser.add_argument(
        "--protocol", choices=["linear", "knn"], default="linear", help="Linear classifier, or DINO's weighted k-NN."
    )
    knn = parser.add_argument_group("k-NN (--protocol knn)")
    knn.add_argument("--knn_k", type=positive_int, default=KNN_K, help="Neighbours that vote.")
    knn.add_argument("--knn_temperature", type=positive_float, default=KNN_TEMPERATURE, help="Votes weigh exp(sim / T).")
    probe = parser.add_argument_group("linear classifier")
    probe.add_argument("--probe_epochs", type=int, default=PROBE_EPOCHS)
    probe.add_argument("--probe_batch_size", type=int, default=PROBE_BATCH_SIZE)
    probe.add_argument("--probe_learning_rate", type=float, default=PROBE_LEARNING_RATE)
    probe.add_argument("--probe_weight_decay", type=float, default=0.0)
    probe.add_argument("--seed", type=int, default=0)

    parser.add_argument("--output_dir", help="For linear_probe_results.json (default: the model folder, if local).")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded (tokens hidden) in the results
    check_shared_arguments(parser, args)
    if args.output_dir is None:
        local = Path(args.model_name_or_path).expanduser()
        args.output_dir = str(local) if local.is_dir() else str(
            REPO_ROOT / "outputs" / "linear_probe" / re.sub(r"[^A-Za-z0-9_.-]+", "--", args.model_name_or_path)
        )
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Features (all processes), classifier (main process)
# ----------------------------------------------------------------------------------------------------------------------


def split_features(
    args: argparse.Namespace,
    accelerator: Accelerator,
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    transform: Callable[[Any], torch.Tensor],
    description: dict[str, Any],
    cache: FeatureCache | None,
) -> tuple[torch.Tensor | None, bool]:
    """The split's features on the main process (`None` elsewhere) and whether they came from the cache."""
    use_cache = cache is not None and accelerator.is_main_process
    images = dataset_images_fingerprint(dataset, args.image_column_name) if use_cache else None
    cached = cache.load(description, images) if use_cache else None
    hit = [cached is not None]
    broadcast_object_list(hit)  # every process must agree on whether to run the (collective) extraction
    if hit[0]:
        return cached, True
    dataset = dataset.select_columns([args.image_column_name]).add_column("sample_index", list(range(len(dataset))))
    dataset.set_transform(IndexedTransform(transform, args.image_column_name))
    dataloader = DataLoader(
        dataset,
        batch_size=args.per_device_batch_size,
        collate_fn=collate_examples,
        num_workers=args.dataloader_num_workers,
        pin_memory=torch.cuda.is_available(),
    )
    dataloader = accelerator.prepare(dataloader)
    features = extract_features(
        model, dataloader, len(dataset), args.pooling, accelerator=accelerator, progress=True
    )
    if accelerator.is_main_process:
        if cache is not None:
            path = cache.save(description, features, images)
            logger.info(f"cached {tuple(features.shape)} features of {description['split']} in {path}")
        return features, False
    return None, False


def probe_labels(
    args: argparse.Namespace, train_set: datasets.Dataset, eval_set: datasets.Dataset, label_columns: list[str]
) -> tuple[str, torch.Tensor, torch.Tensor, int]:
    """`(task, train_labels, eval_labels, num_outputs)`: class ids of one `--label_column`, else 0/1 attribute rows."""
    if args.label_column is not None:
        train_ids, eval_ids, classes = class_ids(train_set[args.label_column], eval_set[args.label_column])
        return "single_label", torch.from_numpy(train_ids), torch.from_numpy(eval_ids), len(classes)
    train_labels = torch.from_numpy(label_matrix(train_set, label_columns))
    return "multi_label", train_labels, torch.from_numpy(label_matrix(eval_set, label_columns)), len(label_columns)


def classify(
    args: argparse.Namespace, features: dict[str, torch.Tensor], train_labels: torch.Tensor, task: str, num_outputs: int
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Predictions for the evaluation features (linear probe or k-NN) and the settings to record with them."""
    if args.protocol == "knn":
        predictions = knn_predict(
            features["train"], train_labels, features["eval"], task=task, k=args.knn_k,
            temperature=args.knn_temperature, num_classes=num_outputs,
        )  # fmt: skip
        knn = {
            "k": args.knn_k, "temperature": args.knn_temperature, "features": "L2-normalised",
            "similarity": "cosine", "vote_weight": "exp(similarity / temperature)",
        }  # fmt: skip
        return predictions, {"protocol": "knn", "knn": knn}
    probe = train_linear_probe(
        features["train"], train_labels, task=task, num_outputs=num_outputs, epochs=args.probe_epochs,
        batch_size=args.probe_batch_size, learning_rate=args.probe_learning_rate,
        weight_decay=args.probe_weight_decay, seed=args.seed,
    )  # fmt: skip
    settings = {
        "head": "BatchNorm1d(affine=False, eps=1e-6) + Linear", "optimizer": "AdamW", "epochs": args.probe_epochs,
        "warmup_epochs": PROBE_WARMUP_EPOCHS, "schedule": "linear warmup, then cosine to 0",
        "batch_size": args.probe_batch_size, "drop_last": True, "learning_rate": args.probe_learning_rate,
        "weight_decay": args.probe_weight_decay, "seed": args.seed,
        "train_views": "one fixed evaluation view per image (MAE: RandomResizedCrop + flip, new every epoch)",
    }  # fmt: skip
    return predict_linear_probe(probe, features["eval"], task=task), {"protocol": "linear", "probe": settings}


def main(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run the probe; returns the results (with `predictions` / `references` arrays) on the main process."""
    # ---- accelerator -------------------------------------------------------------------------------------------------
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()

    # ---- frozen encoder ----------------------------------------------------------------------------------------------
    check_model_folder(args.model_name_or_path)
    model, image_processor = load_frozen_encoder(
        args.model_name_or_path,
        revision=args.revision,
        token=args.token,
        cache_dir=args.cache_dir,
        trust_remote_code=args.trust_remote_code,
    )
    if args.pooling is None:  # a global-pool classifier's features are fc_norm of the mean (load_frozen_encoder)
        args.pooling = "mean" if getattr(model, "pooled_norm", None) is not None else "cls"
        logger.info(f"--pooling {args.pooling}")
    model.to(accelerator.device)  # inference only: no `prepare` (no gradients to synchronise)
    transform = eval_view(image_processor)

    # ---- data --------------------------------------------------------------------------------------------------------
    source = data_source(args)
    with accelerator.main_process_first():
        splits = load_splits(args, train_split=args.train_split, eval_split=args.eval_split)
    train_set, eval_set = splits[args.train_split], splits[args.eval_split]
    label_columns = resolve_label_columns(
        train_set.column_names, label_column=args.label_column, label_columns=args.label_columns
    )
    train_set, eval_set = (
        drop_missing_labels(dataset, label_columns, split=split, on_missing_label=args.on_missing_label)
        for dataset, split in ((train_set, args.train_split), (eval_set, args.eval_split))
    )

    # ---- features ----------------------------------------------------------------------------------------------------
    cache = None if args.no_feature_cache else FeatureCache(args.feature_cache_dir)
    local_source = Path(source).expanduser()
    common = {
        **model_fingerprint(args.model_name_or_path, args.revision),
        "pooling": args.pooling,
        "transform": {"class": type(transform).__name__, **{k: v for k, v in vars(transform).items()}},
        "source": str(local_source.resolve()) if local_source.exists() else source,
        "dataset_config_name": args.dataset_config_name,
        "mixed_precision": accelerator.mixed_precision,
    }
    features, from_cache = {}, {}
    for name, dataset, split in (("train", train_set, args.train_split), ("eval", eval_set, args.eval_split)):
        description = {
            **common,
            "split": split,
            "num_examples": len(dataset),
        }
        features[name], from_cache[name] = split_features(
            args, accelerator, model, dataset, transform, description, cache
        )
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        accelerator.end_training()
        return None

    # ---- linear classifier or k-NN (main process) --------------------------------------------------------------------
    task, train_labels, eval_labels, num_outputs = probe_labels(args, train_set, eval_set, label_columns)
    predictions, method = classify(args, features, train_labels, task, num_outputs)
    scores = probe_scores(
        predictions, eval_labels, task=task, train_labels=train_labels, attribute_names=label_columns
    )
    headline = "mean_attribute_accuracy" if task == "multi_label" else "accuracy"
    if task == "single_label":
        scores["per_attribute_accuracy"] = {args.label_column: scores["accuracy"]}
    if args.protocol == "knn":
        scores["knn_accuracy"] = scores[headline]
    baseline = raw_pixel_baseline(
        train_set, train_labels, {"eval": eval_set}, {"eval": eval_labels}, transform=transform,
        image_column=args.image_column_name, task=task, num_outputs=num_outputs,
    )  # fmt: skip
    raw_pixel = {"raw_pixel_baseline": baseline["eval"]} if isinstance(baseline, dict) else {"raw_pixel_baseline": None}
    raw_pixel["raw_pixel_baseline_model"] = (
        "logistic regression (L2, C=1, L-BFGS) on the standardised pixels of the evaluation view"
        if isinstance(baseline, dict) else baseline
    )  # fmt: skip

    # ---- save --------------------------------------------------------------------------------------------------------
    results = {
        **scores,
        **raw_pixel,
        "pooling": args.pooling,
        "num_train": len(train_set),
        "num_test": len(eval_set),
        "model": args.model_name_or_path,
        "command": launch_command(args, "scripts/linear_probe.py"),
        "task": task,
        "label_columns": label_columns,
        "train_split": args.train_split,
        "eval_split": args.eval_split,
        "dataset": source,
        "feature_dim": int(features["train"].shape[1]),
        "features_from_cache": from_cache,
        **method,
    }
    results_file = KNN_RESULTS_FILE if args.protocol == "knn" else RESULTS_FILE
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # uploaded with the model: token values (however the flag was spelt) and local paths stay out of it
    (output_dir / results_file).write_text(json.dumps(publishable(results, secret_values(args)), indent=2))
    raw_text = f"{results['raw_pixel_baseline']:.4f}" if results["raw_pixel_baseline"] is not None else "not computed"
    logger.info(
        f"{args.protocol}: {headline} {results[headline]:.4f} (majority floor {results['majority_baseline']:.4f}, "
        f"raw-pixel linear {raw_text}) on {len(eval_set)} {args.eval_split} images; wrote {output_dir / results_file}"
    )
    accelerator.end_training()
    return {**results, "predictions": predictions.numpy(), "references": eval_labels.numpy()}


if __name__ == "__main__":
    run_cli(main, parse_args())
