"""`make deploy`'s Python steps (ws_handlers.ops.deploy) against moto's AWS: the
prerequisite check, the OpenAI key (from stdin, a file or a hidden prompt, never argv,
never printed) and the outputs the oTree server needs. No real AWS: there is no account."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from local_gateway.template import read_template
from ws_handlers.ops import deploy

ROOT = Path(__file__).resolve().parents[3]
KEY = "sk-test-0123456789abcdefDEADBEEF"
URL = "wss://abc123.execute-api.us-east-1.amazonaws.com/prod"


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def run(capsys):
    """main(argv, stdin) in this process: (exit code, stdout, stderr)."""

    def call(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        capsys.readouterr()
        code = deploy.main(list(argv), stdin=io.StringIO(stdin))
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.fixture
def sam(tmp_path: Path) -> str:
    """An executable named like the SAM CLI (the check only looks for it; nothing runs it)."""
    path = tmp_path / "sam"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def no_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment with no AWS credentials or region anywhere (and no metadata service)."""
    (tmp_path / "empty").write_text("")
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    empty = str(tmp_path / "empty")
    for name, value in {"AWS_CONFIG_FILE": empty, "AWS_SHARED_CREDENTIALS_FILE": empty,
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


# ------------------------------------------------------------------------------ check


def test_check_without_credentials_says_so_in_one_line(no_aws, sam):
    done = subprocess.run([sys.executable, "-m", "ws_handlers.ops.deploy", "check", "--sam", sam],
                          cwd=ROOT, env=no_aws, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "no AWS credentials found" in one_line_error(done.stderr)
    assert done.stdout == ""


def test_make_deploy_stops_at_the_check_without_credentials(no_aws):
    """The real make target: nothing is built or deployed, one clear line, a failing status.
    -o keeps make from (re)installing the virtual environments: no network."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    (sam_version,) = re.findall(r"^SAM_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    env = {k: v for k, v in no_aws.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # not a sub-make of ours
    done = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", "-o",
                           f".venv-sam/.installed-{sam_version}", "deploy"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "error: no AWS credentials found: run `aws configure`" in done.stderr
    assert "Traceback" not in done.stderr
    assert "sam build" not in done.stdout + done.stderr and "Building" not in done.stdout


def test_check_without_a_region(no_aws, monkeypatch, run, sam):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    code, _, err = run("check", "--sam", sam)
    assert code == 1 and "no AWS region chosen" in one_line_error(err)


@mock_aws
def test_check_passes_with_credentials(run, sam):
    code, out, err = run("check", "--sam", sam, "--stack", "study1")
    assert (code, err) == (0, "")
    assert "ok  AWS credentials: arn:aws:sts::123456789012:" in out  # moto's account
    assert "ok  region: us-east-1 (from $AWS_DEFAULT_REGION)" in out
    assert f"ok  SAM CLI: {sam}" in out
    assert "ok  stack study1: not deployed yet" in out


@mock_aws
def test_check_without_sam(run):
    code, _, err = run("check", "--sam", "/nonexistent/sam")
    assert code == 1 and "SAM CLI was not found" in one_line_error(err)


@mock_aws
def test_check_reads_a_key_file_without_showing_it(run, sam, tmp_path):
    good, bad = tmp_path / "key", tmp_path / "bad"
    good.write_text(KEY + "\n")
    bad.write_text(f"{KEY} {KEY}\n")
    code, out, err = run("check", "--sam", sam, "--from-file", str(good))
    assert code == 0 and f"ok  OpenAI key file: {good}" in out
    code, out, err = run("check", "--sam", sam, "--from-file", str(bad))
    assert code == 2 and "whitespace" in one_line_error(err)
    assert KEY not in out + err


@mock_aws
def test_the_region_and_stack_saved_by_a_guided_deploy_are_used(run, sam, tmp_path):
    config = tmp_path / "samconfig.local.toml"
    config.write_text('version = 0.1\n[study2.deploy.parameters]\nstack_name = "llm-chat-study2"\n'
                      'region = "eu-west-1"\n')
    code, out, err = run("check", "--sam", sam, "--config", str(config), "--config-env", "study2")
    assert code == 0, err
    assert f"ok  region: eu-west-1 (from {config} [study2])" in out
    assert "ok  stack llm-chat-study2: not deployed yet" in out
    code, out, _ = run("check", "--sam", sam, "--config", str(config), "--config-env", "study2", "--region", "us-east-1")
    assert "ok  region: us-east-1 (from --region)" in out


def test_a_broken_config_file_is_named(run, sam, tmp_path):
    config = tmp_path / "samconfig.local.toml"
    config.write_text("[default.deploy.parameters\n")
    code, _, err = run("guided-flag", "--config", str(config))
    assert code == 2 and str(config) in one_line_error(err)


# ------------------------------------------------------------------------------ guided or not


def test_the_committed_samconfig_is_shared_defaults_only():
    text = (ROOT / "samconfig.toml").read_text()
    deploy_parameters = tomllib.loads(text)["default"]["deploy"]["parameters"]
    assert deploy_parameters["capabilities"] == "CAPABILITY_IAM"
    assert deploy_parameters["resolve_s3"] is True and deploy_parameters["confirm_changeset"] is True
    assert deploy_parameters["stack_name"]
    for account_specific in ("region", "s3_bucket", "parameter_overrides", "profile"):
        assert account_specific not in deploy_parameters
    assert "samconfig.local.toml" in (ROOT / ".gitignore").read_text().splitlines()


def test_guided_until_a_deploy_saved_its_answers(run, tmp_path):
    config = tmp_path / "samconfig.local.toml"
    assert run("guided-flag", "--config", str(config))[1] == "--guided\n"  # no file yet
    shutil.copy(ROOT / "samconfig.toml", config)  # what make deploy starts from
    assert run("guided-flag", "--config", str(config))[1] == "--guided\n"
    with config.open("a") as f:  # what `sam deploy --guided` adds
        f.write('\n[default.global.parameters]\nregion = "eu-central-1"\n')
    assert run("guided-flag", "--config", str(config))[1] == ""
    assert run("guided-flag", "--config", str(config), "--config-env", "study2")[1] == "--guided\n"


# ------------------------------------------------------------------------------ a deployed stack, in moto

STACK_TEMPLATE = {
    "Parameters": {"AllowedOrigins": {"Type": "String", "Default": ""}},
    "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},  # a stack needs one resource
}


@pytest.fixture
def cfn_stack():
    """A stack named `study1` whose outputs are the service's, and its two secrets."""
    with mock_aws():
        secrets = boto3.client("secretsmanager")
        key = secrets.create_secret(Name="study1-OpenAIKeySecret", SecretString=deploy.PLACEHOLDER)["ARN"]
        ticket = secrets.create_secret(Name="study1-TicketSecret", SecretString="generated-in-aws")["ARN"]
        outputs = {"WebSocketUrl": URL, "TicketSecretArn": ticket, "OpenAIKeySecretArn": key,
                   "ChatsTableName": "study1-ChatsTable-ABC", "ConnectionsTableName": "study1-ConnectionsTable-DEF",
                   "ExperimentServerPolicyArn": "arn:aws:iam::123456789012:policy/study1-ExperimentServerPolicy-XYZ"}
        template = STACK_TEMPLATE | {"Outputs": {k: {"Value": v} for k, v in outputs.items()}}

        def create(name: str = "study1", origins: str = "") -> None:
            boto3.client("cloudformation").create_stack(
                StackName=name, TemplateBody=json.dumps(template),
                Parameters=[{"ParameterKey": "AllowedOrigins", "ParameterValue": origins}],
            )

        yield {"create": create, "key_arn": key, "ticket_arn": ticket, "outputs": outputs}


def secret_value(arn: str) -> str:
    return boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]


def test_the_placeholder_is_the_templates():
    template = read_template(ROOT / "template.yaml")
    assert template["Resources"]["OpenAIKeySecret"]["Properties"]["SecretString"] == deploy.PLACEHOLDER


def test_put_openai_key_replaces_the_placeholder_from_stdin(cfn_stack, run):
    cfn_stack["create"]()
    argv = ("put-openai-key", "--stack", "study1")
    code, out, err = run(*argv, stdin=KEY + "\n")
    assert (code, err) == (0, "")
    assert out == f"ok  OpenAI key stored in {cfn_stack['key_arn']}\n"
    assert secret_value(cfn_stack["key_arn"]) == KEY
    assert KEY not in " ".join(argv)


def test_put_openai_key_reads_a_file(cfn_stack, run, tmp_path):
    cfn_stack["create"]()
    path = tmp_path / "openai-key.txt"
    path.write_text(f"  {KEY}\r\n")
    code, out, err = run("put-openai-key", "--stack", "study1", "--from-file", str(path))
    assert code == 0 and secret_value(cfn_stack["key_arn"]) == KEY
    assert KEY not in out + err


@pytest.mark.parametrize(("given", "says"), [("", "empty"), ("\n  \n", "empty"), (f"{KEY} {KEY}", "whitespace"),
                                             ("sk-\x07bell", "characters"), (deploy.PLACEHOLDER, "placeholder")])
def test_put_openai_key_refuses_what_cannot_be_a_key(cfn_stack, run, given, says):
    cfn_stack["create"]()
    code, out, err = run("put-openai-key", "--stack", "study1", stdin=given)
    assert code == 2
    line = one_line_error(err)
    assert says in line and "nothing was stored" in line
    assert secret_value(cfn_stack["key_arn"]) == deploy.PLACEHOLDER
    assert KEY not in out + err and (not given.strip() or given.strip() not in out + err)


def test_a_real_key_is_kept_unless_replace_is_given(cfn_stack, run):
    cfn_stack["create"]()
    assert run("put-openai-key", "--stack", "study1", stdin=KEY)[0] == 0
    other = "sk-other-key-9876543210"
    code, out, err = run("put-openai-key", "--stack", "study1", stdin=other)
    assert code == 0 and "already set" in out and "--replace" in out
    assert secret_value(cfn_stack["key_arn"]) == KEY
    code, out, err = run("put-openai-key", "--stack", "study1", "--replace", stdin=other)
    assert code == 0 and secret_value(cfn_stack["key_arn"]) == other
    assert KEY not in out + err and other not in out + err


def test_the_key_is_asked_with_a_hidden_prompt_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    asked = []
    key = deploy.read_key(None, Terminal("typed where it would be echoed"), lambda p: asked.append(p) or KEY)
    assert key == KEY and asked == ["OpenAI API key (input hidden, Enter to finish): "]


def test_put_openai_key_without_the_stack(cfn_stack, run):
    code, _, err = run("put-openai-key", "--stack", "nope", stdin=KEY)
    assert code == 1 and "no stack 'nope' in us-east-1" in one_line_error(err)
    code, _, err = run("put-openai-key", stdin=KEY)
    assert code == 2 and "which stack?" in one_line_error(err)


def test_outputs_give_the_otree_server_its_settings(cfn_stack, run):
    cfn_stack["create"]()
    code, out, err = run("outputs", "--stack", "study1")
    assert (code, err) == (0, "")
    assert f"WebSocket URL:       {URL}" in out
    assert f"export CHAT_WS_URL={URL}" in out
    assert (f'export CHAT_TICKET_SECRET="$(aws secretsmanager get-secret-value --region us-east-1 '
            f'--secret-id {cfn_stack["ticket_arn"]} --query SecretString --output text)"') in out
    assert "export CHAT_STORE=dynamodb:study1-ChatsTable-ABC" in out
    assert "export AWS_REGION=us-east-1" in out
    assert cfn_stack["outputs"]["ExperimentServerPolicyArn"] in out
    assert "AllowedOrigins is empty" in out
    assert ".venv/bin/chat-ops status --stack study1 --region us-east-1" in out
    assert "generated-in-aws" not in out  # the secret's value is read on the oTree server, never printed here


def test_outputs_show_the_allowed_origins(cfn_stack, run):
    cfn_stack["create"](origins="https://study.example.org")
    code, out, _ = run("outputs", "--stack", "study1")
    assert code == 0 and "AllowedOrigins: https://study.example.org" in out


def test_the_export_lines_run_in_a_shell(cfn_stack):
    """The printed lines are valid shell, quoting included (the secret command is not run here)."""
    lines = deploy.otree_environment(cfn_stack["outputs"] | {"WebSocketUrl": "wss://x/it's"}, "eu-west-1")
    script = "\n".join(line for line in lines if "CHAT_TICKET_SECRET" not in line) + '\nprintf %s "$CHAT_WS_URL"'
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10, check=False)
    assert done.stdout == "wss://x/it's"


def test_outputs_of_a_stack_that_is_not_ours(run):
    with mock_aws():
        boto3.client("cloudformation").create_stack(StackName="other", TemplateBody=json.dumps(
            {"Resources": {"Queue": {"Type": "AWS::SQS::Queue"}}}))
        code, _, err = run("outputs", "--stack", "other")
    assert code == 1 and "is it this service's stack" in one_line_error(err)
