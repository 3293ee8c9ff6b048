"""The analyst's path through the Dagster UI, end to end, in a real (headless) browser.

`dagster dev` serves the project's code location on a free loopback port, against a temporary
landing folder holding the hand-written partner delivery, a temporary warehouse, reports folder and
DAGSTER_HOME. Debian's Chromium, driven by Playwright, then does what an analyst does:

1. opens the asset graph (the five stage groups are there);
2. opens the `ingest_new_deliveries` job, clicks "Materialize all…", picks the delivery partition and
   launches the run;
3. once it has succeeded, opens the `quarterly_cohort_report` job, clicks "Materialize all…", types the
   quarter (2025-04-01) and launches the run;
4. once that has succeeded, opens the `quarterly_report` asset and finds its metadata (report path,
   cohort size, …) on the page.

On the way it reads what an analyst judges assets by: before any run, `staging/labs`' description
(naming its SQL file) and declared columns; after each run, a plot in the metadata of
`meta/dq_results` and `cohort/attrition` (opened with "[Show Markdown]", as an analyst does).

Runs are launched by clicking; the GraphQL API is used only to wait (server ready, run status) and to
explain a failure. The delivery partition is registered in the temporary instance before the server
starts (what the delivery sensor would do). Screenshots and the server log go to tests/artifacts/ui/.

Every process the test starts is recorded by PID and start time while it runs (found by walking
/proc: this process's new descendants, i.e. `dagster dev` with its webserver, daemon, code servers and
run workers, and Playwright's driver and Chromium; plus every member of `dagster dev`'s own session, in
case one was re-parented). At the end the browser must be gone on its own; `dagster dev` gets SIGTERM
(it shuts its services down), then any survivor SIGTERM, then SIGKILL, each by PID; the test asserts
that none survives. Timings per step go to tests/artifacts/ui/timings.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import PARTNER_DELIVERY

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).parent / "artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
LOCATION = "ai_bone_cohort"
DELIVERY = PARTNER_DELIVERY.name  # northside_2025q2, data cutoff 2025-06-30
QUARTER = "2025-04-01"
QUARTER_LABEL = "2025-Q2"
STAGES = ("ingest", "validation", "cohort", "models", "reports")

# Upper bounds only: every wait polls for its condition and returns as soon as it holds. The machine
# may be heavily loaded, so the bounds are generous.
SERVER_START_TIMEOUT = 300
RUN_TIMEOUT = 1200
UI_TIMEOUT_MS = 120_000
POLL_SECONDS = 2.0

# ---------------------------------------------------------------------------------------------
# Processes: found through /proc (psutil is not a dependency), killed by PID
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    state: str
    start: int  # start time in clock ticks since boot: (pid, start) names a process even if the pid is reused
    cmd: str


def _read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) is in parentheses and may itself contain spaces or parentheses
    fields = stat[stat.rindex(")") + 2:].split()
    return Proc(pid=pid, ppid=int(fields[1]), sid=int(fields[3]), state=fields[0], start=int(fields[19]), cmd=cmdline[:160])


def _all_procs() -> list[Proc]:
    procs = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := _read_proc(int(entry))) is not None:
            procs.append(proc)
    return procs


def _alive(proc: Proc) -> bool:
    now = _read_proc(proc.pid)
    return now is not None and now.start == proc.start and now.state not in ("Z", "X")


class ProcessTree:
    """Every process started for the test, recorded each time `record()` runs (often: while waiting):
    the descendants of this (pytest) process that were not there before (`dagster dev` and its tree,
    Playwright's driver and Chromium), and every member of `dagster dev`'s session (it leads its own),
    so that a process re-parented to init when its parent died is still known, by PID and start time."""

    def __init__(self):
        self.root: subprocess.Popen | None = None
        self.sid: int | None = None
        self.before = {(p.pid, p.start) for p in self._descendants(_all_procs(), os.getpid())}
        self.known: dict[int, Proc] = {}

    def start(self, *args, **kwargs) -> subprocess.Popen:
        """Popen the root in a session of its own and record it."""
        self.root = subprocess.Popen(*args, start_new_session=True, **kwargs)
        self.sid = self.root.pid
        self.record()
        return self.root

    @staticmethod
    def _descendants(procs: list[Proc], pid: int) -> list[Proc]:
        children: dict[int, list[Proc]] = {}
        for proc in procs:
            children.setdefault(proc.ppid, []).append(proc)
        found, queue = [], [pid]
        while queue:
            for child in children.get(queue.pop(), []):
                found.append(child)
                queue.append(child.pid)
        return found

    def record(self) -> list[Proc]:
        procs = _all_procs()
        found = {p.pid: p for p in self._descendants(procs, os.getpid()) if (p.pid, p.start) not in self.before}
        if self.sid is not None:
            found.update({p.pid: p for p in procs if p.sid == self.sid})
            for member in list(found.values()):
                found.update({p.pid: p for p in self._descendants(procs, member.pid)})
        for proc in found.values():
            if proc.state not in ("Z", "X") and (proc.pid not in self.known or self.known[proc.pid].start != proc.start):
                self.known[proc.pid] = proc  # a reused pid replaces the dead process it named
        return list(found.values())

    def outside_dagster(self) -> list[Proc]:
        """Live recorded processes that are neither in `dagster dev`'s session nor below it (the browser)."""
        below = {p.pid for p in self._descendants(_all_procs(), self.root.pid)} | {self.root.pid} if self.root else set()
        return [p for p in self.survivors() if p.sid != self.sid and p.pid not in below]

    def survivors(self) -> list[Proc]:
        return [proc for proc in self.known.values() if _alive(proc)]

    def kill_all(self) -> list[Proc]:
        """Stop every recorded process by PID; returns the survivors (should be none).

        SIGTERM to the root alone first (`dagster dev` then shuts its webserver and daemon down), up to
        45 s for it to exit; then SIGTERM to every recorded process still alive (code servers, run
        workers: Dagster handles SIGTERM as an interrupt), up to 20 s; then SIGKILL."""
        self.record()
        steps = ((signal.SIGTERM, True, 45.0), (signal.SIGTERM, False, 20.0), (signal.SIGKILL, False, 30.0))
        for sig, root_only, wait in steps:
            targets = [p for p in self.survivors() if not root_only or (self.root and p.pid == self.root.pid)]
            for proc in targets:
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.root is not None and self.root.poll() is None:
                    try:
                        self.root.wait(timeout=0.5)  # reap our direct child
                    except subprocess.TimeoutExpired:
                        pass
                self.record()  # a process started while shutting down is recorded (and stopped) too
                alive = self.survivors()
                if not alive:
                    return []
                if root_only and not any(p.pid == self.root.pid for p in alive):
                    break  # the root is gone: on to its leftovers
                time.sleep(0.5)
        return self.survivors()


def _default_signals() -> None:
    """In the child before exec: default SIGINT/SIGTERM. A process started in the background of a
    non-interactive shell inherits SIGINT ignored, and Dagster maps SIGTERM to SIGINT's handler, so
    without this `dagster dev` and its children would ignore SIGTERM."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    log: Path
    tree: ProcessTree
    reports_dir: Path
    started: float = field(default_factory=time.monotonic)
    timeline: dict[str, float] = field(default_factory=dict)

    def mark(self, event: str) -> None:
        """Seconds since `dagster dev` was started, per step (written to tests/artifacts/ui/timings.json)."""
        self.timeline[event] = round(time.monotonic() - self.started, 1)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30.0) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def check_alive(self, doing: str) -> None:
        if self.tree.root.poll() is not None:
            pytest.fail(f"dagster dev exited (code {self.tree.root.returncode}) while {doing}; log tail:\n{self.log_tail()}")


WORKSPACE_QUERY = """{ workspaceOrError { __typename
  ... on Workspace { locationEntries { name loadStatus
      locationOrLoadError { __typename ... on PythonError { message stack } } } }
  ... on PythonError { message } } }"""

RUN_QUERY = """query Run($runId: ID!) { runOrError(runId: $runId) { __typename
  ... on Run { runId jobName status startTime endTime tags { key value } } ... on RunNotFoundError { message } } }"""

LOGS_QUERY = """query Logs($runId: ID!) { logsForRun(runId: $runId) { __typename
  ... on EventConnection { events { __typename
    ... on MessageEvent { message level stepKey }
    ... on ExecutionStepFailureEvent { error { message cause { message } } } } } } }"""


def _wait_for_server(server: Server) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    last = "no answer yet"
    while time.monotonic() < deadline:
        server.check_alive("starting")
        server.tree.record()
        try:
            data = server.graphql(WORKSPACE_QUERY, timeout=10)
            entries = {e["name"]: e for e in data["workspaceOrError"].get("locationEntries", [])}
            entry = entries.get(LOCATION)
            if entry and entry["locationOrLoadError"] and entry["locationOrLoadError"]["__typename"] == "PythonError":
                error = entry["locationOrLoadError"]
                pytest.fail(f"code location {LOCATION} failed to load: {error['message']}\n{''.join(error['stack'][-5:])}")
            if entry and entry["loadStatus"] == "LOADED" and entry["locationOrLoadError"]:
                return
            last = f"location entries: {list(entries)} {entry and entry['loadStatus']}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, RuntimeError) as error:
            last = repr(error)
        time.sleep(POLL_SECONDS)
    pytest.fail(f"the webserver at {server.url} did not load {LOCATION} within {SERVER_START_TIMEOUT} s "
                f"(last: {last}); log tail:\n{server.log_tail()}")


def _run_failure_summary(server: Server, run_id: str) -> str:
    try:
        events = server.graphql(LOGS_QUERY, {"runId": run_id})["logsForRun"].get("events", [])
    except Exception as error:  # noqa: BLE001 - only to explain a failure
        return f"(could not read the run's events: {error!r})"
    lines = []
    for event in events:
        if event.get("level") in ("ERROR", "CRITICAL") or event["__typename"] in (
            "ExecutionStepFailureEvent", "RunFailureEvent"
        ):
            error = event.get("error") or {}
            # Dagster wraps the asset's exception: its cause is what an analyst needs to read
            detail = ((error.get("cause") or {}).get("message") or error.get("message") or "").strip()
            lines.append(f"{event['__typename']} {event.get('stepKey') or ''}: {event.get('message', '')} {detail}".strip())
    return "\n".join(lines[-20:]) or "(no error events)"


def _wait_for_run(server: Server, run_id: str, what: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT
    status = "unknown"
    while time.monotonic() < deadline:
        server.check_alive(f"running {what}")
        server.tree.record()
        try:
            run = server.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
            status = repr(error)
            time.sleep(POLL_SECONDS)
            continue
        status = run.get("status", run["__typename"])
        if status == "SUCCESS":
            return run
        if status in ("FAILURE", "CANCELED"):
            pytest.fail(f"{what} (run {run_id}) ended {status}:\n{_run_failure_summary(server, run_id)}\n"
                        f"dagster log tail:\n{server.log_tail()}")
        time.sleep(POLL_SECONDS)
    pytest.fail(f"{what} (run {run_id}) did not succeed within {RUN_TIMEOUT} s (last status {status}):\n"
                f"{_run_failure_summary(server, run_id)}\ndagster log tail:\n{server.log_tail()}")


@pytest.fixture
def dagster_ui(tmp_path: Path):
    """`dagster dev` on a free loopback port over a temporary landing zone, warehouse and instance."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `apt-get install chromium` (scripts/test.sh does it)"
    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copytree(PARTNER_DELIVERY, landing / DELIVERY)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "pipelines" / "dagster.yaml", home / "dagster.yaml")
    # What the delivery sensor does when a folder lands: register the delivery as a partition.
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        instance.add_dynamic_partitions("delivery", [DELIVERY])
    finally:
        instance.dispose()

    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "COHORT_LANDING_DIR": str(landing),
        "COHORT_DUCKDB_PATH": str(tmp_path / "warehouse.duckdb"),
        "COHORT_REPORTS_DIR": str(tmp_path / "reports"),
        "COHORT_PUBLISHED_DIR": str(tmp_path / "published"),
        "PYTHONUNBUFFERED": "1",
    }
    port = _free_port()
    log = tmp_path / "dagster_dev.log"
    dagster = Path(sys.executable).with_name("dagster")
    tree = ProcessTree()
    started = time.monotonic()
    with log.open("wb") as log_file:
        tree.start(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            preexec_fn=_default_signals,
        )
    server = Server(url=f"http://127.0.0.1:{port}", log=log, tree=tree, reports_dir=tmp_path / "reports",
                    started=started)
    try:
        yield server
    finally:
        server.mark("teardown_started")
        survivors = tree.kill_all()
        server.mark("teardown_done")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if log.exists():
            shutil.copyfile(log, ARTIFACTS / "dagster_dev.log")
        (ARTIFACTS / "processes.txt").write_text(
            "every process recorded (and stopped by PID at the end):\n"
            + "".join(f"{p.pid} (ppid {p.ppid}, sid {p.sid}) {p.cmd}\n" for p in tree.known.values()))
        (ARTIFACTS / "timings.json").write_text(json.dumps(server.timeline, indent=2) + "\n")
        assert not survivors, "processes started by the test survived SIGTERM and SIGKILL: " + "; ".join(
            f"{p.pid} {p.cmd}" for p in survivors)
        assert not [p for p in _all_procs() if p.sid == tree.sid and p.state not in ("Z", "X")], \
            "a process of dagster dev's session is still running"


