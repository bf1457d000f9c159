"""The `dsm` command line. Only the dashboard path imports Textual, and only when it starts."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsm import completion, crashlog, humanize
from dsm.catalog import sync
from dsm.catalog.parse import read_json
from dsm.catalog.paths import Resolver
from dsm.completion import SHELLS
from dsm.config import Settings, load_settings, network_filesystem
from dsm.domain.display import is_paused
from dsm.domain.jobs import PARAMS_SCHEMA, JobType, parse_params
from dsm.domain.model import ACTIVE, Dataset, hub_followed
from dsm.domain.paging import MAX_PAGE_SIZE, page_of
from dsm.domain.redact import redact_doc, redact_text
from dsm.domain.terminal import json_text, one_line, printable, writes_unicode
from dsm.engine.liveness import CHANGED, MISSING, copy_seen, owner_running
from dsm.errors import EXIT_BAD_INPUT, EXIT_FAILED, BadInput, DsmError
from dsm.repository import Repository, StoreCorrupt, StoreError, UnknownDataset
from dsm.version import __version__

# Collect young objects every GC_YOUNG allocations, not Python's 700: the store keeps ~60
# objects per dataset alive, and at 10,000 datasets the collections that followed from the
# default took ~0.35 s of a second `--all` with nothing to do (~0.12 s with this).
GC_YOUNG = 10_000


# The job options: accepted after a command only to say they go with --run-job there, so a
# command's help does not list them (`dsm list -h` offered --run-job, --dataset, ...).
JOB_FLAGS = frozenset({"--run-job", "--dataset", "--all", "--force-download", "--params"})


def _global_options(
    parser: argparse.ArgumentParser, *, defaults: bool, hide: frozenset[str] = frozenset()
) -> None:
    """Options accepted before or after a subcommand (sub-parsers get SUPPRESS defaults);
    `hide`: accepted, not in the parser's help."""

    def add(*flags: str, **kw: Any) -> None:
        if not defaults:
            kw["default"] = argparse.SUPPRESS
        if hide & set(flags):
            kw["help"] = argparse.SUPPRESS
        parser.add_argument(*flags, **kw)

    add("--home", metavar="DIR", help="data home (env DSM_HOME)")
    add("--catalog", metavar="FILE", help="catalogue replacing the bundled one (env DSM_CATALOG)")
    add("--json", action="store_true", default=False, help="machine-readable output")
    add("--max-retries", metavar="N", help="retries per job (env DSM_MAX_RETRIES, default 5)")
    add("--retry-delay", metavar="S", help="seconds between retries (env DSM_RETRY_DELAY, 30)")
    add("--job-timeout", metavar="S", help="seconds a job may take (env DSM_JOB_TIMEOUT, 36000)")
    add("--stall-timeout", metavar="S", help="seconds without data (env DSM_STALL_TIMEOUT, 60)")
    add("--workers", metavar="N", help="parallel downloads (env DSM_WORKERS, default 4)")
    types = [t.value for t in JobType]
    add("--run-job", metavar="TYPE", choices=types, help=f"run jobs headless: {', '.join(types)}")
    add("--dataset", metavar="NAME", action="append", help="dataset for --run-job (repeatable)")
    add("--all", action="store_true", default=False, help="every dataset (jobs, cache push)")
    add("--force-download", action="store_true", default=False, help="fetch even if verified")
    add("--params", metavar="JSON", help='job params, e.g. \'{"dataset": "gsm8k"}\'')
    add("--cache-url", metavar="S3URL", help="team cache s3://BUCKET/PREFIX (env DSM_CACHE_URL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsm",
        description="Fetch, verify and keep LLM benchmark datasets. "
        "Without a command: the dashboard.",
    )
    parser.add_argument("--version", action="version", version=f"dsm {__version__}")
    _global_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    lst = sub.add_parser("list", help="list datasets")
    lst.add_argument("--page-size", type=int, default=50, help="rows per page (1-1000)")
    lst.add_argument("--page", type=int, default=1, help="page number, from 1")
    # Hidden: every dataset name, one a line, for the shell completion scripts.
    lst.add_argument("--names", action="store_true", help=argparse.SUPPRESS)
    show = sub.add_parser("show", help="show one dataset")
    show.add_argument("name")
    sub.add_parser("job-params", help="print the JSON Schema of job parameters")
    srv = sub.add_parser("serve", help="run the engine behind the HTTP API")
    srv.add_argument("--host", default="127.0.0.1", help="beyond loopback needs DSM_API_TOKEN")
    srv.add_argument("--port", type=int, default=8080, help="TCP port (0: any free port)")
    srv.add_argument(
        "--allowed-host",
        metavar="NAME",
        action="append",
        default=[],
        help="a name clients use for this server (Host header; repeatable); loopback names "
        "are allowed when bound to loopback",
    )
    srv.add_argument(
        "--print-token",
        action="store_true",
        help="print the API token, creating it (mode 0600, in the data home) if needed; "
        "the server then requires it",
    )
    cache = sub.add_parser("cache", help="the team cache on S3-compatible storage")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    status = cache_sub.add_parser("status", help="bucket, reachability, datasets it holds")
    push = cache_sub.add_parser("push", help="publish verified local copies")
    push.add_argument("names", nargs="*", metavar="NAME", help="datasets to publish, or --all")
    for p in (lst, show, sub.choices["job-params"], srv, cache, status):
        _global_options(p, defaults=False, hide=JOB_FLAGS)
    _global_options(push, defaults=False, hide=JOB_FLAGS - {"--all"})  # push's own --all
    comp = sub.add_parser("completion", help="print the shell completion script")
    comp.add_argument("shell", choices=SHELLS, help="bash, zsh or fish")
    return parser


