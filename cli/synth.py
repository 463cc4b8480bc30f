"""`nanoinspect synth`: a synthetic data set to try the product on or to test it with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected WIDTHxHEIGHT, e.g. 256x256, not {text!r}") from None
    return w, h


def synth(
    out: Annotated[Path | None, typer.Argument(help="folder to write")] = None,
    n_train: int = 200,
    n_test_good: int = 20,
    n_test_per_defect: int = 10,
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT")] = "256x256",
    seed: int = 0,
    banner: Annotated[bool, typer.Option(help="draw an SEM info banner at the bottom")] = False,
    sheet: Annotated[bool, typer.Option(help="also write OUT/contact_sheet.png")] = True,
    domain: Annotated[
        str | None, typer.Option(help="the look of the mats (default classic); see --list-domains")
    ] = None,
    defects: Annotated[
        str | None, typer.Option(help="comma-separated defect types (default: the domain's)")
    ] = None,
    list_domains: Annotated[
        bool, typer.Option("--list-domains", help="print the domains, one line each, and exit")
    ] = False,
) -> None:
    """Draw a synthetic SEM nanofibre data set with defects (MVTec AD layout)."""
    from models.errors import DataError
    from training.domains import DEFAULT_DOMAIN, DOMAINS, get_domain

    if list_domains:
        wide = max(map(len, DOMAINS))
        for d in DOMAINS.values():
            typer.echo(f"{d.name:<{wide}}  {d.summary}")
        return
    dom = get_domain(domain or DEFAULT_DOMAIN)  # an unknown name fails before any work
    if out is None:
        raise DataError("missing OUT, the folder to write (or use --list-domains)")
    from training.synth import contact_sheet, write_dataset

    counts = write_dataset(
        out,
        n_train=n_train,
        n_test_good=n_test_good,
        n_test_per_defect=n_test_per_defect,
        size=_size(size),
        seed=seed,
        banner=banner,
        defects=[d.strip() for d in defects.split(",")] if defects else None,
        domain=dom,
    )
    if sheet:
        contact_sheet(out, out / "contact_sheet.png")
    typer.echo(f"wrote {out}: {json.dumps(counts)}")
