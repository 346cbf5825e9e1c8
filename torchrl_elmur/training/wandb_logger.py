"""wandb logging that is offline by default and never waits for a login."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

MODES = ("offline", "online", "disabled")


def start_wandb(mode: str, project: str, run_dir: str | Path, config: dict, name: str | None = None):
    """Start a wandb run.

    Args:
        mode: ``"offline"`` (default in the tutorials: written under ``run_dir/wandb``, sync later
            with ``wandb sync``), ``"online"`` (only if an API key is configured; otherwise a
            warning and offline instead, so a script never blocks on a login prompt) or
            ``"disabled"``.
        project, name: wandb project and run name.
        run_dir: where the run files go.
        config: the hyper-parameters to record.

    Returns:
        the ``wandb`` run (``run.log({...})``, ``run.finish()``).
    """
    if mode not in MODES:
        raise ValueError(f"start_wandb: mode={mode!r} is invalid: expected one of {MODES}.")
    if mode == "disabled":  # needs no wandb installed
        return _NoRun()
    import wandb

    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _has_netrc_key()):
        warnings.warn("wandb: no API key found (WANDB_API_KEY or `wandb login`); logging offline instead.", stacklevel=2)
        mode = "offline"
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project=project, name=name, dir=str(run_dir), mode=mode, config=config, reinit="create_new",
                      settings=wandb.Settings(console="off", silent=True))


class _NoRun:
    """What ``start_wandb("disabled")`` returns: ``log`` and ``finish`` do nothing."""

    def log(self, *args, **kwargs) -> None:
        pass

    def finish(self, *args, **kwargs) -> None:
        pass


def _has_netrc_key() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