def open_home(args: argparse.Namespace) -> tuple[Settings, Repository]:
    """Resolve settings from the flags and the environment, then open the home."""
    settings = load_settings(
        home=args.home,
        catalog=args.catalog,
        max_retries=args.max_retries,
        retry_delay=args.retry_delay,
        job_timeout=args.job_timeout,
        stall_timeout=args.stall_timeout,
        workers=args.workers,
        cache_url=args.cache_url,
    )
    fs = network_filesystem(settings.home)
    if fs is not None:
        print(
            f"dsm: warning: the data home {settings.home} is on {fs}: file locks are unreliable "
            "there; keep the home on a local disk and share datasets with a team cache "
            "(DSM_CACHE_URL)",
            file=sys.stderr,
        )
    return settings, sync.open_home(settings)


def _print_json(value: Any) -> None:
    # Catalogue text: no raw escapes; all escaped for a stream that cannot take them.
    print(json_text(value, ascii=not writes_unicode(sys.stdout), indent=2))


def cmd_list(args: argparse.Namespace, settings: Settings, repo: Repository) -> int:
    if not 1 <= args.page_size <= MAX_PAGE_SIZE:
        raise BadInput(f"--page-size must be between 1 and {MAX_PAGE_SIZE}, got {args.page_size}")
    if args.page < 1:
        raise BadInput(f"--page must be at least 1, got {args.page}")
    if args.names:
        if args.json:
            raise BadInput("list: --names prints plain names; it does not take --json")
        print("\n".join(sorted(repo.dataset_names())))
        return 0
    rows = repo.datasets()
    page = page_of(rows, args.page, args.page_size)
    if args.json:
        _print_json(
            {
                "page_size": args.page_size,
                "page_number": args.page,
                "total": len(rows),
                "datasets": [redact_doc(d.to_dict()) for d in page],
            }
        )
        return 0
    print(f"{'NAME':<22} {'STATUS':<12} {'SIZE':>10} {'PROGRESS':>8}  DOWNLOADED")
    now = SeenNow(settings, repo)
    for ds in page:
        flag = "" if ds.in_catalog else "  (not in catalogue)"
        flag += f"  ({seen})" if (seen := now.of(ds)) else ""
        flag += "  (outdated)" if ds.outdated else ""
        flag += "  (unconfirmed)" if ds.downloaded and not ds.confirmed else ""
        if ds.moved_upstream:
            old, new = str(ds.source_commit)[:8], str(ds.upstream_commit)[:8]
            flag += f"  (upstream moved: {old} -> {new})"
        print(
            f"{ds.name:<22} {ds.status.label:<12} {humanize.size(ds.size):>10} "
            f"{ds.download_progress:>7.1f}%  {humanize.when(ds.downloaded_at_ms)}{flag}"
        )
    print(f"page {args.page}, {len(page)} of {len(rows)} datasets")
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings, repo: Repository) -> int:
    try:
        ds: Dataset = repo.dataset(args.name)
    except UnknownDataset:
        raise BadInput(f"dataset not found: {args.name}") from None
    shown = redact_doc(ds.to_dict())  # a catalogue URL may carry credentials
    if args.json:
        _print_json(shown)
        return 0
    for key, value in shown.items():
        if isinstance(value, list):  # mirrors, files, a manifest: one item a line, below
            print(f"{key:<18} {len(value) if value else '-'}")
            for item in value:
                line = json_text(item) if isinstance(item, dict) else printable(str(item))
                print(" " * 19 + line)
        else:
            shown = one_line if key == "error" else printable  # an older store's, many lines
            print(f"{key:<18} {'-' if value is None else shown(str(value))}")
    if seen := SeenNow(settings, repo).of(ds, NOW_SAID):
        print(f"{'seen now':<18} {seen}")
    return 0


