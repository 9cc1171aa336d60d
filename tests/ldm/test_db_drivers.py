"""ldm/db_drivers.py: a database URL whose driver is not installed is one line naming what to install."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from ldm.db_drivers import check_driver, is_database_url
from ldm.errors import UserError
from ldm.tracking.runs import resolve_tracking_uri


def test_absent_driver_names_the_package_in_one_line() -> None:
    assert importlib.util.find_spec("pg8000") is None  # the test needs a driver that is really absent
    with pytest.raises(UserError) as err:
        check_driver("postgresql+pg8000://postgres:secret@db.example:5432/optuna")
    message = str(err.value)
    assert message == ("database URL 'postgresql+pg8000://...' needs the Python driver pg8000, which is not "
                       "installed; install it with: pip install pg8000")
    assert "secret" not in message


def test_psycopg2_form_names_psycopg2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # absent, also where someone installed it
    with pytest.raises(UserError, match=r"driver psycopg2, .* pip install psycopg2-binary$"):
        check_driver("postgresql+psycopg2://postgres@127.0.0.1:5432/db")


def test_bare_postgresql_url_needs_the_postgres_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    check_driver("postgresql://postgres@127.0.0.1:5432/db")  # psycopg 3 comes with the test extra
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what `import psycopg` sees where it is not installed
    with pytest.raises(UserError) as err:
        check_driver("postgresql://postgres@127.0.0.1:5432/db")
    assert str(err.value).endswith("install it with: pip install 'ldm-suite[postgres]'")
    assert "\n" not in str(err.value)


def test_unknown_dialect_and_non_database_urls() -> None:
    with pytest.raises(UserError, match=r"unknown database driver in URL scheme 'postgresql\+nosuch://'"):
        check_driver("postgresql+nosuch://h/db")
    for url in ("http://127.0.0.1:5000", "outputs/optuna/journal.log", "file:///tmp/mlruns"):
        assert not is_database_url(url)
        check_driver(url)
    assert is_database_url("sqlite:///x.db") and is_database_url("postgresql+psycopg2://h/db")


def test_tracking_uri_of_a_database_form_is_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="pip install pg8000"):
        resolve_tracking_uri(tmp_path, "postgresql+pg8000://postgres@127.0.0.1/mlflow")
    assert resolve_tracking_uri(tmp_path, "http://127.0.0.1:5000") == "http://127.0.0.1:5000"
