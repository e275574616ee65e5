"""Hostile settings (issue 19 item 2): every declared setting with every kind of bad value is
refused at load, before anything is touched; .env lines that do not parse are errors naming
the file and line; task flags are typed; fleet.toml is checked against its schema."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dbops.config import SETTINGS, load_settings, secret_forms
from dbops.errors import ConfigError
from tests.conftest import ROOT, offline_settings

BASE = {"POSTGRES_USER": "u", "POSTGRES_DB": "d"}


def _load(tmp_path, **environ):
    return load_settings(
        ROOT, environ={"DBOPS_ENV_FILE": str(tmp_path / "none"), **BASE, **environ}
    )


def _kind(setting) -> str:
    """What a setting holds, told by its parser."""
    if setting.parse.__name__ == "_duration":
        return "duration"
    if setting.parse.__doc__ in ("a whole number", "a number"):
        return "number"
    return "other"


NUMBERS = [s for s in SETTINGS if _kind(s) == "number"]
DURATIONS = [s for s in SETTINGS if _kind(s) == "duration"]
BAD_NUMBERS = ["-1", "nan", "NaN", "inf", "-inf", "1e400", "99999999999999999999", "two", "1 0"]
BAD_DURATIONS = ["9999999h", "25d", "nan", "-1s", "2 sec", "1e400", "soon", "2s 3s", "inf"]


def test_the_table_covers_the_numeric_and_duration_settings():
    names = {s.name for s in NUMBERS}
    assert {"DBOPS_BACKUP_RESERVE_MB", "DBOPS_NOTIFY_TIMEOUT", "POSTGRES_PORT"} <= names
    assert {"DBOPS_DRILL_MAX_AGE_DAYS", "DBOPS_PREMIGRATE_FULL_MAX_MB"} <= names
    assert {s.name for s in DURATIONS} >= {"DBOPS_LOCK_TIMEOUT", "DBOPS_BACKUP_LOCK_WAIT"}


@pytest.mark.parametrize("setting", NUMBERS, ids=lambda s: s.name)
@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_every_number_setting_refuses_every_bad_value(tmp_path, setting, bad):
    with pytest.raises(ConfigError, match=f"^{setting.name}="):
        _load(tmp_path, **{setting.name: bad})


@pytest.mark.parametrize("setting", DURATIONS, ids=lambda s: s.name)
@pytest.mark.parametrize("bad", BAD_DURATIONS)
def test_every_duration_setting_refuses_what_postgresql_would(tmp_path, setting, bad):
    with pytest.raises(ConfigError, match=f"^{setting.name}="):
        _load(tmp_path, **{setting.name: bad})


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("2 s", "2s"),
        (" 5 MIN ", "5min"),
        ("1.5s", "1500ms"),
        ("500us", "1ms"),  # never rounded down to 0, which means "no timeout"
        ("0", "0"),
        ("24d", "24d"),
        ("2147483647", "2147483647"),
    ],
)
def test_durations_are_normalised_before_they_reach_pgoptions(tmp_path, raw, normalised):
    s = _load(tmp_path, DBOPS_LOCK_TIMEOUT=raw, DBOPS_BACKUP_LOCK_WAIT=raw)
    assert s.lock_timeout == normalised and s.get("DBOPS_BACKUP_LOCK_WAIT") == normalised
    assert " " not in s.lock_timeout


@pytest.mark.parametrize("setting", NUMBERS + DURATIONS, ids=lambda s: s.name)
def test_an_empty_optional_value_means_the_default(tmp_path, setting):
    # documented: `NAME=` in .env (as .env.example has) is the default, not an error
    assert _load(tmp_path, **{setting.name: "  "}).get(setting.name) == setting.parse(
        setting.default
    )


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", "UTC+99"])
def test_an_unknown_time_zone_is_refused_at_load(tmp_path, zone):
    with pytest.raises(ConfigError, match="DBOPS_SCHEDULE_TIMEZONE=.* is not a known time zone"):
        _load(tmp_path, DBOPS_SCHEDULE_TIMEZONE=zone)
    assert _load(tmp_path, DBOPS_SCHEDULE_TIMEZONE="Europe/Paris").get(
        "DBOPS_SCHEDULE_TIMEZONE"
    ) == ("Europe/Paris")


@pytest.mark.parametrize(
    "name, value, needle",
    [
        ("DBOPS_NOTIFY_TIMEOUT", "0", "more than 0"),
        ("DBOPS_NOTIFY_TIMEOUT", "601", "and 600"),
        ("DBOPS_RESTORE_JOBS", "0", "1 or more"),
        ("DBOPS_LOCK_RETRIES", "1.5", "not a whole number"),
        ("DBOPS_LOCK_RETRIES", "1e3", "not a whole number"),
    ],
)
def test_ranges(tmp_path, name, value, needle):
    with pytest.raises(ConfigError, match=needle):
        _load(tmp_path, **{name: value})


# --- .env --------------------------------------------------------------------------------
def test_an_env_line_that_does_not_parse_is_an_error_naming_file_and_line(tmp_path):
    env = tmp_path / ".env"
    env.write_text(
        'POSTGRES_USER=u\nPOSTGRES_PASSWORD="s3cr3t-unterminated\nDBOPS_BACKUP_DIR=/vol\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(ROOT, environ={"DBOPS_ENV_FILE": str(env), "POSTGRES_DB": "d"})
    text = err.value.render()
    assert f"{env}, line 2: the value of POSTGRES_PASSWORD cannot be parsed" in text
    assert "s3cr3t" not in text and f"next: sed -n 2p {env}" in text


def test_an_env_file_with_bom_and_crlf_reads_as_written(tmp_path):
    env = tmp_path / ".env"
    env.write_bytes(
        "\ufeffPOSTGRES_USER=u\r\nPOSTGRES_DB=app\r\nDBOPS_BACKUP_DIR=/vol/b\r\n"
        'POSTGRES_PASSWORD="p w"\r\n'.encode()
    )
    s = load_settings(ROOT, environ={"DBOPS_ENV_FILE": str(env)})
    assert (s.user, s.database, str(s.backup_dir), s.password) == ("u", "app", "/vol/b", "p w")


def test_an_env_file_that_is_not_utf8_is_refused(tmp_path):
    env = tmp_path / ".env"
    env.write_bytes(b"POSTGRES_USER=\xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot be read as UTF-8"):
        load_settings(ROOT, environ={"DBOPS_ENV_FILE": str(env), "POSTGRES_DB": "d"})


# --- typed task flags ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["backup", "--jobs", "two"], "--jobs='two' is not a whole number"),
        (["backup", "--jobs", "0"], "--jobs='0' must be between 1 and 1024"),
        (["restore", "latest", "--jobs", "two"], "--jobs='two' is not a whole number"),
        (["fleet", "current", "--parallel", "two"], "--parallel='two' is not a whole number"),
        (["fleet", "current", "--canary", "-1"], "--canary='-1' must be between 0"),
    ],
)
def test_a_bad_flag_is_one_error_line_and_touches_nothing(tmp_path, argv, needle):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "DBOPS_", "PG"))}
    env.update(BASE, DBOPS_TARGET="local", DBOPS_ENV_FILE=str(tmp_path / "none"))
    env.update(DBOPS_BACKUP_DIR=str(tmp_path / "b"), DBOPS_FLEET_DIR=str(tmp_path / "f"))
    env["DBOPS_FLEET_FILE"] = str(tmp_path / "fleet.toml")
    (tmp_path / "fleet.toml").write_text('[[database]]\ndb = "x"\n')
    done = subprocess.run(
        [sys.executable, "-m", "invoke", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: ") and needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "f").exists()


# --- fleet.toml ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, needle",
    [
        ("[[database]]\nname = 5\ndb = 'x'\n", "name must be a string, not int"),
        ("[[database]]\ndb = ['app']\n", "db must be a string, not list"),
        ("[[database]]\ndb = 'x'\nwave = true\n", "wave must be a whole number, not bool"),
        ("[[database]]\ndb = 'x'\nwave = 1.5\n", "wave must be a whole number, not float"),
        ("[[database]]\ndb = 'x'\nport = 5432.0\n", "port must be a whole number or a string"),
        ("[[database]]\ndb = 'x'\nsettings = 'DBOPS_X=1'\n", "settings must be a table"),
        (
            "[[database]]\ndb = 'x'\nsettings = { DBOPS_LOCK_TIMEOUT = ['2s'] }\n",
            "settings.DBOPS_LOCK_TIMEOUT must be a string, number or boolean",
        ),
        ("[[database]]\ndb = ''\n", "db is empty"),
        ("database = 5\n", "database must be written as [[database]] tables"),
        ("database = [1, 2]\n", "database must be written as [[database]] tables"),
        ("defaults = 3\n", "[defaults] must be a table"),
        ("[[discover]]\nwhere = 5\n", "where must be a string"),
        ("[[database]]\ndb = 'x'\ncolour = 'blue'\n", "unknown key(s) colour"),
        ("[[database]]\ndb = 'x'\n[[database]]\ndb = 'x'\n", "repeated: x"),
        ("[servers]\n", "unknown section(s) servers"),
        ("[[database]]\ndb = 'x\n", "not valid TOML"),
        (
            "[[database]]\ndb = 'x'\nsettings = { DBOPS_LOCK_TIMEOUT = '9999999h' }\n",
            "DBOPS_LOCK_TIMEOUT='9999999h' is longer than PostgreSQL accepts",
        ),
    ],
)
def test_fleet_files_of_every_wrong_shape_are_refused(tmp_path, monkeypatch, text, needle):
    from dbops.fleet import plan

    monkeypatch.setenv("POSTGRES_USER", "u")  # members read the process environment
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        plan.load(offline_settings(tmp_path), path, discover=False)
    assert needle in err.value.message


@pytest.mark.parametrize("verb", ["migrate", "backup", "rehearse"])
def test_a_fleet_with_no_databases_is_an_error_for_every_changing_verb(tmp_path, verb):
    from dbops.fleet import run as fleet_run

    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text("[defaults]\nuser = 'u'\n")
    s = offline_settings(
        tmp_path, DBOPS_FLEET_FILE=str(fleet_file), DBOPS_FLEET_DIR=str(tmp_path / "f")
    )
    with pytest.raises(ConfigError, match="no databases") as err:
        fleet_run.FleetRun(
            s,
            verb,
            flags=[],
            parallel=1,
            canary=0,
            max_failures=1,
            resume=False,
            only=None,
            out=print,
        )
    assert err.value.state == "nothing was started" and not (tmp_path / "f").exists()


# --- secrets -------------------------------------------------------------------------------
def test_every_form_of_the_password_is_a_secret():
    from urllib.parse import quote, quote_plus

    from sqlalchemy import URL

    pw = "p%@:/#'\" \\x"
    forms = secret_forms(pw)
    url = URL.create("postgresql+psycopg", "u", pw, "h", 5432, "d")
    rendered = url.render_as_string(hide_password=False)
    in_url = rendered[len("postgresql+psycopg://u:") : rendered.rindex("@h:")]
    for form in (pw, quote(pw), quote(pw, safe=""), quote_plus(pw), in_url):
        assert form in forms, form
    assert pw.replace("%", "%%") in forms  # configparser-escaped (alembic set_main_option)
    assert forms == sorted(forms, key=lambda f: (-len(f), f))  # longest first
