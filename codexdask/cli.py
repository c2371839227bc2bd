"""The ``codexdask`` command: ``patch``, ``segment``, ``quantify``, ``demo``, ``doctor`` and
``convert-model``.

Errors a user can fix (:class:`~codexdask.errors.CodexDaskError`) are printed on one line and
exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codexdask.config import (
    PRECISIONS,
    QUANT_MASKS,
    SPLIT_DIRECTIONS,
    SPLIT_MODES,
    TIE_BREAKS,
    ZARR_FORMATS,
    PatchConfig,
    QuantifyConfig,
    SegmentConfig,
    load_yaml,
    make_config,
)
from codexdask.errors import CodexDaskError
from codexdask.layout import DEFAULT_IMAGE_MPP, PICKLE_COMPRESSIONS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="codexdask",
        description="Cell and nucleus segmentation of multiplexed tissue slides on Dask.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    patch = commands.add_parser("patch", help="cut a slide into a Zarr patch store with QC flags")
    patch.add_argument("slide", help="OME-TIFF / QPTIFF / TIFF, Zarr / OME-Zarr, or .npy (C, H, W)")
    patch.add_argument("--out", required=True, help="patch store to write, NAME.zarr")
    patch.add_argument("--nucleus", help="nucleus channel name (default DAPI)")
    patch.add_argument("--wholecell", help="whole-cell marker names, comma separated (max of them)")
    patch.add_argument("--antibodies", help="TSV with an antibody_name column (channel names)")
    patch.add_argument("--split-mode", choices=SPLIT_MODES, help="default: patches")
    patch.add_argument("--split-direction", choices=SPLIT_DIRECTIONS, help="for halves")
    patch.add_argument("--patch-size", nargs=2, type=int, metavar=("H", "W"),
                       help="default 512 512")
    patch.add_argument("--overlap", type=float, help="overlap fraction in [0, 1), default 0.1")
    patch.add_argument("--image-mpp", type=float,
                       help=f"microns per pixel (default: from OME, {DEFAULT_IMAGE_MPP})")
    patch.add_argument("--chunk-size", type=int,
                       help="chunk side of the slide in full_image/halves/quarters (default 1024)")
    patch.add_argument("--zarr-format", type=int, choices=ZARR_FORMATS,
                       help="Zarr format of the store (default 3; 2 for readers of v2 only)")
    patch.add_argument("--config", help="YAML file with the same keys (flags override it)")
    patch.add_argument("--overwrite", action="store_true", help="replace an existing store")

    segment = commands.add_parser("segment", help="segment and repair a patch store")
    segment.add_argument("store", help="patch store written by `codexdask patch`")
    segment.add_argument("--out", required=True, help="output directory")
    add_segment_options(segment)
    segment.add_argument("--quantify", action="store_true",
                         help="then quantify every cell on the same cluster (into OUT/quant, "
                              "defaults of `codexdask quantify`)")

    quantify = commands.add_parser(
        "quantify", help="measure every cell's markers and shape in a finished run")
    quantify.add_argument("results", help="output directory of `codexdask segment`")
    quantify.add_argument("--slide", help="the multiplexed slide (default: the patch store's "
                                          "source)")
    quantify.add_argument("--out", help="output directory (default RESULTS/quant)")
    quantify.add_argument("--masks", choices=QUANT_MASKS,
                          help="matched (default: repaired cells with nucleus and cytoplasm) "
                               "or raw (cells and nuclei apart)")
    quantify.add_argument("--stats", help="statistics besides the mean, comma separated: sum, "
                                          "std, min, max, median, pNN (e.g. p90)")
    quantify.add_argument("--no-morphology", dest="morphology", action="store_const",
                          const=False, help="skip the shape columns")
    quantify.add_argument("--markers", help="mcquant markers.csv (marker_name column)")
    quantify.add_argument("--antibodies", help="TSV with an antibody_name column")
    quantify.add_argument("--chunk-size", type=int,
                          help="side of the chunks read (default: the result store's)")
    quantify.add_argument("--config", help="YAML file with the same keys (flags override it)")
    add_cluster_options(quantify, "a quantification", gpus=False)

    demo = commands.add_parser("demo", help="synthetic slide -> patch store -> segmentation")
    demo.add_argument("--out", required=True, help="output directory")
    demo.add_argument("--size", type=int, default=1536, help="synthetic slide side in pixels")
    demo.add_argument("--patch-size", type=int, default=512, help="patch side in pixels")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the synthetic slide")
    add_segment_options(demo)

    doctor = commands.add_parser(
        "doctor", help="report versions, GPUs and where Mesmer weights come from"
    )
    doctor.add_argument("--json", action="store_true",
                        help="print the report as one JSON object (for scripts)")
    doctor.add_argument("--model-path", help="Mesmer weights to check (default: where "
                        "segment would look: $CODEXDASK_MODEL_PATH, deepcell's cache)")

    convert = commands.add_parser(
        "convert-model", help="convert deepcell's Mesmer model to PyTorch weights (.safetensors)"
    )
    from codexdask.mesmer import convert as converter

    converter.add_arguments(convert)
    return parser


def add_segment_options(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``segment`` and ``demo`` (every SegmentConfig key)."""
    parser.add_argument("--config", help="YAML file with the same keys (flags override it)")
    parser.add_argument("--backend", help="segmenter: watershed (default, offline) or mesmer")
    parser.add_argument("--model-path", help="Mesmer weights: a converted .safetensors file "
                        "(PyTorch) or a Keras SavedModel directory / .tar.gz (TensorFlow)")
    parser.add_argument("--image-mpp", type=float, help="microns per pixel (default: the store's)")
    parser.add_argument("--batch-size", help="patches per inference task: auto (default) or N")
    parser.add_argument("--tiles-per-call", help="256^2 tiles per network call: auto or N")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="Mesmer network precision on PyTorch (default fp32, lossless)")
    parser.add_argument("--tie-break", choices=TIE_BREAKS, help="repair tie-break rule")
    parser.add_argument("--block-size",
                        help="compute block side for logical patches: auto (default), N or none")
    parser.add_argument("--halo", help="context around each block in pixels: auto (default) or N")
    parser.add_argument("--max-window",
                        help="largest window for objects larger than the halo, in pixels: auto "
                        "(default: twice a block's window), N, or 0 to drop them")
    parser.add_argument("--tile-size", help=argparse.SUPPRESS)  # renamed: refused with a hint
    parser.add_argument("--pickle-compression", choices=PICKLE_COMPRESSIONS, help="default none")
    parser.add_argument("--pickle-compression-level", type=int, help="compressor level")
    parser.add_argument("--no-pickles", dest="save_pickles", action="store_const", const=False,
                        help="skip the two seg_res pickles")
    parser.add_argument("--no-mosaics", dest="save_mosaics", action="store_const", const=False,
                        help="skip the whole-slide label mosaics")
    parser.add_argument("--zarr-format", type=int, choices=ZARR_FORMATS,
                        help="result store and mosaics: 3 (default; sharded, OME-Zarr 0.5) or 2 "
                             "(OME-Zarr 0.4, for readers of Zarr v2 only)")
    parser.add_argument("--n-overlays", type=int, help="overlay PNGs to write (default 4)")
    add_cluster_options(parser, "a run", gpus=True)


