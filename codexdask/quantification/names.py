"""Marker names of the quantified channels: from a markers CSV, an antibodies TSV or the slide.

Names come from mcquant's ``markers.csv`` (``--markers``, column ``marker_name``) or an antibodies
TSV (``--antibodies``), else from the slide's own metadata (OME ``Channel@Name``, QPTIFF), else
``Channel_i``. The count is checked against the slide's channels. A repeated name is numbered
(every occurrence gets ``_1``, ``_2``, ... in channel order) and logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd

from codexdask.errors import SlideError
from codexdask.store.slide import Slide, read_antibodies

__all__ = ["marker_names", "read_markers", "unique_names"]

logger = logging.getLogger(__name__)


def read_markers(path: str | Path) -> list[str]:
    """Marker names from mcquant's ``markers.csv`` (column ``marker_name``, channel order).

    Raises
    ------
    SlideError
        Missing or unreadable file, no ``marker_name`` column, no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"markers file {str(path)!r} does not exist; check the --markers path")
    try:
        header = path.read_text(encoding="utf-8-sig").split("\n", 1)[0]
        # Semicolon- and tab-separated files are read too (the header says which).
        sep = next((s for s in (",", ";", "\t") if s in header), ",")
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                            encoding="utf-8-sig")
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise SlideError(f"markers file {str(path)!r} cannot be read as CSV: {exc}") from exc
    table.columns = [str(c).strip() for c in table.columns]
    if "marker_name" not in table.columns:
        raise SlideError(
            f"markers file {str(path)!r} has no 'marker_name' column (columns: "
            f"{', '.join(map(str, table.columns))}); give one row per channel under a "
            "marker_name header, as mcquant's markers.csv")
    names = [str(n).strip() for n in table["marker_name"]]
    if not names:
        raise SlideError(f"markers file {str(path)!r} has no rows; add one row per channel")
    return names


def unique_names(names: list[str]) -> list[str]:
    """Names made unique: each occurrence of a repeated name gets ``_1``, ``_2``, ...

    Examples
    --------
    >>> unique_names(["DNA", "CD3", "DNA"])
    ['DNA_1', 'CD3', 'DNA_2']
    """
    counts = Counter(names)
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        if counts[name] > 1:
            seen[name] += 1
            out.append(f"{name}_{seen[name]}")
        else:
            out.append(name)
    if out != names:
        logger.warning("repeated marker names numbered: %s",
                       ", ".join(f"{a} -> {b}" for a, b in zip(names, out, strict=True) if a != b))
    return out


def marker_names(
    slide: Slide, markers: str | Path | None = None, antibodies: str | Path | None = None
) -> tuple[list[str], list[str], str]:
    """The channel names of the quantification.

    Parameters
    ----------
    slide : Slide
        The opened slide (its own names, ``channel_i`` when the file has none).
    markers, antibodies : path, optional
        A markers CSV or an antibodies TSV overriding the slide's names.

    Returns
    -------
    unique : list of str
        ``C`` unique names (table columns).
    original : list of str
        ``C`` names as given.
    source : str
        ``"markers"``, ``"antibodies"``, ``"slide"`` or ``"default"``.

    Raises
    ------
    SlideError
        A names file, or the slide's own metadata, naming another number of channels than the
        slide's pixels hold.
    """
    if markers is not None or antibodies is not None:
        given = read_markers(markers) if markers is not None else read_antibodies(antibodies)  # type: ignore[arg-type]
        source = "markers" if markers is not None else "antibodies"
        if len(given) != slide.n_channels:
            raise SlideError(
                f"{source} file {str(markers or antibodies)!r} names {len(given)} channels but "
                f"{slide.source} has {slide.n_channels}; give exactly one row per channel, in "
                "channel order")
        names = given
    elif slide.named_channels not in (None, slide.n_channels):
        raise SlideError(
            f"the metadata of {slide.source} names {slide.named_channels} channels but its "
            f"pixels hold {slide.n_channels}; name them with --markers or --antibodies (one row "
            "per channel, in channel order)")
    elif all(n == f"channel_{i}" for i, n in enumerate(slide.channel_names)):
        names, source = [f"Channel_{i}" for i in range(slide.n_channels)], "default"
    else:
        names, source = list(slide.channel_names), "slide"
    return unique_names(names), names, source