# ---------------------------------------------------------------------------------------------
# The browser
# ---------------------------------------------------------------------------------------------


@contextmanager
def _browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.set_default_navigation_timeout(UI_TIMEOUT_MS)
            # Dagster OSS greets a new browser on localhost with a "Join the Dagster community" dialog, at a
            # random moment (it once opened over the launch dialog, and a click on its Skip button never got
            # through). The browser says it was dismissed before (Dagster's own localStorage key); should it
            # show all the same, Skip gets the click event directly, whatever lies on top of it.
            page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
            community = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
            page.add_locator_handler(community, lambda dialog: dialog.get_by_role("button", name="Skip").dispatch_event("click"))
            yield page
        finally:
            browser.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _launch_run_from_job_page(page, server: Server, job: str, choose_partition, shot_prefix: str) -> str:
    """Open a job's page, click "Materialize all…", choose the partition, click "Launch 1 run";
    returns the run id the UI reports."""
    page.goto(f"{server.url}/locations/{LOCATION}/jobs/{job}")
    materialize = page.get_by_role("button", name="Materialize all…")
    materialize.wait_for(state="visible")
    materialize.click()
    launch_dialog = page.get_by_role("dialog").filter(has_text="Partition selection")
    confirm = page.get_by_role("dialog").filter(has_text="Are you sure?")
    launch_dialog.or_(confirm).first.wait_for(state="visible")
    if confirm.is_visible():  # upstream assets not materialized yet: the UI asks first
        _shot(page, f"{shot_prefix}_upstream_warning")
        confirm.get_by_role("button", name="Confirm").click()
    launch_dialog.wait_for(state="visible")
    choose_partition(page, launch_dialog)
    launch = launch_dialog.get_by_role("button", name="Launch 1 run")
    launch.wait_for(state="visible")
    assert launch.is_enabled(), f"{job}: 'Launch 1 run' is disabled after choosing the partition"
    _shot(page, f"{shot_prefix}_launch_dialog")
    launch.click()
    server.mark(f"{job}_launched")
    # The UI confirms with a toast "Launched run <id> View" linking to the run: follow it, as an analyst would.
    toast_link = page.locator("a[href*='/runs/']").filter(has_text="View").first
    toast_link.wait_for(state="visible")
    run_id = toast_link.get_attribute("href").rstrip("/").split("/runs/")[-1].split("?")[0]
    assert len(run_id) >= 32, f"unexpected run link {toast_link.get_attribute('href')!r}"
    toast_link.click()
    page.wait_for_url(f"**/runs/{run_id}**")
    return run_id


