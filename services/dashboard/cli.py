"""`lfi dashboard`."""

from __future__ import annotations

import typer
from rich.console import Console


def dashboard(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8300)) -> None:
    """Serve the dashboard: queue jobs, follow them, see the teacher's load."""
    import uvicorn
    from pydantic import ValidationError

    from services.dashboard.app import create_app
    from shared.settings import get_settings
    from shared.teams import TeamDirectory

    console = Console(stderr=True)
    settings = get_settings()
    if settings.teams_file is None:
        console.print("[red]error:[/red] set LFI_TEAMS_FILE to the teams YAML file the teacher uses")
        raise typer.Exit(2)
    try:
        teams = TeamDirectory.load(settings.teams_file)
    except (ValueError, ValidationError) as exc:
        console.print(f"[red]error:[/red] teams file {settings.teams_file}: {exc}")
        raise typer.Exit(2) from None
    uvicorn.run(create_app(settings, teams), host=host, port=port, log_level="info")
