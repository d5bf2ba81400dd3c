"""The bundled demo: a fictional company's AD export, its CAL inventory and a configuration."""

from __future__ import annotations

from pathlib import Path

import yaml

from agent.config import Config, parse_config

DATA = Path(__file__).parent / "data"


def demo_config(output: Path) -> Config:
    """The demo configuration, with its database and reports placed under ``output``."""
    data = yaml.safe_load((DATA / "config.yaml").read_text(encoding="utf-8"))
    output = output.resolve()
    data["database"] = {"url": f"sqlite:///{output / 'state.db'}"}
    data["reports"] = {"directory": str(output / "reports")}
    return parse_config(data, base_dir=DATA, source=f"{DATA / 'config.yaml'} (demo)")
