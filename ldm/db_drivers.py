"""Database URLs (Optuna storage, MLflow backend store): their Python driver is checked up front, named if missing."""

from __future__ import annotations

from ldm.errors import UserError

# The SQLAlchemy dialects MLflow accepts as a tracking store; Optuna's RDB storage takes the same URLs.
DATABASE_SCHEMES = ("postgresql", "mysql", "sqlite", "mssql")
# What to install for a SQLAlchemy driver whose pip name differs from the driver's own name.
INSTALL_HINTS = {
    "psycopg": "pip install 'ldm-suite[postgres]'",  # SQLAlchemy 2.1's driver for a bare postgresql:// URL
    "psycopg2": "pip install psycopg2-binary",
    "mysqldb": "pip install mysqlclient",
}


def is_database_url(url: str) -> bool:
    """`postgresql://...`, `postgresql+psycopg2://...`, `sqlite:///...`: a URL SQLAlchemy opens (no path, no server)."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.split("+", 1)[0] in DATABASE_SCHEMES


def check_driver(url: str) -> None:
    """Raise UserError naming what to install when a database URL's driver cannot be imported; others pass."""
    if not is_database_url(url):
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    scheme = url.partition("://")[0]
    try:
        dialect = make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError):
        raise UserError(f"unknown database driver in URL scheme '{scheme}://'; allowed: "
                        f"{', '.join(DATABASE_SCHEMES)}, optionally with +<driver>") from None
    try:
        dialect.import_dbapi()
    except ImportError:
        hint = INSTALL_HINTS.get(dialect.driver, f"pip install {dialect.driver}")
        raise UserError(f"database URL '{scheme}://...' needs the Python driver {dialect.driver}, "
                        f"which is not installed; install it with: {hint}") from None