NOW_SAID = {
    "interrupted": "interrupted: no dsm process runs its job (the next start resumes it)",
    MISSING: f"{MISSING}: the copy was removed (a download fetches it again)",
    CHANGED: f"{CHANGED}: another size or time than when verified (a verify checks it)",
    "paused": "paused: its dashboard keeps the partial file (p there resumes it)",
}


class SeenNow:
    """What a stored row cannot say by itself, looked at now for the rows shown (a few
    system calls a row): an active row whose job no running dsm process works on (killed:
    the row said `downloading 36.9%` until an engine started) or a live one paused, a
    recorded copy removed or changed by hand (liveness.copy_seen). The JSON output stays the
    stored row."""

    def __init__(self, settings: Settings, repo: Repository) -> None:
        self.settings, self.repo = settings, repo
        self._running: dict[str, bool] = {}
        self._paths: Resolver | None = None

    def of(self, ds: Dataset, said: dict[str, str] | None = None) -> str:
        seen = self._interrupted(ds) if ds.status in ACTIVE else self._on_disk(ds)
        return (said or {}).get(seen, seen)

    def _interrupted(self, ds: Dataset) -> str:
        job = self.repo.job(ds.download_job_id) if ds.download_job_id else None
        owner = job.owner if job is not None and not job.status.finished else None
        if owner is not None and owner not in self._running:
            self._running[owner] = owner_running(self.settings.lock_dir, owner)
        if owner is None or not self._running[owner]:
            return "interrupted"
        return "paused" if is_paused(job) else ""  # else it read `queued 48.9%`, and waits

    def _on_disk(self, ds: Dataset) -> str:
        self._paths = self._paths or Resolver(self.settings.home)
        return copy_seen(self._paths, ds)


def cmd_cache(args: argparse.Namespace, settings: Settings, repo: Repository) -> int:
    """`dsm cache status` and `dsm cache push`."""
    from dsm.engine.cache import CacheSide  # obstore loads for this command only
    from dsm.transfer.s3cache import CacheError

    side = CacheSide(settings)
    datasets = repo.datasets()
    try:
        if args.cache_command == "status":
            report = side.report(datasets)
            if args.json:
                _print_json(dataclasses.asdict(report))
            else:
                state = "reachable" if report.reachable else f"NOT reachable: {report.error}"
                print(f"team cache   {report.url} ({state})")
                print(f"holds        {report.held} of {report.total} datasets")
                print(f"checksum     known for {report.known} (the rest are found by source)")
            return 0 if report.reachable else EXIT_FAILED
        chosen = datasets if args.all else [repo.dataset(n) for n in args.names]
        pushed, skipped, refused = side.push(settings.home, chosen)
    except UnknownDataset as exc:
        raise BadInput(f"dataset not found: {exc}") from None
    except CacheError as exc:
        raise DsmError(str(exc)) from None
    for name in pushed:
        print(f"pushed       {name}")
    for line in skipped + refused:
        print(printable(line))
    return EXIT_FAILED if refused else 0


def job_params(args: argparse.Namespace, repo: Repository) -> list[dict[str, Any]]:
    """The params of each job --run-job asked for, validated before anything starts."""
    names = repo.dataset_names()
    given: list[dict[str, Any]] = []
    if args.params:
        try:
            raw = read_json(args.params)
        except json.JSONDecodeError as exc:
            raise BadInput(f"--params: invalid JSON at column {exc.colno}: {exc.msg}") from None
        except ValueError as exc:
            raise BadInput(f"--params: invalid JSON: {exc}") from None
        given.append(raw)
    chosen = sorted(names) if args.all else (args.dataset or [])
    given += [{"dataset": n, "force_download": args.force_download} for n in chosen]
    if args.all and not names:  # it said `--run-job needs ... --all ...` of the --all given
        raise BadInput(
            "--all: there is no dataset (the catalogue lists none, the store keeps none)"
        )
    if not given:
        raise BadInput("--run-job needs --dataset NAME, --all or --params JSON")
    for p in given:
        parse_params(p, names)
    return given


