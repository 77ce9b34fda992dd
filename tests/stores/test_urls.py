"""Store URLs: the password never shows, a wrong URL is one line saying what to give."""

from __future__ import annotations

import pytest

from gearmill.server.store import StoreError, hide_password, open_store


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://gm:s3cret@db.local:5432/jobs", "postgresql://gm:***@db.local:5432/jobs"),
        ("mysql://root:p%40ss@127.0.0.1/test", "mysql://root:***@127.0.0.1/test"),
        ("redis://:s3cret@[::1]:6379/0?prefix=a:", "redis://:***@[::1]:6379/0?prefix=a:"),
        (
            "postgresql://gm@h/db?sslmode=require&password=s3cret",
            "postgresql://gm@h/db?sslmode=require&password=***",
        ),
        ("sqlite:///var/lib/gearmill/queue.db", "sqlite:///var/lib/gearmill/queue.db"),
        ("memory", "memory"),
    ],
)
def test_the_password_never_shows(url: str, shown: str) -> None:
    assert hide_password(url) == shown
    assert "s3cret" not in open_store(url).url


def test_an_unknown_store_is_one_line_listing_the_known_ones() -> None:
    with pytest.raises(StoreError) as err:
        open_store("mongodb://u:s3cret@h/db")
    text = str(err.value)
    assert "s3cret" not in text and "sqlite:///" in text and "\n" not in text


def test_a_sqlite_url_without_a_file_says_how_to_name_one() -> None:
    with pytest.raises(StoreError, match=r"sqlite:///var/lib/gearmill/queue\.db"):
        open_store("sqlite://")
