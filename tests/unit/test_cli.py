"""The command line's manners: global options anywhere, --version, $EDGEFLEET_CONFIG, and the base
(SDK-only) install. No Ray: every command here fails or finishes before a fleet is needed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from edgefleet.cli.main import CONFIG_ENV, build_parser, main, version


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "f.yaml", "--address", "ray://h:10001", "--json", "status"],
        ["status", "-c", "f.yaml", "--address", "ray://h:10001", "--json"],
        ["--config", "f.yaml", "status", "--json", "--address", "ray://h:10001"],
        ["--json", "status", "--config=f.yaml", "--address=ray://h:10001"],
    ],
)
def test_global_options_work_before_or_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)

    assert (args.config, args.address, args.json, args.command) == ("f.yaml", "ray://h:10001", True, "status")


def test_an_option_given_before_the_subcommand_is_not_reset_by_it():
    args = build_parser().parse_args(["-c", "f.yaml", "models", "list"])
    assert args.config == "f.yaml" and args.json is False and args.address is None


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"edgefleet {version()}"
    assert version()[0].isdigit()


def test_config_comes_from_the_environment_when_not_given(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "from-env.yaml"))

    assert main(["status"]) == 2
    assert "from-env.yaml: cannot read config" in capsys.readouterr().err
    assert main(["status", "-c", str(tmp_path / "given.yaml")]) == 2  # the flag wins over the variable
    assert "given.yaml" in capsys.readouterr().err


def test_json_where_it_does_not_apply_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["up", "--json"])
    assert done.value.code == 2 and "--json does not apply to `up`" in capsys.readouterr().err


# The base install (`pip install edgefleet`) has grpcio and protobuf only. This runs the real entry
# point with every platform package made unimportable, as they are there.
BASE_INSTALL = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder

    class NotInstalled(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"rich", "pydantic", "yaml", "ray", "torch", "transformers", "mlflow"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NotInstalled())
    from edgefleet.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _base_install(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BASE_INSTALL, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_the_base_install_runs_generate_and_names_the_extra_for_platform_commands():
    generate = _base_install("generate", "hi", "--timeout", "2", "--target", "127.0.0.1:1")
    up = _base_install("up", "-c", "fleet.yaml")
    status = _base_install("--json", "status")
    ver = _base_install("--version")

    assert generate.returncode == 2 and "UNAVAILABLE" in generate.stderr and "Traceback" not in generate.stderr
    for out, command in ((up, "up"), (status, "status")):
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip().splitlines() == [
            f"error: `edgefleet {command}` needs the platform extra (rich is missing): "
            "install edgefleet with its [platform] extra (in a clone: make setup; see the README's Install)"
        ]
    assert ver.returncode == 0 and ver.stdout.startswith("edgefleet ")


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "hi", "--address", "ray://h:10001"],
        ["auth", "new", "--config", "fleet.yaml"],
    ],
)
def test_global_options_a_command_does_not_use_are_refused_not_ignored(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2 and "not used by `edgefleet" in capsys.readouterr().err


def test_a_partial_install_names_the_extra_instead_of_a_traceback():
    # rich, pydantic and yaml are common in any environment; Ray and torch are imported by the command
    partial = BASE_INSTALL.replace('"rich", "pydantic", "yaml", ', "")
    out = subprocess.run(
        [sys.executable, "-c", partial, "train", "local", "--node", "edge-1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-500:]
    assert "needs the platform extra" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_generate_connects_to_the_fleet_its_config_describes(write_config, capsys):
    path = write_config({"ports": {"grpc": 1}})  # nothing listens there: the error names the address tried

    assert main(["-c", str(path), "generate", "hi", "--timeout", "2"]) == 2
    assert "127.0.0.1:1" in capsys.readouterr().err
    assert main(["-c", str(path), "generate", "hi", "--timeout", "2", "--target", "127.0.0.1:2"]) == 2
    assert "127.0.0.1:2" in capsys.readouterr().err  # --target wins


def test_a_base_install_with_edgefleet_config_set_still_generates(tmp_path):
    # The variable is ambient (a shell profile): the SDK-only install cannot read YAML, and says so.
    config = tmp_path / "fleet.yaml"
    config.write_text("ports: {grpc: 1}\n")
    out = _base_install("generate", "hi", "--timeout", "2", env={CONFIG_ENV: str(config)})

    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "note: $EDGEFLEET_CONFIG not used" in out.stderr and "127.0.0.1:9000" in out.stderr


def test_generate_trusts_the_config_certificate_from_the_config_folder(write_config, capsys):
    path = write_config({"ports": {"grpc": 1}, "auth": {"tls_cert": "tls/cert.pem", "tls_key": "tls/key.pem"}})

    assert main(["-c", str(path), "generate", "hi", "--timeout", "2", "--target", "127.0.0.1:2"]) == 2
    err = capsys.readouterr().err  # the certificate is looked for beside the config, and named as the config's
    assert f"auth.tls_cert of {path}" in err and str(path.parent / "tls" / "cert.pem") in err
