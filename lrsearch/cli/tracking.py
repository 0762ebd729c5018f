"""The commands about the MLflow record: ``sync`` (bring it level with the study) and ``ui`` (the MLflow UI on it,
with the address of each study's trials)."""

from __future__ import annotations

import click

from lrsearch.cli.options import stop_on_first_signal, storage_option, tracking_uri_option


@click.command()
@click.argument("name")
@storage_option
@tracking_uri_option
def sync(name: str, storage: str | None, tracking_uri: str | None) -> None:
    """Bring MLflow level with the study: one run per trial, statuses, final metrics, best configuration, plots.

    Exit 0 when MLflow matches the study (trials still running are left to their process), 2 for an unknown study
    or a bad storage URL, 1 when MLflow cannot be written."""
    from lrsearch.study.storage import mask_password, storage_url
    from lrsearch.tracking.mirror import sync_study
    from lrsearch.tracking.tracker import tracking_uri as resolve_uri

    uri = resolve_uri(tracking_uri)
    report = sync_study(name, storage_url(storage), uri)
    if report.changed:
        done = f"{report.created} runs created, {report.repaired} repaired, {report.removed} duplicates removed"
    else:
        done = "nothing to change"
    running = f", {report.running} still running" if report.running else ""
    click.echo(f"study {name}: MLflow at {mask_password(uri)} matches its {report.trials} finished trials{running} "
               f"({done}); parent run {report.parent}")


@click.command()
@click.argument("name", required=False)
@tracking_uri_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; others can reach it if not "
              "localhost.")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--open", "open_browser", is_flag=True, help="Open the trials' address in your browser.")
@click.option("--verbose", is_flag=True, help="Show the MLflow server's log here instead of writing it to a file.")
def ui(name: str | None, tracking_uri: str | None, host: str, port: int, open_browser: bool, verbose: bool) -> None:
    """Start the MLflow UI on the store lrsearch tracks to, and print the address of each study's trials (only
    NAME's if given): every trial a row, sorted by the objective."""
    from lrsearch.distributed.processes import stop_processes
    from lrsearch.errors import TrackingError
    from lrsearch.study.storage import mask_password
    from lrsearch.tracking.tracker import tracking_uri as resolve_uri
    from lrsearch.tracking.viewer import last_line, log_path, start_server, study_views, wait_until_serving

    uri = resolve_uri(tracking_uri)
    views = study_views(uri, name)  # a wrong NAME is one line and exit 2, before any server starts
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: binding {host}: the MLflow UI has no authentication and anyone who can reach this "
                   "address can read and change your runs", err=True)
    log = None if verbose else log_path(port)
    base = f"http://{'localhost' if host == '127.0.0.1' else host}:{port}"
    stop_on_first_signal()
    process = start_server(uri, host, port, log)
    try:
        wait_until_serving(process, port, log)
        click.echo(f"MLflow UI for {mask_password(uri)} at {base}" + (f" (server log: {log})" if log else "") +
                   "; Ctrl-C stops it")
        for view in views:
            click.echo(f"trials of {view.study}: {view.address(base)}")
        if not views:
            click.echo(f"no lrsearch study is recorded there yet: {base}")
        if open_browser:
            import webbrowser

            if not webbrowser.open(views[0].address(base) if views else base):
                click.echo("no browser to open here: open the address above", err=True)
        code = process.wait()
    except BaseException:
        stop_processes([process], grace=10.0, group=True)  # the server's own session: its worker goes with it
        raise
    raise TrackingError(f"the MLflow server exited with code {code}{last_line(log)}" +
                        (f"; its log: {log}" if log else ""))
