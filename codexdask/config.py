"""Run configuration: every key, its default and its check, in one place.

Two flat configurations exist, one per command: :class:`PatchConfig` for ``codexdask patch`` and
:class:`SegmentConfig` for ``codexdask segment``. YAML files use the same key names as the
dataclass fields (which are also the command-line flags with ``-`` for ``_``); command-line
flags override the file. Unknown keys are refused with the closest known key suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml

from codexdask.errors import ConfigError
from codexdask.layout import pickle_compression

#: Environment variable giving Mesmer's weights when no ``model_path`` is configured.
MODEL_PATH_ENV = "CODEXDASK_MODEL_PATH"
#: Keys that were renamed: old name -> new name (an old key is refused with the new one named).
RENAMED_KEYS = {"tile_size": "block_size"}
SPLIT_MODES = ("patches", "full_image", "halves", "quarters")
SPLIT_DIRECTIONS = ("vertical", "horizontal")
#: Mesmer's network precisions on PyTorch: float32, float32 with TF32 tensor cores (CUDA), and
#: bfloat16 / float16 autocast. fp32 is the lossless default.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
#: How a cell chooses among equally good nuclei: the lowest nucleus label, or the original
#: pipeline's CPU iteration order (for bit-for-bit comparisons with it).
TieBreakName = Literal["lowest-label", "aegle-cpu"]
TIE_BREAKS: tuple[str, ...] = get_args(TieBreakName)
#: The Zarr formats of the stores codexdask writes; new stores are v3 (``docs/architecture.md``,
#: "Store formats").
ZARR_FORMATS = (2, 3)
DEFAULT_ZARR_FORMAT = 3


@dataclasses.dataclass
class PatchConfig:
    """How a slide is cut into a patch store (``docs/semantics.md``, patch geometry and QC).

    Attributes
    ----------
    nucleus : str
        Name of the nucleus channel (e.g. ``"DAPI"``).
    wholecell : list of str
        Whole-cell marker names; the whole-cell channel is their pixel-wise maximum.
    antibodies : str or None
        TSV with an ``antibody_name`` column giving channel names in file order; overrides
        OME names.
    split_mode : {"patches", "full_image", "halves", "quarters"}
    split_direction : {"vertical", "horizontal"}
        Which way ``halves`` cuts.
    patch_size : (int, int) or int
        Patch height and width in pixels (``patches`` mode); an int is a square.
    overlap : float
        Fraction of a patch shared with its neighbour, in [0, 1).
    image_mpp : float or None
        Microns per pixel; ``None`` takes it from OME metadata, else 0.5.
    non_zero_perc_threshold : float
        A patch whose nucleus channel has a smaller non-zero fraction is empty.
    mean_intensity_threshold : float
        A patch whose nucleus channel has a smaller mean is noisy.
    chunk_size : int
        Side of the Zarr chunks of the slide in ``full_image``, ``halves`` and ``quarters``
        modes, whose logical patches are stored as one chunked image.
    zarr_format : {3, 2}
        Zarr format of the patch store (2 for readers that only read Zarr v2).
    """

    nucleus: str = "DAPI"
    wholecell: list[str] = dataclasses.field(default_factory=lambda: ["CD45"])
    antibodies: str | None = None
    split_mode: str = "patches"
    split_direction: str = "vertical"
    patch_size: tuple[int, int] = (512, 512)
    overlap: float = 0.1
    image_mpp: float | None = None
    non_zero_perc_threshold: float = 0.05
    mean_intensity_threshold: float = 1.0
    chunk_size: int = 1024
    zarr_format: int = DEFAULT_ZARR_FORMAT

    def __post_init__(self) -> None:
        if isinstance(self.wholecell, str):
            self.wholecell = [w.strip() for w in self.wholecell.split(",") if w.strip()]
        self.wholecell = list(self.wholecell)
        if not self.wholecell:
            raise ConfigError(
                "wholecell: name at least one whole-cell marker, e.g. --wholecell CD45"
            )
        _check_choice("split_mode", self.split_mode, SPLIT_MODES)
        _check_choice("split_direction", self.split_direction, SPLIT_DIRECTIONS)
        value = self.patch_size
        size = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(
                f"patch_size must be two positive integers (height width), got {self.patch_size!r}"
            )
        self.patch_size = (size[0], size[1])
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ConfigError(
                f"overlap must lie in [0, 1), got {self.overlap!r}; e.g. --overlap 0.1"
            )
        _check_mpp(self.image_mpp)
        if self.non_zero_perc_threshold < 0 or self.mean_intensity_threshold < 0:
            raise ConfigError("QC thresholds must be >= 0")
        self.chunk_size = int(auto_or_positive_int("chunk_size", self.chunk_size))
        if self.chunk_size < 64:
            raise ConfigError(f"chunk_size must be at least 64 pixels, got {self.chunk_size}")
        self.zarr_format = check_zarr_format(self.zarr_format)


@dataclasses.dataclass
class SegmentConfig:
    """How a patch store is segmented and repaired.

    Attributes
    ----------
    backend : str
        Registered segmenter name: ``"watershed"`` (offline, CPU) or ``"mesmer"``.
    model_path : str or None
        Mesmer weights: a converted ``.safetensors`` file (runs on PyTorch) or a Keras
        SavedModel directory / deepcell's archive (runs on TensorFlow); see the README on
        weights.
    image_mpp : float or None
        Overrides the store's microns per pixel.
    batch_size : "auto" or int
        Patches per inference task; ``"auto"`` lets the planner choose from free memory.
    tiles_per_call : "auto" or int
        256² tiles per network call (Mesmer); pin to 4 for deepcell's exact labels.
    precision : {"fp32", "tf32", "bf16", "fp16"}
        Mesmer's network precision on PyTorch (TensorFlow weights: fp32 only). fp32 is exact to
        the converted weights; the others are faster on GPUs and change a few labels.
    tie_break : {"lowest-label", "aegle-cpu"}
        Repair tie-break rule.
    block_size : "auto", int or "none"
        Side of the compute blocks of logical patches (``full_image``, ``halves``, ``quarters``):
        ``"auto"`` takes the segmenter's (watershed 1024 px; Mesmer 1024 µm, 2048 px at
        0.5 µm/px), ``"none"`` segments each logical patch in one piece (memory grows with the
        patch).
    halo : "auto" or int
        Pixels of context around each block; ``"auto"`` takes the segmenter's (the space objects
        need to be seen whole plus the reach of its local operations).
    max_window : "auto" or int
        Largest side, in pixels, of the window in which an object larger than the halo allows is
        segmented again; ``"auto"`` is twice a block's window (``2 × (block_size + 2 × halo)``),
        ``0`` drops such objects (counted and warned about) instead.
    save_pickles : bool
        Write ``matched_seg_res_batch.pickle`` and ``original_seg_res_batch.pickle``.
    pickle_compression : {"none", "gzip", "bz2", "xz", "zstd"}
    pickle_compression_level : int or None
    save_mosaics : bool
        Write whole-slide label mosaics (OME-Zarr labels and pyramidal OME-TIFF).
    zarr_format : {3, 2}
        Zarr format of a new result store and its mosaics (3: OME-Zarr 0.5 mosaics, sharded;
        2: OME-Zarr 0.4, for readers that only read Zarr v2). A resumed run keeps its result
        store's format.
    n_overlays : int
        Overlay PNGs written for the first informative patches.
    scheduler : str or None
        Address of an existing Dask scheduler; ``None`` starts a local cluster.
    gpus : bool
        Start a ``LocalCUDACluster`` with one worker per GPU.
    n_workers : int or None
        Worker processes of the embedded local cluster (default: one per core).
    memory_limit : str or None
        Memory limit per local worker, e.g. ``"2GiB"`` (default: RAM shared evenly).
    resume : bool
        Continue a run in the output directory, computing only missing patches.
    overwrite : bool
        Replace a run already in the output directory.
    """

    backend: str = "watershed"
    model_path: str | None = None
    image_mpp: float | None = None
    batch_size: int | str = "auto"
    tiles_per_call: int | str = "auto"
    precision: str = "fp32"
    tie_break: TieBreakName = "lowest-label"
    block_size: int | str = "auto"
    halo: int | str = "auto"
    max_window: int | str = "auto"
    save_pickles: bool = True
    pickle_compression: str = "none"
    pickle_compression_level: int | None = None
    save_mosaics: bool = True
    zarr_format: int = DEFAULT_ZARR_FORMAT
    n_overlays: int = 4
    scheduler: str | None = None
    gpus: bool = False
    n_workers: int | None = None
    memory_limit: str | None = None
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.batch_size = auto_or_positive_int("batch_size", self.batch_size)
        self.tiles_per_call = auto_or_positive_int("tiles_per_call", self.tiles_per_call)
        _check_choice("tie_break", self.tie_break, TIE_BREAKS)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.block_size != "none":
            self.block_size = auto_or_positive_int("block_size", self.block_size)
            if self.block_size != "auto" and int(self.block_size) < 64:
                raise ConfigError(f"block_size must be at least 64 pixels (or 'auto' or 'none'), "
                                  f"got {self.block_size}")
        if self.halo != "auto":
            try:
                self.halo = int(self.halo)
            except (TypeError, ValueError):
                raise ConfigError(f"halo must be 'auto' or pixels >= 0, got {self.halo!r}") \
                    from None
            if self.halo < 0:
                raise ConfigError(f"halo must be 'auto' or pixels >= 0, got {self.halo}")
        if self.max_window != "auto":
            try:
                self.max_window = int(self.max_window)
            except (TypeError, ValueError):
                raise ConfigError(f"max_window must be 'auto' or pixels >= 0, got "
                                  f"{self.max_window!r}") from None
            if self.max_window < 0:
                raise ConfigError(f"max_window must be 'auto' or pixels >= 0, got "
                                  f"{self.max_window}")
        self.pickle_compression = pickle_compression(self.pickle_compression)
        self.zarr_format = check_zarr_format(self.zarr_format)
        _check_mpp(self.image_mpp)
        if self.n_workers is not None and int(self.n_workers) < 1:
            raise ConfigError(f"n_workers must be >= 1, got {self.n_workers!r}")
        if self.resume and self.overwrite:
            raise ConfigError("choose one of --resume and --overwrite, not both")

    def segmenter_options(self) -> dict[str, Any]:
        """Constructor options of the configured backend (``get_segmenter(backend, **these)``)."""
        if self.backend == "mesmer":
            return {"model_path": model_path_or_environment(self.model_path),
                    "tiles_per_call": self.tiles_per_call,
                    "precision": self.precision}
        return {}


#: Which masks ``codexdask quantify`` measures: the repaired pairs or the segmenter's own.
QUANT_MASKS = ("matched", "raw")
#: Statistics besides the mean; ``pNN`` (0 <= NN <= 100) is a percentile.
QUANT_STATS = ("sum", "std", "min", "max", "median")


@dataclasses.dataclass
class QuantifyConfig:
    """How a finished segmentation is quantified (``codexdask quantify``).

    Attributes
    ----------
    slide : str or None
        The multiplexed slide to measure; ``None`` takes the source the patch store records.
    masks : {"matched", "raw"}
        ``matched``: one row per repaired cell, with its nucleus and cytoplasm; ``raw``: the
        segmenter's cells and nuclei, each on its own.
    stats : list of str
        Statistics besides the mean: ``sum``, ``std``, ``min``, ``max``, ``median``, ``pNN``.
    morphology : bool
        Measure each object's shape.
    markers : str or None
        mcquant's ``markers.csv`` (column ``marker_name``, one row per channel).
    antibodies : str or None
        TSV with an ``antibody_name`` column, one row per channel.
    chunk_size : int or None
        Side of the chunks the slide is read in; ``None`` follows the result store's chunks.
    scheduler, n_workers, memory_limit, resume, overwrite
        As for :class:`SegmentConfig`.
    """

    slide: str | None = None
    masks: str = "matched"
    stats: list[str] = dataclasses.field(default_factory=list)
    morphology: bool = True
    markers: str | None = None
    antibodies: str | None = None
    chunk_size: int | None = None
    scheduler: str | None = None
    n_workers: int | None = None
    memory_limit: str | None = None
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        _check_choice("masks", self.masks, QUANT_MASKS)
        if isinstance(self.stats, str):
            self.stats = [s for s in self.stats.split(",") if s.strip()]
        self.stats = [str(s).strip().lower() for s in self.stats if str(s).strip() != "mean"]
        for stat in self.stats:
            if stat not in QUANT_STATS and not _is_percentile(stat):
                raise ConfigError(
                    f"unknown statistic {stat!r}; choose from mean, {', '.join(QUANT_STATS)} or "
                    "a percentile pNN (0 <= NN <= 100), e.g. --stats median,p90")
        self.stats = list(dict.fromkeys(self.stats))
        if self.chunk_size is not None:
            self.chunk_size = int(auto_or_positive_int("chunk_size", self.chunk_size))
            if self.chunk_size < 16:
                raise ConfigError(f"chunk_size must be at least 16 pixels, got {self.chunk_size}")
        if self.markers and self.antibodies:
            raise ConfigError("give the channel names once: --markers or --antibodies, not both")
        if self.n_workers is not None and int(self.n_workers) < 1:
            raise ConfigError(f"n_workers must be >= 1, got {self.n_workers!r}")
        if self.resume and self.overwrite:
            raise ConfigError("choose one of --resume and --overwrite, not both")

    def quantiles(self) -> dict[str, float]:
        """The order statistics asked for: name -> quantile in [0, 1] (``median`` is 0.5)."""
        return {s: 0.5 if s == "median" else float(s[1:]) / 100 for s in self.stats
                if s == "median" or _is_percentile(s)}

    def cluster(self) -> SegmentConfig:
        """The cluster settings, in the form the cluster helpers take."""
        return SegmentConfig(scheduler=self.scheduler, n_workers=self.n_workers,
                             memory_limit=self.memory_limit)


def _is_percentile(stat: str) -> bool:
    try:
        return stat.startswith("p") and 0.0 <= float(stat[1:]) <= 100.0
    except ValueError:
        return False


C = TypeVar("C", PatchConfig, SegmentConfig, QuantifyConfig)


def config_keys(cls: type[PatchConfig] | type[SegmentConfig] | type[QuantifyConfig]) -> list[str]:
    """Names of every key a configuration class accepts."""
    return [f.name for f in dataclasses.fields(cls)]


def make_config(cls: type[C], *sources: Mapping[str, Any] | None) -> C:
    """Build a configuration from mappings, later ones overriding earlier ones.

    ``None`` values in a later mapping do not override (an unset command-line flag).

    Raises
    ------
    ConfigError
        On an unknown key (naming the closest known one) or an invalid value.
    """
    known = config_keys(cls)
    merged: dict[str, Any] = {}
    for source in sources:
        for key, value in (source or {}).items():
            key = key.replace("-", "_")
            if key in RENAMED_KEYS:  # an unset flag of the old name is no error
                new = RENAMED_KEYS[key]
                if value is not None:
                    raise ConfigError(
                        f"{key!r} was renamed {new!r} in codexdask 0.2 (the compute block of "
                        "logical patches; 'tile' now means Mesmer's 256² network tile only): use "
                        f"{new!r}, or --{new.replace('_', '-')}")
                continue
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = (f"; did you mean {close[0]!r}?" if close
                        else f"; known keys: {', '.join(known)}")
                raise ConfigError(f"unknown configuration key {key!r}{hint}")
            if value is not None:
                merged[key] = value
    try:
        return cls(**merged)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid configuration value: {exc}") from exc


def model_path_or_environment(model_path: str | os.PathLike[str] | None) -> str | None:
    """The configured weights, else ``$CODEXDASK_MODEL_PATH``, else ``None`` (deepcell's cache).

    The one place the environment variable is read.
    """
    if model_path:
        return os.fspath(model_path)
    return os.environ.get(MODEL_PATH_ENV) or None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML configuration file into a flat mapping.

    Raises
    ------
    ConfigError
        If the file is missing, not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; check the --config path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of key: value pairs")
    return data


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}{hint}")


def check_zarr_format(value: Any) -> int:
    """``value`` as a Zarr format (2 or 3), else a :class:`ConfigError` that names both.

    >>> check_zarr_format("2")
    2
    """
    try:
        fmt = int(value)
    except (TypeError, ValueError):
        fmt = 0
    if fmt not in ZARR_FORMATS or isinstance(value, bool):
        raise ConfigError(f"zarr_format must be 2 or 3, got {value!r} (3, the default: sharded "
                          "stores and OME-Zarr 0.5 mosaics; 2 for readers of Zarr v2 only)")
    return fmt


def _check_mpp(value: float | None) -> None:
    if value is not None and not float(value) > 0:
        raise ConfigError(f"image_mpp must be > 0 microns per pixel, got {value!r}; e.g. 0.5")


def auto_or_positive_int(key: str, value: int | str) -> int | str:
    """Check a setting that is either ``"auto"`` or a positive integer.

    Parameters
    ----------
    key : str
        The setting's name, for the error message.
    value : "auto", int or str
        ``"auto"``, or anything ``int()`` turns into a number >= 1 (``"8"`` is 8).

    Returns
    -------
    "auto" or int

    Raises
    ------
    ConfigError
        For anything else.

    Examples
    --------
    >>> auto_or_positive_int("batch_size", "8"), auto_or_positive_int("batch_size", "auto")
    (8, 'auto')
    """
    if value == "auto":
        return value
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be 'auto' or a positive integer, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{key} must be 'auto' or a positive integer, got {value!r}")
    return number


def fixed_or_none(key: str, value: int | str) -> int | None:
    """A positive integer setting, or ``None`` when it is ``"auto"`` (left to the planner).

    Raises
    ------
    ConfigError
        If ``value`` is neither ``"auto"`` nor a positive integer.

    Examples
    --------
    >>> fixed_or_none("tiles_per_call", "auto") is None, fixed_or_none("tiles_per_call", 4)
    (True, 4)
    """
    checked = auto_or_positive_int(key, value)
    return None if checked == "auto" else int(checked)