def _choose_delivery(page, dialog) -> None:
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem").filter(has_text=DELIVERY).first.click()
    if page.get_by_role("menuitem").filter(has_text=DELIVERY).first.is_visible():
        dialog.get_by_text("Launch runs to materialize").click()  # close the partition menu, keep the dialog
    dialog.get_by_text("1 partition", exact=True).wait_for(state="visible")


def _choose_quarter(page, dialog) -> None:
    ranges = dialog.get_by_placeholder("ex:", exact=False)
    ranges.fill(QUARTER)
    ranges.press("Enter")
    dialog.get_by_text("1 partition", exact=True).wait_for(state="visible")


def _metadata_plot_seen(page, server: Server, asset_path: str, key: str, name: str) -> None:
    """Open an asset's page, find the metadata entry `key` of its latest materialization, open it
    ("[Show Markdown]": a plot is too long to show inline) and see the image."""
    page.goto(f"{server.url}/assets/{asset_path}")
    row = page.locator("tr").filter(has_text=key).first
    row.wait_for(state="visible")
    row.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("img[src^='data:image/png']").first.wait_for(state="visible")
    _shot(page, name)
    page.keyboard.press("Escape")
    server.mark(f"{key}_seen")


def _run_succeeded(page, server: Server, run_id: str, job: str, partition: str, name: str) -> None:
    """Wait for the run (GraphQL), check it was launched from the UI for the partition, and screenshot
    the run page the browser is on (it updates itself)."""
    run = _wait_for_run(server, run_id, job)
    server.mark(f"{job}_succeeded")
    server.timeline[f"{job}_run_seconds"] = round(run["endTime"] - run["startTime"], 1)
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags.get("dagster/partition") == partition, tags
    assert tags.get("dagster/from_ui") == "true", f"{job} run was not launched from the UI: {tags}"
    page.get_by_text("Success", exact=True).first.wait_for(state="visible")
    _shot(page, name)


