"""The `maskbatch` command: parse arguments, call one library function, print a summary."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from collections.abc import Sequence

if "__mp_main__" in sys.modules and sys.modules["__mp_main__"] is sys.modules.get("__main__"):
    # This module is being imported as the main module of a local Dask worker process that this
    # command spawned: Ctrl-C in the terminal reaches that process too, and is the driver's to
    # handle (it closes the cluster). Ignored from here, before the worker imports its libraries,
    # the press no longer prints a KeyboardInterrupt traceback per worker. (Only there: a process
    # that merely has an `__mp_main__` module, e.g. after a multiprocessing pool ran in it, keeps
    # Ctrl-C, and so do the programs it starts.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

from maskbatch.arguments import build_parser  # noqa: E402
from maskbatch.config import ClusterConfig, DetectorConfig, InputLimits  # noqa: E402
from maskbatch.errors import MaskbatchError  # noqa: E402
from maskbatch.evaluation.truth import EvaluationWarning  # noqa: E402
from maskbatch.jobs.console import extract_table, format_table, predict_table  # noqa: E402
from maskbatch.jobs.evaluate import evaluate  # noqa: E402
from maskbatch.jobs.extract import extract  # noqa: E402
from maskbatch.jobs.predict import predict  # noqa: E402
from maskbatch.runtime import cluster  # noqa: E402
from maskbatch.storage import describe_error  # noqa: E402
from maskbatch.train import train, train_detector, train_head  # noqa: E402


def _cluster_config(args: argparse.Namespace) -> ClusterConfig:
    tls = (args.tls_ca_file, args.tls_cert, args.tls_key)
    if any(tls) and not all(tls):
        raise MaskbatchError("TLS needs all of --tls-ca-file, --tls-cert and --tls-key")
    return ClusterConfig(
        scheduler=args.scheduler, scheduler_file=args.scheduler_file, workers=args.workers,
        threads_per_worker=args.threads_per_worker, partition_size=args.partition_size,
        progress=not args.no_progress, min_workers=args.min_workers,
        security=cluster.tls_security(*tls) if any(tls) else None)


def _net_options(args: argparse.Namespace) -> dict:
    """The options of `train` that shape the nets it trains, as given on the command line (the
    ones left out keep train()'s defaults)."""
    given = {"arch": args.arch, "epochs": args.epochs, "batch_size": args.batch_size,
             "eval_crops": args.eval_crops, "threads": args.threads}
    return {key: value for key, value in given.items() if value is not None}


def _run(args: argparse.Namespace) -> None:
    if args.command == "extract":
        result = extract(args.dataset, args.out, layout=args.layout, annotations=args.annotations,
                         label_map=args.label_map, crop_size=args.crop_size,
                         cluster_config=_cluster_config(args), overwrite=args.overwrite,
                         split=args.split, classes=args.classes)
        print(extract_table(result))
    elif args.command == "predict":
        detector = DetectorConfig(mode=args.mode, confidence=args.confidence, gamma=args.gamma,
                                  min_face=args.min_face)
        limits = InputLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                             read_timeout=args.read_timeout)
        result = predict(args.images, args.out, images_dir=args.images_dir, model=args.model,
                         detector=detector, cluster_config=_cluster_config(args),
                         previews=args.previews, resume=args.resume, overwrite=args.overwrite,
                         limits=limits, fps=args.fps, save_crops=args.save_crops, blur=args.blur,
                         blur_confidence=args.blur_confidence,
                         segment_seconds=args.segment_seconds, classes=args.classes)
        print(predict_table(result))
    elif args.command == "train" and args.base:
        if args.classes != 3:
            raise MaskbatchError("--base trains a head for the third class: use it with "
                                 "--classes 3")
        given = _net_options(args)
        if given:
            flags = ", ".join("--" + key.replace("_", "-") for key in given)
            raise MaskbatchError(f"--base keeps the base model's nets as they are and fits only "
                                 f"a head: {flags} cannot apply")
        card = train_head(args.crops, args.out, None if args.base == "bundled" else args.base,
                          seed=args.seed)
        cv = card["cross_validation"]
        print(f"model written to {args.out} (sha256 {card['onnx_sha256'][:12]}…); "
              f"grouped CV AP of face_with_mask_incorrect {cv['incorrect_ap']:.3f}")
    elif args.command == "train":
        card = train(args.crops, args.out, seed=args.seed, classes=args.classes,
                     **_net_options(args))
        print(f"model written to {args.out} (sha256 {card['onnx_sha256'][:12]}…)")
    elif args.command == "train-detector":
        card = train_detector(args.datasets, args.out, epochs=args.epochs, seed=args.seed,
                              part=None if args.split == "all" else args.split, steps=args.steps,
                              limit=args.limit, teacher=args.teacher, start=args.start)
        val = "".join(f"; {k} validation det AP {v['det_ap']:.3f}"
                      for k, v in card.get("validation", {}).items())
        fit = card.get("pixels")
        placed = f"; boxes shifted {fit['dx']:+g}, {fit['dy']:+g} px and rounded" if fit else ""
        print(f"detector written to {args.out} (sha256 {card['onnx_sha256'][:12]}…){placed}{val}")
    elif args.command == "evaluate":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EvaluationWarning)  # format_table lists them
            metrics = evaluate(args.truth, args.pred, out_dir=args.out, iou=args.iou,
                               resamples=args.resamples, baseline=args.baseline,
                               classes=args.classes)
        print(format_table(metrics))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except MaskbatchError as exc:
        print(f"maskbatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        urls = [getattr(args, k, None) for k in ("images", "dataset", "crops", "truth", "pred",
                                                  "out", "images_dir")]
        message = describe_error(exc, urls, out=getattr(args, "out", None))
        if message is None:
            raise
        print(f"maskbatch {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        for noisy in ("asyncio", "distributed", "tornado"):  # a cluster closed mid-start
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        print(f"maskbatch {args.command}: interrupted; finished partitions are kept "
              "(run again with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(os.sys.argv[1:]))
