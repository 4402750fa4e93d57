"""``activator check`` on real unit directories: what a user sees on stdout, stderr, exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from activator.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "blog"
SERVED = REPO / "examples" / "units"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bundled_examples_are_clean_and_show_what_would_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "check", str(EXAMPLES))
    assert (code, err) == (0, "")
    assert "dynamic-user-test.service: service\n" in out
    assert "  runs /usr/bin/sleep 4711\n" in out
    assert "waldo.socket: socket\n  listens on ListenStream=2048" in out
    assert "each connection starts an instance of waldo@.service" in out
    assert "  runs /usr/bin/myservicebinary (exit status ignored)\n" in out
    assert "foobar@.service: service template" in out
    assert "ProtectSystem=strict ProtectHome=read-only PrivateTmp=yes RemoveIPC=yes" in out
    assert out.endswith("4 units checked, 0 errors, 0 warnings\n")


def test_the_units_make_run_serves_are_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", str(SERVED))
    assert (code, err) == (0, "")
    assert "echo.socket: socket\n  listens on ListenStream=127.0.0.1:7007" in out
    assert out.endswith("2 units checked, 0 errors, 0 warnings\n")


def test_template_instance_resolves_its_state_directory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "check", str(EXAMPLES / "foobar@customerxyz.service"))
    assert code == 0
    assert out.startswith("foobar@customerxyz.service: service\n")
    assert "  runs /usr/bin/foobar --customer=customerxyz\n" in out
    assert "  STATE_DIRECTORY=/var/lib/foobar/customerxyz\n" in out


def test_example_settings_file_points_at_the_example_units(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "check", "--config", str(REPO / "examples" / "activator.toml"))
    assert (code, err) == (0, "")
    assert "2 units checked" in out


def test_every_problem_is_printed_with_file_and_line_and_exit_is_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        tmp_path / "bad.service",
        "[Service]\nExecStart=/bin/true\nProtectSystem=sometimes\nFoo=bar\nUser=no body\n",
    )
    write(tmp_path / "good.service", "[Service]\nExecStart=/bin/true\n")
    code, out, err = run(capsys, "check", str(tmp_path))
    assert code == 2
    lines = err.splitlines()
    assert lines[0] == (
        f"activator: {tmp_path}/bad.service:3: ProtectSystem='sometimes': must be one of 'no', "
        "'yes', 'full', 'strict' (got 'sometimes')"
    )
    assert lines[1] == (
        f"activator: warning: {tmp_path}/bad.service:4: "
        "Unknown key name 'Foo' in section 'Service', ignoring."
    )
    assert lines[2].startswith(f"activator: {tmp_path}/bad.service:5: User='no body': ")
    assert len(lines) == 3
    # The good unit is still loaded and shown: a bad unit never stops the others.
    assert "good.service: service" in out
    assert "bad.service: service" not in out
    assert out.endswith("1 unit checked, 2 errors, 1 warning\n")


def test_dropins_apply_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "app.service", "[Service]\nExecStart=/bin/app\nDynamicUser=yes\n")
    write(tmp_path / "app.service.d" / "20-later.conf", "[Service]\nStateDirectory=later\n")
    write(
        tmp_path / "app.service.d" / "10-first.conf",
        "[Service]\nStateDirectory=first\nStateDirectory=\nExecStart=\nExecStart=/bin/other\n",
    )
    write(tmp_path / "app.service.d" / "notes.txt", "[Service]\nExecStart=/bin/ignored\n")
    code, out, _ = run(capsys, "check", str(tmp_path))
    assert code == 0
    assert "  runs /bin/other\n" in out
    assert "  STATE_DIRECTORY=/var/lib/later\n" in out
    assert f"from {tmp_path}/app.service, {tmp_path}/app.service.d/10-first.conf, " in out


def test_earlier_units_directory_wins_and_masking_hides_a_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    write(etc / "a.service", "[Service]\nExecStart=/bin/from-etc\n")
    write(lib / "a.service", "[Service]\nExecStart=/bin/from-lib\n")
    write(lib / "b.service", "[Service]\nExecStart=/bin/b\n")
    (etc / "b.service").symlink_to("/dev/null")
    write(lib / "c.service", "[Service]\nExecStart=/bin/c\n")
    code, out, _ = run(capsys, "check", "--units", str(etc), "--units", str(lib))
    assert code == 0
    assert "  runs /bin/from-etc\n" in out
    assert "from-lib" not in out
    # As systemd: a symlink to /dev/null in an earlier directory masks the unit everywhere.
    assert "b.service: masked (an empty file or a symlink to /dev/null hides it)\n" in out
    assert "/bin/b" not in out
    assert "c.service: service" in out
    assert out.endswith("2 units checked, 0 errors, 0 warnings\n")


def test_socket_with_missing_service_is_not_loaded_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "echo.socket", "[Socket]\nListenStream=127.0.0.1:7\nAccept=yes\n")
    code, out, err = run(capsys, "check", str(tmp_path))
    assert code == 2
    assert err == (
        f"activator: {tmp_path}/echo.socket: Accept=yes starts one echo@.service instance per "
        "connection, which is not in the units directories; socket not loaded\n"
    )
    assert out == "0 units checked, 1 error, 0 warnings\n"


def test_json_output_for_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "x.service", "[Service]\nExecStart=/bin/x a\nDynamicUser=yes\nNice=40\n")
    code, out, err = run(capsys, "check", "--json", str(EXAMPLES), str(tmp_path))
    assert code == 2
    assert err == ""
    doc = json.loads(out)
    assert doc["ok"] is False
    assert [p["message"] for p in doc["problems"]] == [
        f"{tmp_path}/x.service:4: Nice='40': must be -20..19 (got 40)"
    ]
    assert doc["problems"][0] | {"message": ""} == {
        "severity": "error",
        "path": f"{tmp_path}/x.service",
        "line": 4,
        "key": "Nice",
        "value": "40",
        "reason": "must be -20..19 (got 40)",
        "message": "",
    }
    names = [u["name"] for u in doc["units"]]
    assert "dynamic-user-test.service" in names
    by_name = {u["name"]: u for u in doc["units"]}
    assert by_name["dynamic-user-test.service"]["template"] is False
    assert by_name["waldo@.service"]["template"] is True
    assert by_name["waldo@.service"]["checked_as"] == "waldo@instance.service"
    assert by_name["waldo@.service"]["exec_start"] == [
        {
            "path": "/usr/bin/myservicebinary",
            "argv": ["/usr/bin/myservicebinary"],
            "ignore_failure": True,
        }
    ]
    waldo = by_name["waldo.socket"]
    assert waldo["listen"] == ["ListenStream=2048"]
    assert waldo["activates"] == "waldo@.service"


def test_missing_path_and_bad_settings_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "activator.toml", "[pool]\nfirst = 0\n")
    code, _, err = run(capsys, "check", "--config", str(config), str(tmp_path / "nope.service"))
    assert code == 2
    assert f"activator: {tmp_path}/nope.service: No such file or directory" in err
    assert f"activator: {config}:2: pool.first=" in err


def test_unknown_command_line_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_installed_command_runs_as_a_program() -> None:
    activator = Path(sys.executable).parent / "activator"
    for argv in ([str(activator)], [sys.executable, "-m", "activator"]):
        result = subprocess.run(
            [*argv, "check", str(EXAMPLES / "waldo.socket")],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout.endswith("1 unit checked, 0 errors, 0 warnings\n")


def test_template_socket_needs_its_template_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "cust@.socket", "[Socket]\nListenStream=/run/cust/%i.sock\n")
    code, _, err = run(capsys, "check", str(tmp_path))
    assert code == 2
    assert err == (
        f"activator: {tmp_path}/cust@.socket: it activates cust@instance.service, which is not "
        "in the units directories; socket not loaded\n"
    )
    write(tmp_path / "cust@.service", "[Service]\nExecStart=/bin/cust %i\nDynamicUser=yes\n")
    code, out, err = run(capsys, "check", str(tmp_path / "cust@acme.socket"))
    assert (code, err) == (0, "")
    assert out.startswith("cust@acme.socket: socket\n  listens on ListenStream=/run/cust/acme.sock")


def test_unreadable_shared_dropin_fails_the_units_it_applies_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "app.service", "[Service]\nExecStart=/bin/app\n")
    (tmp_path / "service.d").mkdir()
    # Opening works, reading fails with EIO: a drop-in that exists but cannot be read.
    (tmp_path / "service.d" / "harden.conf").symlink_to("/proc/self/mem")
    code, out, err = run(capsys, "check", str(tmp_path))
    assert code == 2
    assert err == (
        f"activator: {tmp_path}/service.d/harden.conf: cannot read: Input/output error\n"
    )
    assert out == "0 units checked, 1 error, 0 warnings\n"


def test_hidden_dropins_empty_units_and_aliases_are_handled_as_systemd_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "real.service", "[Service]\nExecStart=/bin/real\n")
    write(tmp_path / "real.service.d" / ".hidden.conf", "[Service]\nExecStart=\n")
    write(tmp_path / "empty.service", "")
    (tmp_path / "alias.service").symlink_to("real.service")
    write(tmp_path / "t@.service", "[Service]\nExecStart=/bin/t %i\n")
    (tmp_path / "t@one.service").symlink_to("t@.service")
    code, out, err = run(capsys, "check", str(tmp_path))
    assert code == 0
    assert err == (
        f"activator: warning: {tmp_path}/alias.service: a symlink to real.service: unit aliases "
        "are not supported, so this name is not loaded (name the unit by its own name)\n"
    )
    assert "  runs /bin/real\n" in out  # the hidden drop-in did not reset ExecStart=
    assert "empty.service: masked" in out
    assert "t@one.service: service\n  runs /bin/t one\n" in out


def test_naming_a_masked_unit_or_an_instance_with_a_bad_dropin_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gone.service").symlink_to("/dev/null")
    write(tmp_path / "t@.service", "[Service]\nExecStart=/bin/t\n")
    write(tmp_path / "t@x.service.d" / "a.conf", "[Service]\nBogus=1\n")
    code, out, err = run(
        capsys, "check", str(tmp_path / "gone.service"), str(tmp_path / "t@x.service")
    )
    assert code == 2
    assert err == (
        "activator: gone.service: unit is masked (an empty file or a symlink to /dev/null hides "
        "it)\n"
        f"activator: warning: {tmp_path}/t@x.service.d/a.conf:2: Unknown key name 'Bogus' in "
        "section 'Service', ignoring.\n"
    )
    assert out.startswith("t@x.service: service\n")