def check_combination(args: argparse.Namespace) -> None:
    """Options that do nothing where they are given are an error, not silently ignored."""
    job_flags = [
        flag
        for flag, given in (
            ("--dataset", args.dataset),
            ("--all", args.all),
            ("--params", args.params),
            ("--force-download", args.force_download),
        )
        if given
    ]
    if args.run_job and args.command:
        raise BadInput(f"--run-job cannot be combined with the '{args.command}' command")
    if args.command == "cache" and args.cache_command == "push":
        if bool(args.names) == bool(args.all):
            raise BadInput("dsm cache push takes dataset names or --all")
        job_flags = [f for f in job_flags if f != "--all"]  # push's own --all
    if job_flags and not args.run_job:
        raise BadInput(f"{', '.join(job_flags)}: only with --run-job")
    if sum(bool(x) for x in (args.dataset, args.all, args.params)) > 1:
        raise BadInput("--run-job takes one of --dataset NAME..., --all or --params JSON")
    if not args.command and not args.run_job and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise BadInput(
            "the dashboard needs a terminal; in scripts use dsm list, dsm show or dsm --run-job"
        )


def run(argv: Sequence[str] | None) -> int:
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    args = build_parser().parse_args(argv)
    check_combination(args)
    if args.command == "job-params":
        _print_json(PARAMS_SCHEMA)
        return 0
    if args.command == "completion":
        print(completion.script(args.shell, build_parser()), end="")
        return 0
    settings, repo = open_home(args)
    if args.command == "list":
        # One revision call per followed branch; none offline. The engine (and httpx) load
        # only then: most catalogues follow none, and `dsm list` starts ~0.15 s sooner.
        if not (args.names or settings.offline) and hub_followed(repo.datasets()):
            from dsm.engine.hubjob import refresh_upstream

            refresh_upstream(settings, repo)
        return cmd_list(args, settings, repo)
    if args.command == "show":
        return cmd_show(args, settings, repo)
    if args.command == "cache":
        return cmd_cache(args, settings, repo)
    if args.command == "serve":
        from dsm.api.serve import serve  # Starlette and uvicorn load for this command only

        return serve(settings, repo, args.host, args.port, args.allowed_host, args.print_token)
    crashlog.route_logs(settings.home)  # the engine's warnings: never on the user's screen
    if args.run_job:
        import anyio

        from dsm.headless import run_jobs

        params = job_params(args, repo)
        return anyio.run(run_jobs, settings, repo, JobType(args.run_job), params, args.json)
    from dsm.tui.app import run_dashboard  # the only place Textual is imported

    return run_dashboard(settings, repo)


def main(argv: Sequence[str] | None = None) -> int:
    """Every way the program ends, as one or two lines and an exit code: no traceback reaches
    the user (an unexpected one goes to a log file, named in the message)."""
    if isinstance(sys.stdout, io.TextIOWrapper):  # a character the stream cannot take: its
        sys.stdout.reconfigure(errors="backslashreplace")  # escape, not a crash (stderr's way)
    try:
        return run(argv)
    except BrokenPipeError:
        return quiet_stdout()
    except (StoreError, DsmError) as exc:
        if isinstance(exc, DsmError):
            code = exc.exit_code
        else:  # a corrupt store is bad input; a store that cannot be written is a failure
            code = EXIT_BAD_INPUT if isinstance(exc, StoreCorrupt) else EXIT_FAILED
        _error(str(exc))
        return code
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # the environment: a home we may not write, a path that is a folder
        where = f" {exc.filename}" if exc.filename else ""
        _error(f"cannot use{where}: {exc.strerror or exc}; check the data home and its permissions")
        return EXIT_FAILED
    except Exception as exc:
        log = crashlog.write(_home_of(argv), argv)
        where = f"the traceback is in {log}" if log else "no log file could be written"
        what = f"{type(exc).__name__}: {one_line(str(exc))}"
        _error(f"internal error: {what}\ndsm: {where}; please report it")
        return EXIT_FAILED


def _home_of(argv: Sequence[str] | None) -> Path | None:
    """The data home the command line names, for the crash log; None if it cannot say."""
    try:
        args, _ = build_parser().parse_known_args(argv)
        return load_settings(home=args.home).home
    except (Exception, SystemExit):
        return None


def _error(message: str) -> None:
    with contextlib.suppress(OSError):  # stderr itself gone: nothing left to tell
        print(f"dsm: error: {printable(redact_text(message))}", file=sys.stderr)


def quiet_stdout() -> int:
    """stdout's reader went away (`dsm list | head`): end quietly, as `ls | head` does.
    As the Python docs advise, stdout is pointed at devnull so the flush at exit is quiet."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