# ---------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------


def test_analyst_materializes_the_pipeline_from_the_ui(dagster_ui: Server):
    server = dagster_ui
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)

    with _browser_page() as page:  # starts while the server is still loading
        server.tree.record()  # Playwright's driver and Chromium
        _wait_for_server(server)
        server.mark("server_ready")
        try:
            # 1. The asset graph, organized by stage.
            page.goto(f"{server.url}/asset-groups")
            for group in STAGES:
                page.get_by_role("button", name=group).first.wait_for(state="visible")
            _shot(page, "01_asset_graph")

            # 1b. An asset's definition, before any run: what it means, its SQL file, its columns.
            page.goto(f"{server.url}/assets/staging/labs")
            page.get_by_text("sql/staging/labs.sql").first.wait_for(state="visible")
            page.get_by_text("result_raw", exact=True).first.wait_for(state="visible")
            _shot(page, "01b_staging_labs_definition")

            # 2. Ingest the delivery: its job, "Materialize all…", the delivery partition, launch.
            run_id = _launch_run_from_job_page(page, server, "ingest_new_deliveries", _choose_delivery, "02_ingest")
            _run_succeeded(page, server, run_id, "ingest_new_deliveries", DELIVERY, "03_ingest_run")
            _metadata_plot_seen(page, server, "meta/dq_results", "results_plot", "03b_dq_results_plot")

            # 3. The quarterly report: its job, "Materialize all…", the quarter, launch.
            run_id = _launch_run_from_job_page(page, server, "quarterly_cohort_report", _choose_quarter, "04_quarterly")
            _run_succeeded(page, server, run_id, "quarterly_cohort_report", QUARTER, "05_quarterly_run")
            _metadata_plot_seen(page, server, "cohort/attrition", "attrition_plot", "05b_attrition_plot")

            # 4. The report asset: its latest materialization's metadata is on the page.
            report_html = server.reports_dir / QUARTER_LABEL / "cohort_report.html"
            assert report_html.exists(), f"the run succeeded but {report_html} is missing"
            page.goto(f"{server.url}/assets/quarterly_report")
            for key in ("report_path", "cohort_size", "data_cutoff", "counts_suppressed"):
                page.get_by_text(key, exact=True).first.wait_for(state="visible")
            page.get_by_text(str(report_html)).first.wait_for(state="visible")
            page.get_by_text("2025-06-30").first.wait_for(state="visible")
            page.set_viewport_size({"width": 1600, "height": 2200})  # the metadata table scrolls inside the page
            _shot(page, "06_quarterly_report_asset")
            page.set_viewport_size({"width": 1600, "height": 1000})
            server.mark("report_metadata_seen")

            page.goto(f"{server.url}/asset-groups")
            page.get_by_role("button", name="reports").first.wait_for(state="visible")
            _shot(page, "07_asset_graph_after")
        except (Exception, pytest.fail.Exception):
            with suppress(Exception):
                _shot(page, "failure")
            raise

    # Playwright's driver and the browser have exited: what is left is dagster dev's tree, which the
    # fixture stops by PID (and checks).
    deadline = time.monotonic() + 30
    while (leftover := server.tree.outside_dagster()) and time.monotonic() < deadline:
        time.sleep(0.5)
        server.tree.record()
    assert not leftover, f"browser processes survived the browser: {leftover}"
    server.mark("browser_closed")