def add_cluster_options(parser: argparse.ArgumentParser, what: str, *, gpus: bool) -> None:
    """The flags of where the work runs, and of what to do with an earlier ``what`` in --out."""
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler")
    if gpus:
        parser.add_argument("--gpus", action="store_const", const=True,
                            help="one worker per local GPU (dask-cuda)")
    parser.add_argument("--n-workers", type=int, help="local worker processes (default: cores)")
    parser.add_argument("--memory-limit", help="memory limit per local worker, e.g. 4GiB")
    parser.add_argument("--resume", action="store_const", const=True,
                        help=f"finish {what} that was interrupted, keeping the work done")
    parser.add_argument("--overwrite", action="store_const", const=True,
                        help=f"replace {what} in --out")


#: Argument names that are not configuration keys.
_NOT_CONFIG = {"command", "verbose", "config", "slide", "store", "out", "size", "seed", "json",
               "quantify", "results"}


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}


def segment_config(args: argparse.Namespace) -> SegmentConfig:
    """SegmentConfig from ``--config`` overridden by the flags."""
    flags = _flags(args)
    flags.pop("patch_size", None)
    return make_config(SegmentConfig, load_yaml(args.config) if args.config else {}, flags)


def cmd_patch(args: argparse.Namespace) -> int:
    from codexdask.store.patch_store import patch_slide

    flags = _flags(args)
    overwrite = bool(flags.pop("overwrite"))
    config = make_config(PatchConfig, load_yaml(args.config) if args.config else {}, flags)
    path = patch_slide(args.slide, args.out, config, overwrite=overwrite)
    print(f"patch store written: {path}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from codexdask.engine import cluster
    from codexdask.engine.runner import run
    from codexdask.segmenters import get_segmenter

    config = segment_config(args)
    if not args.quantify:
        print(run(args.store, args.out, config, progress=True).summary())
        return 0
    from codexdask.quantification import quantify

    segmenter = get_segmenter(config.backend, **config.segmenter_options())
    with cluster.connect(config, None, segmenter) as client:
        print(run(args.store, args.out, config, client=client, segmenter=segmenter,
                  progress=True).summary())
        print(quantify(args.out, client=client, progress=True,
                       overwrite=config.overwrite, resume=config.resume).summary())
    return 0


def cmd_quantify(args: argparse.Namespace) -> int:
    from codexdask.quantification import quantify

    config = make_config(QuantifyConfig, load_yaml(args.config) if args.config else {},
                         _flags(args), {"slide": args.slide})
    print(quantify(args.results, args.out, config, progress=True).summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from codexdask.demo import run_demo

    report = run_demo(
        Path(args.out), size=args.size, patch_size=args.patch_size, seed=args.seed,
        config=segment_config(args),
    )
    print(report)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from codexdask.doctor import doctor_report, format_doctor

    report = doctor_report(args.model_path)
    print(json.dumps(report, indent=2) if args.json else format_doctor(report))
    return 0


def cmd_convert_model(args: argparse.Namespace) -> int:
    from codexdask.mesmer import convert

    return convert.command(args)


COMMANDS = {"patch": cmd_patch, "segment": cmd_segment, "quantify": cmd_quantify,
            "demo": cmd_demo, "doctor": cmd_doctor, "convert-model": cmd_convert_model}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``codexdask`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # keep the cluster's own chatter (and its workers') off the terminal
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        logging.getLogger("distributed").setLevel(logging.ERROR)
    try:
        return COMMANDS[args.command](args)
    except CodexDaskError as exc:
        print(f"codexdask {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
