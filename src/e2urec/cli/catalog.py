"""`e2urec methods`: what can be set, read from the code that checks it — each method's options with their
defaults and help, a method's profiles side by side, and a deployed run's audit settings."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from e2urec.cli.common import friendly, out_console, print_fields
from e2urec.errors import E2URecError


@friendly
def methods(
    name: Annotated[str | None, typer.Argument(help="one method: all its options, advanced ones included")] = None,
    audit: Annotated[bool, typer.Option("--audit", help="list a deployed run's audit settings instead (`init --set "
                                                        "key=value`)")] = False,
) -> None:
    """List the unlearning methods and their essential options with defaults (set them with `unlearn --set k=v`);
    `e2urec methods NAME` lists all of one method's, `e2urec methods --audit` a deployed run's audit settings."""
    import dataclasses

    if audit:  # what `init --set` takes besides E2URec's options, read from AuditConfig's fields like those
        if name is not None:
            raise E2URecError("give a method NAME or --audit, not both")
        from e2urec.ops.audit import AuditConfig

        summary = " ".join((AuditConfig.__doc__ or "").split("\n\n")[0].split())
        out_console.print(f"[bold]audit settings[/] — {escape(summary)}")
        print_fields(AuditConfig, dataclasses.fields(AuditConfig))
        return
    from e2urec.unlearning.base import REGISTRY

    if name is not None and name not in REGISTRY:
        raise E2URecError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}")
    for method, cls in REGISTRY.items():
        if name not in (None, method):
            continue
        out_console.print(f"[bold]{method}[/] ({cls.family}) — "
                          f"{escape((cls.__doc__ or method).strip().splitlines()[0])}")
        fields = dataclasses.fields(cls.Config)
        advanced = [f for f in fields if f.metadata.get("advanced")]
        for heading, group in (("", [f for f in fields if not f.metadata.get("advanced")]),
                               ("  advanced:", advanced if name else [])):
            if heading and group:
                out_console.print(heading, highlight=False, markup=False)
            print_fields(cls.Config, group)
        if advanced and not name:
            out_console.print(f"  … and {len(advanced)} advanced options: e2urec methods {method}", highlight=False,
                              markup=False)
        print_profiles(getattr(cls.Config, "PROFILES", {}))


def print_profiles(profiles: dict[str, dict]) -> None:
    """The values each profile sets where they differ (`--set profile=NAME`), one option per line."""
    names = list(profiles)
    keys = [k for k in profiles[names[0]] if len({repr(p.get(k)) for p in profiles.values()}) > 1] if names else []
    if keys:
        out_console.print(f"  profiles ({' | '.join(names)}), where they differ:", highlight=False, markup=False)
    for key in keys:
        values = "  ".join(f"{n}={profiles[n].get(key)}" for n in names)
        out_console.print(f"    {key}: {values}", highlight=False, markup=False)
