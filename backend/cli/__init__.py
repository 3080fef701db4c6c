"""The ``fedmomentum`` command line. Commands that need torch import the workers lazily; the
commands of a running service (submit, list, status, follow, download, cancel) are in
backend.cli.remote."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from backend.cli import remote, silo
from backend.core.config import ConfigError, load_config
from backend.core.sweeps import SweepError


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)  # every config error before any work starts
    out = args.out or Path("runs") / cfg.name
    from workers.runner import run  # torch only from here on

    summaries = run(cfg, out, progress=not args.quiet, export_rank=args.export_rank)
    print(_table(summaries))
    print(f"\nrun directory: {out}\nexport: {out / 'export'}  metrics: {out / 'metrics.jsonl'}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from backend.cli.sweep import build_spec, run_sweep
    from backend.core.leaderboard import Row, to_markdown

    spec = build_spec(args.config, strategies=args.strategies, seeds=args.seeds, sets=args.set)
    out = args.out or Path("runs") / "sweeps" / spec.name
    doc = run_sweep(spec, out, progress=not args.quiet, exports=args.export)
    print(to_markdown([Row.from_dict(r) for r in doc["leaderboard"]]))
    failed = [r for r in doc["runs"] if r["status"] == "failed"]
    for r in failed:
        print(f"failed: {r['dir']}: {r['error']}", file=sys.stderr)
    print(
        f"sweep: {out / 'sweep.json'}  leaderboard: {out / 'leaderboard.md'}  "
        f"report: {out / 'report.html'}"
    )
    return 1 if failed else 0


def _export(args: argparse.Namespace) -> int:
    from backend.core.runs import RunPaths
    from workers.runner import export

    info = export(RunPaths.at(args.run), args.rank)
    print(f"exported {args.run / 'export'}: {info}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    import logging

    from sqlalchemy.engine import make_url

    from backend.core.settings import get_settings
    from backend.db.engine import migrate

    logging.basicConfig(format="%(message)s")  # alembic reports each step it runs
    url = args.database_url or get_settings().database_url
    migrate(url, args.revision)
    shown = make_url(url).render_as_string(hide_password=True)
    print(f"database {shown} is at revision {args.revision}")
    return 0


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def _up(args: argparse.Namespace) -> int:
    from backend.cli.serve import up
    from backend.core.settings import get_settings

    settings = get_settings()
    return up(
        settings,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        worker=not args.no_worker,
        api_workers=args.api_workers,
    )


def _worker(args: argparse.Namespace) -> int:
    from backend.cli.serve import worker
    from backend.core.settings import get_settings

    return worker(
        get_settings(),
        queues=args.queues,
        name=args.name,
        ready_file=args.ready_file,
        parent_pid=args.parent_pid,
    )


def _report(args: argparse.Namespace) -> int:
    from backend.api import report

    if args.run.is_dir():  # a run directory of `fedmomentum run`
        data = report.data_from_run_dir(args.run)
    else:  # an experiment of the service, by id
        from sqlalchemy.orm import Session

        from backend.core.settings import get_settings
        from backend.db.engine import get_engine
        from backend.db.experiments import get_experiment

        settings = get_settings()
        with Session(get_engine(settings.database_url)) as session:
            experiment = get_experiment(session, experiment_id=str(args.run))
            if experiment is None:
                raise FileNotFoundError(
                    f"{args.run} is neither a run directory nor an experiment id in "
                    f"{settings.database_url}"
                )
            data = report.data_from_db(session, settings.runs_store(), experiment)
    out = args.out or Path(f"{data['experiment']['id']}-report.html")
    out.write_text(report.render(data))
    print(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB, opens offline in a browser)")
    return 0


def _table(summaries: list[dict[str, object]]) -> str:
    """The final per-round table."""
    head = (
        f"{'round':>5} {'clients':>7} {'failed':>6} {'excluded':>8} {'eval_loss':>9} "
        f"{'accuracy':>8} {'resid_E':>8} {'seconds':>8}"
    )
    rows = [head, "-" * len(head)]
    for s in summaries:
        energy = s.get("mean_residual_energy")
        rows.append(
            f"{s['round']:>5} {len(s['clients']):>7} {len(s['failed']):>6} "  # type: ignore[arg-type]
            f"{len(s['excluded']):>8} {s['eval_loss']:>9.4f} {s['accuracy']:>8.3f} "  # type: ignore[arg-type]
            f"{'-' if energy is None else f'{energy:.4f}':>8} {s['round_seconds']:>8.1f}"
        )
    return "\n".join(rows)


def _version() -> str:
    try:
        return version("fedmomentum")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmomentum", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a federated experiment in this process")
    run.add_argument("config", type=Path, help="YAML experiment config (see examples/)")
    run.add_argument(
        "--out", type=Path, help="run directory (default runs/<name>; resumes if present)"
    )
    run.add_argument(
        "--export-rank",
        type=int,
        help="rank of the plain PEFT adapter exported (default: the run's rank for strategies "
        "that change the backbone, none for the others)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)
    sweep = sub.add_parser(
        "sweep", help="run a sweep (strategies x seeds x grid) in this process and rank it"
    )
    sweep.add_argument("config", type=Path, help="YAML experiment config: the sweep's base")
    sweep.add_argument(
        "--strategies", default="all", help="all (default) or a comma-separated list"
    )
    sweep.add_argument(
        "--seeds", default="3", help="a count (3: seeds 0, 1, 2; the default) or a list 0,1,2"
    )
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=V1,V2",
        help="also vary a config field by dotted path, e.g. aggregation.factor_split=sqrt,b "
        "(repeatable; values read as YAML)",
    )
    sweep.add_argument(
        "--out", type=Path, help="sweep folder (default runs/sweeps/<name>; resumes if present)"
    )
    sweep.add_argument(
        "--export",
        action="store_true",
        help="also write every run's export/ (default: none; `fedmomentum export RUN_DIR` "
        "writes one later)",
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.set_defaults(func=_sweep)
    exp = sub.add_parser("export", help="(re)write the export of a run directory")
    exp.add_argument("run", type=Path)
    exp.add_argument("--rank", type=int, help="rank of the plain PEFT adapter (default as for run)")
    exp.set_defaults(func=_export)
    rep = sub.add_parser("report", help="write a run's charts as one offline HTML file")
    rep.add_argument("run", type=Path, help="a run directory, or an experiment id of the service")
    rep.add_argument("-o", "--out", type=Path, help="output file (default <run>-report.html)")
    rep.set_defaults(func=_report)
    mig = sub.add_parser("migrate", help="create or upgrade the database schema (alembic upgrade)")
    mig.add_argument("--revision", default="head", help="target revision (default: head)")
    mig.add_argument(
        "--database-url", help="SQLAlchemy URL (default: FEDMOMENTUM_DATABASE_URL or SQLite)"
    )
    mig.set_defaults(func=_migrate)
    up = sub.add_parser("up", help="migrate, start a worker and serve the API and dashboard")
    up.add_argument("--host", help="default: FEDMOMENTUM_API_HOST or 127.0.0.1")
    up.add_argument("--port", type=int, help="default: FEDMOMENTUM_API_PORT or 8000")
    up.add_argument("--no-worker", action="store_true", help="serve only (workers run elsewhere)")
    up.add_argument(
        "--api-workers",
        type=_at_least_one,
        metavar="N",
        help="API processes on the port (default: FEDMOMENTUM_API_WORKERS or 1)",
    )
    up.set_defaults(func=_up)
    work = sub.add_parser("worker", help="run one Celery worker process (one task at a time)")
    work.add_argument("--queues", default="train,aggregate", help="default: train,aggregate")
    work.add_argument("--name", help="worker name (default: worker-<pid>@<host>)")
    work.add_argument("--ready-file", type=Path, help="written once the worker consumes tasks")
    work.add_argument("--parent-pid", type=int, help="exit when this process dies (fedmomentum up)")
    work.set_defaults(func=_worker)
    remote.add_commands(sub)
    silo.add_commands(sub, remote.server_options())
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SweepError as e:
        print(f"invalid sweep:\n{e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"invalid config:\n{e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
