"""Sessions: ``lint``, ``typecheck``, ``tests``, ``browser`` (the web console in headless
Chromium), ``tests_cluster`` (the service on a 3-node NATS JetStream cluster): ``nox`` with no
arguments runs these five, which is the README's test command and what CI runs. On demand:
``crash`` (the long kill -9 run), ``bench`` (load and overload), ``bench_store`` (storage
numbers), ``bench_speech``, ``bench_cluster``, ``fuzz``, ``api``.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "browser", "tests_cluster"]
nox.options.reuse_existing_virtualenvs = True

PACKAGE = "trio_audio"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite: unit tests and end-to-end tests against real servers (the cluster's
    own tests run in ``tests_cluster``)."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        *(
            session.posargs
            or [
                "--ignore=tests/test_cluster.py",
                "--ignore=tests/test_cluster_ops.py",
                "--ignore=tests/test_cluster_lag.py",
            ]
        ),
    )


@nox.session
def tests_cluster(session: nox.Session) -> None:
    """The service on a JetStream cluster of three real ``nats-server`` processes: its own
    tests (several nodes, kill -9 of servers and nodes, the whole cluster down, restarts, a
    replica that lags),
    then the HTTP and WebSocket end-to-end suites with every service on the cluster."""
    session.install("-e", ".[test]")
    session.run(
        "pytest", "tests/test_cluster.py", "tests/test_cluster_ops.py", "tests/test_cluster_lag.py",
        *session.posargs,
    )  # fmt: skip
    session.run(
        "pytest", "tests/test_http.py", "tests/test_ws.py", *session.posargs,
        env={"TRIO_AUDIO_TEST_CLUSTER": "1"},
    )  # fmt: skip


@nox.session
def browser(session: nox.Session) -> None:
    """The web console in Debian's headless Chromium (``/usr/bin/chromium``, from apt; never a
    downloaded browser), driven by Playwright: live capture, browse and play, the token flow.
    A test fails on any error in the browser's console and on sideways scrolling at 390 px.
    Screenshots of each state (and at 390 and 1,920 px) go under each test's tmp dir; their
    paths are printed."""
    session.install("-e", ".[test]", "playwright")
    session.run("pytest", "-s", "-m", "browser", "tests/test_console.py", *session.posargs)


@nox.session
def crash(session: nox.Session) -> None:
    """The long crash run: many SIGKILL rounds per fsync mode, plus the power-loss tests.
    ``TRIO_AUDIO_CRASH_ROUNDS`` (default here 100) sets the rounds."""
    session.install("-e", ".[test]")
    rounds = session.env.get("TRIO_AUDIO_CRASH_ROUNDS", "100")
    session.run(
        "pytest", "tests/test_crash.py", "tests/test_durability.py", "tests/test_store_model.py",
        *session.posargs, env={"TRIO_AUDIO_CRASH_ROUNDS": rounds},
    )  # fmt: skip


@nox.session
def bench(session: nox.Session) -> None:
    """Load and overload numbers for the README's Performance section (``trio-audio bench``):
    uploads/s, WebSocket frames/s, p99, fsync modes, the naive baseline, 5x overload, and
    every acknowledged chunk read back. ``nox -s bench -- --repeat 3`` gives the spread."""
    session.install("-e", ".[test]")
    session.run("trio-audio", "bench", *session.posargs)


@nox.session
def bench_store(session: nox.Session) -> None:
    """Storage numbers for the README: replay speed and start-up time, acknowledged
    uploads/s per fsync mode, process memory as the store grows
    (``trio_audio/bench/storage.py``). ``nox -s bench_store -- --index --chunks 1000000
    --long 36000 --base REV``: the index at a million chunks, beside revision REV
    (docs/storage-memory.md)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "trio_audio.bench.storage", *session.posargs)


@nox.session
def bench_cluster(session: nox.Session) -> None:
    """Cluster numbers for the README: uploads/s and p99 with 1-3 nodes on a 3-node R=3
    JetStream cluster vs the local log, WebSocket frames/s, replay of 100k chunks
    (``trio_audio/bench/cluster.py``)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "trio_audio.bench.cluster", *session.posargs)


@nox.session
def bench_speech(session: nox.Session) -> None:
    """Speech numbers for the README: WER on a held-out set, CPU per audio second, peak RSS
    per worker, install size, for whisper and pocketsphinx (``trio_audio/bench/speech.py``;
    needs ``apt-get install espeak-ng alsa-utils pocketsphinx-testdata
    asterisk-core-sounds-en asterisk-core-sounds-en-wav``). ``-- --details`` lists every miss,
    ``-- --more`` runs the second held-out set of real speech, ``-- --dev`` the development set."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "trio_audio.bench.speech", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing (atheris) of the decoders, the WebSocket parser and log
    replay, from a corpus of real files. ``nox -s fuzz -- -runs=200000`` runs longer."""
    session.install("-e", ".[test]", "atheris")
    corpus = session.create_tmp() + "/corpus"
    session.run("python", "-m", "tests.fuzz_targets", "seed", corpus)
    args = session.posargs or ["-runs=20000"]
    for target in ("decode", "control", "replay"):
        session.run("python", "-m", "tests.fuzz_targets", target, corpus, "-max_len=65536",
                    *args)  # fmt: skip


@nox.session
def api(session: nox.Session) -> None:
    """schemathesis against a live server from its own OpenAPI document: no 500s."""
    session.install("-e", ".[test]", "schemathesis")
    session.run("python", "-m", "tests.api_check", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, including the flake8-async (ASYNC) rules."""
    session.install("ruff")
    session.run("ruff", "check", PACKAGE, "tests", "noxfile.py")
    session.run("ruff", "format", "--check", PACKAGE, "tests", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """strict mypy on the package."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", PACKAGE)
