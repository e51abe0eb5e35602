"""`make deploy`'s Python steps (ws_handlers.ops.deploy) against moto's AWS: the
prerequisite check (the account's Lambda concurrency included), the OpenAI key (from stdin,
a file or a hidden prompt, never argv, never printed) and the outputs the oTree server needs.
No real AWS: there is no account. moto does not implement lambda:GetAccountSettings, so that one
response comes from botocore's Stubber on a real boto3 client handed to the check."""

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
from botocore.stub import Stubber
from moto import mock_aws

from ws_handlers.ops import deploy
from ws_handlers.ops.template import read_template

ROOT = Path(__file__).resolve().parents[3]
KEY = "sk-test-0123456789abcdefDEADBEEF"
URL = "wss://abc123.execute-api.us-east-1.amazonaws.com/prod"


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def lambda_account(limit: int = 1000, unreserved: int | None = None, refused: str | None = None):
    """A real boto3 Lambda client whose one GetAccountSettings answers with this quota (or the
    error code `refused`): the only AWS response moto cannot give."""
    client = boto3.client("lambda", region_name="us-east-1", aws_access_key_id="stub", aws_secret_access_key="stub")
    stubber = Stubber(client)
    if refused:
        stubber.add_client_error("get_account_settings", service_error_code=refused, http_status_code=403)
    else:
        stubber.add_response("get_account_settings", {
            "AccountLimit": {"ConcurrentExecutions": limit, "UnreservedConcurrentExecutions": (
                limit if unreserved is None else unreserved), "TotalCodeSize": 80530636800,
                "CodeSizeUnzipped": 262144000, "CodeSizeZipped": 52428800},
            "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": 0},
        })
    stubber.activate()
    return client


@pytest.fixture
def run(capsys):
    """main(argv, stdin) in this process: (exit code, stdout, stderr). `check` gets a Lambda
    client answering with `account` (default: a 1,000-execution account with nothing reserved)."""

    def call(*argv: str, stdin: str = "", account=None) -> tuple[int, str, str]:
        capsys.readouterr()
        client = (account or lambda_account()) if argv[0] == "check" else None
        code = deploy.main(list(argv), stdin=io.StringIO(stdin), lambda_client=client)
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


# ------------------------------------------------------------------------------ concurrency: will Lambda accept it?


def _template(reply_reserves: bool) -> dict:
    """A template shaped like template.yaml where it matters here: MessageProvisionedConcurrency on
    the message function, ReplyProvisionedConcurrency on the reply function, which either reserves
    LlmConcurrency (an earlier template) or is capped by an SQS event source mapping's
    MaximumConcurrency (2 to 1000, today's), which reserves nothing."""
    def provisioned(parameter: str, condition: str) -> dict:
        return {"AutoPublishAlias": "live", "ProvisionedConcurrencyConfig": {"Fn::If": [
            condition, {"ProvisionedConcurrentExecutions": {"Ref": parameter}}, {"Ref": "AWS::NoValue"}]}}

    def on(parameter: str) -> dict:
        return {"Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, "0"]}]}

    reply = {"Handler": "ws_handlers.reply.handler", **provisioned("ReplyProvisionedConcurrency", "ProvisionReply")}
    llm = {"Type": "Number", "Default": 50, "MinValue": 2, "MaxValue": 1000}
    conditions = {"Provision": on("MessageProvisionedConcurrency"), "ProvisionReply": on("ReplyProvisionedConcurrency")}
    if reply_reserves:
        llm = {"Type": "Number", "Default": 50, "MinValue": -1}
        conditions["Reserve"] = {"Fn::Not": [{"Fn::Or": [{"Fn::Equals": [{"Ref": "LlmConcurrency"}, "0"]},
                                                         {"Fn::Equals": [{"Ref": "LlmConcurrency"}, "-1"]}]}]}
        reply["ReservedConcurrentExecutions"] = {"Fn::If": ["Reserve", {"Ref": "LlmConcurrency"},
                                                            {"Ref": "AWS::NoValue"}]}
    return {
        "Parameters": {"LlmConcurrency": llm, "MessageProvisionedConcurrency": {"Type": "Number", "Default": 0},
                       "ReplyProvisionedConcurrency": {"Type": "Number", "Default": 0, "MinValue": 0},
                       "AllowedOrigins": {"Type": "String", "Default": ""}},
        "Conditions": conditions,
        "Resources": {
            "MessageFunction": {"Type": "AWS::Serverless::Function", "Properties": {
                "Handler": "ws_handlers.message.handler",
                **provisioned("MessageProvisionedConcurrency", "Provision")}},
            "ReplyFunction": {"Type": "AWS::Serverless::Function", "Properties": reply},
            "Queue": {"Type": "AWS::SQS::Queue"},  # moto creates no Serverless resources: one it knows
        },
    }


RESERVING, QUEUED = _template(reply_reserves=True), _template(reply_reserves=False)


def saved(tmp_path: Path, overrides: str | None, region: str = "eu-west-1", stack: str = "study1") -> Path:
    """samconfig.local.toml as a guided deploy leaves it: stack, region, and the parameters."""
    config = tmp_path / "samconfig.local.toml"
    lines = ["version = 0.1", "[default.deploy.parameters]", f'stack_name = "{stack}"', f'region = "{region}"']
    if overrides is not None:
        lines.append(f"parameter_overrides = {json.dumps(overrides)}")
    config.write_text("\n".join(lines) + "\n")
    return config


def template_file(tmp_path: Path, document: dict) -> str:
    path = tmp_path / "template.json"
    path.write_text(json.dumps(document))
    return str(path)


@mock_aws
def test_a_deploy_that_would_leave_fewer_than_100_unreserved_stops_with_the_quota_to_request(run, sam, tmp_path):
    config = saved(tmp_path, 'MessageProvisionedConcurrency="20" LlmConcurrency="50" AllowedOrigins="https://a.b"')
    argv = ("check", "--sam", sam, "--config", str(config), "--template", template_file(tmp_path, RESERVING))
    code, out, err = run(*argv, account=lambda_account(limit=50))  # a new account's quota
    assert code == 1
    line = one_line_error(err)
    assert "this deploy reserves 70 concurrent executions (MessageFunction 20 provisioned, ReplyFunction 50 " \
           "reserved), but the account has 50 in eu-west-1, 50 unreserved, and Lambda keeps 100 unreserved: at " \
           "most 0 can be reserved, so CloudFormation would fail" in line
    assert "Lower MessageProvisionedConcurrency or LlmConcurrency (make deploy GUIDED=1)" in line
    assert ('"Concurrent executions" (L-B99A9384): aws service-quotas request-service-quota-increase '
            "--service-code lambda --quota-code L-B99A9384 --desired-value 1000 --region eu-west-1") in line
    assert "ok  stack study1: not deployed yet" in out and "Lambda concurrency" not in out

    code, out, err = run(*argv, account=lambda_account(limit=1000, unreserved=160))  # others reserve 840
    assert code == 1 and "at most 60 can be reserved" in one_line_error(err)
    code, out, err = run(*argv, account=lambda_account(limit=1000, unreserved=250))
    assert (code, err) == (0, "")
    assert ("ok  Lambda concurrency in eu-west-1: 1,000 executions, 250 unreserved; this deploy reserves 70 "
            "(MessageFunction 20 provisioned, ReplyFunction 50 reserved): 180 stay unreserved (Lambda keeps 100)") in out


@mock_aws
def test_with_the_reply_function_on_a_queue_only_provisioned_concurrency_reserves(run, sam, tmp_path):
    """The check reads what the template reserves: when LlmConcurrency becomes a queue's
    MaximumConcurrency, the same parameters reserve only the provisioned environments."""
    config = saved(tmp_path, 'MessageProvisionedConcurrency="20" LlmConcurrency="50"')
    argv = ("check", "--sam", sam, "--config", str(config), "--template", template_file(tmp_path, QUEUED))
    code, out, err = run(*argv, account=lambda_account(limit=1000, unreserved=130))
    assert (code, err) == (0, "")
    assert "this deploy reserves 20 (MessageFunction 20 provisioned): 110 stay unreserved" in out
    config = saved(tmp_path, 'MessageProvisionedConcurrency="0"')
    code, out, err = run(*argv[:3], "--config", str(config), *argv[5:], account=lambda_account(limit=10))
    assert code == 0 and "this deploy reserves 0 (nothing): 10 stay unreserved" in out  # nothing to refuse


@mock_aws
def test_provisioned_reply_environments_count_as_the_message_functions_do(run, sam, tmp_path):
    """template.yaml itself: ReplyProvisionedConcurrency takes from the account's unreserved
    concurrency beside MessageProvisionedConcurrency, and a refusal names both to lower."""
    config = saved(tmp_path, 'MessageProvisionedConcurrency="20" ReplyProvisionedConcurrency="30" LlmConcurrency="50"')
    argv = ("check", "--sam", sam, "--config", str(config), "--template", str(ROOT / "template.yaml"))
    code, out, err = run(*argv, account=lambda_account(limit=1000, unreserved=160))
    assert (code, err) == (0, "")
    assert ("this deploy reserves 50 (MessageFunction 20 provisioned, ReplyFunction 30 provisioned): 110 stay "
            "unreserved (Lambda keeps 100)") in out
    assert "warn  " not in out
    code, out, err = run(*argv, account=lambda_account(limit=1000, unreserved=140))
    line = one_line_error(err)
    assert code == 1 and "at most 40 can be reserved" in line
    assert "Lower MessageProvisionedConcurrency or ReplyProvisionedConcurrency (make deploy GUIDED=1)" in line
    saved(tmp_path, 'ReplyProvisionedConcurrency="60" LlmConcurrency="50"')  # the same file, rewritten
    code, out, err = run(*argv, account=lambda_account(limit=1000, unreserved=130))
    line = one_line_error(err)
    assert code == 1 and "this deploy reserves 60 concurrent executions (ReplyFunction 60 provisioned)" in line
    assert "Lower ReplyProvisionedConcurrency (make deploy GUIDED=1)" in line


@mock_aws
def test_provisioned_reply_environments_beyond_llm_concurrency_are_warned_not_stopped(run, sam, tmp_path):
    config = saved(tmp_path, 'ReplyProvisionedConcurrency="60" LlmConcurrency="50"')
    argv = ("check", "--sam", sam, "--config", str(config), "--template", template_file(tmp_path, QUEUED))
    code, out, err = run(*argv)
    assert (code, err) == (0, "")
    assert "this deploy reserves 60 (ReplyFunction 60 provisioned): 940 stay unreserved" in out
    (warning,) = [line for line in out.splitlines() if line.startswith("warn  ")]
    assert ("ReplyProvisionedConcurrency (60) exceeds LlmConcurrency (50): the reply queue never runs more than "
            "LlmConcurrency replies at once, so 10 provisioned reply environments are billed by the hour and never "
            "needed") in warning
    code, out, err = run(*argv, account=lambda_account(refused="AccessDeniedException"))
    assert code == 0 and "ReplyProvisionedConcurrency (60) exceeds LlmConcurrency (50)" in out  # without the quota too
    saved(tmp_path, 'ReplyProvisionedConcurrency="50" LlmConcurrency="50"')  # the same file, rewritten
    code, out, err = run(*argv)
    assert (code, err) == (0, "") and "warn  " not in out  # exactly LlmConcurrency: every one can be used


@mock_aws
def test_an_account_below_llm_concurrency_plus_headroom_is_warned_not_stopped(run, sam, tmp_path):
    config = saved(tmp_path, 'LlmConcurrency="50"')
    code, out, err = run("check", "--sam", sam, "--config", str(config), "--template", template_file(tmp_path, QUEUED),
                         account=lambda_account(limit=120))
    assert (code, err) == (0, "")
    (warning,) = [line for line in out.splitlines() if line.startswith("warn  ")]
    assert ("the account runs at most 120 Lambda executions at once in eu-west-1, fewer than LlmConcurrency (50) "
            "replies plus 100 for the connect, message and disconnect functions") in warning
    assert "--quota-code L-B99A9384 --desired-value 1000 --region eu-west-1" in warning


#: moto creates the stack without the AWS::Serverless resources it cannot build (their template is what counts).
MOTO_SKIPS_SAM_RESOURCES = pytest.mark.filterwarnings("ignore:Tried to parse AWS..Serverless..Function:UserWarning")


def _stack(template: dict, name: str = "study1", **parameters: str) -> None:
    boto3.client("cloudformation", region_name="eu-west-1").create_stack(
        StackName=name, TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()])


@MOTO_SKIPS_SAM_RESOURCES
@mock_aws
def test_a_stack_update_gives_back_what_the_stack_reserves_now(run, sam, tmp_path):
    """The stack's deployed template and parameters say what it holds (here: its reply function's
    50 reserved); the update releases that before it reserves again. Parameters the overrides do
    not name keep the stack's values, as sam passes them (UsePreviousValue)."""
    _stack(RESERVING, LlmConcurrency="50", MessageProvisionedConcurrency="30")
    config = saved(tmp_path, 'LlmConcurrency="50"')  # MessageProvisionedConcurrency: the stack's 30
    argv = ("check", "--sam", sam, "--config", str(config), "--template", template_file(tmp_path, RESERVING))
    code, out, err = run(*argv, account=lambda_account(limit=1000, unreserved=180))  # 80 held by this stack
    assert (code, err) == (0, "")
    assert ("this deploy reserves 80 (MessageFunction 30 provisioned, ReplyFunction 50 reserved), gives back 80: "
            "180 stay unreserved") in out
    config = saved(tmp_path, 'LlmConcurrency="50" MessageProvisionedConcurrency="120"')
    code, _, err = run(*argv[:3], "--config", str(config), *argv[5:], account=lambda_account(limit=1000, unreserved=180))
    assert code == 1 and "80 of them given back by the stack's update" in one_line_error(err)
    assert "at most 160 can be reserved" in err  # 180 + 80 - 100

    config = saved(tmp_path, 'LlmConcurrency="50" MessageProvisionedConcurrency="100"')  # onto the queue template
    code, out, err = run("check", "--sam", sam, "--config", str(config), "--template", template_file(tmp_path, QUEUED),
                         account=lambda_account(limit=1000, unreserved=120))
    assert (code, err) == (0, "")
    assert "reserves 100 (MessageFunction 100 provisioned), gives back 80: 100 stay unreserved" in out


@mock_aws
def test_a_guided_deploy_is_warned_since_its_parameters_are_still_to_be_answered(run, sam, tmp_path):
    template = template_file(tmp_path, RESERVING)
    code, out, err = run("check", "--sam", sam, "--stack", "study1", "--template", template,
                         account=lambda_account(limit=10))  # a first deploy: nothing saved yet
    assert (code, err) == (0, "")
    assert "warn  this deploy reserves 50 concurrent executions (ReplyFunction 50 reserved)" in out
    assert "when sam asks, lower LlmConcurrency (0 reserves nothing)" in out  # what reserves, here only it
    config = saved(tmp_path, 'LlmConcurrency="50"')
    code, out, err = run("check", "--sam", sam, "--config", str(config), "--template", template, "--guided",
                         account=lambda_account(limit=10))  # make deploy GUIDED=1
    assert code == 0 and "warn  this deploy reserves 50" in out


@mock_aws
def test_credentials_that_may_not_read_the_quota_skip_the_concurrency_check(run, sam):
    code, out, err = run("check", "--sam", sam, account=lambda_account(refused="AccessDeniedException"))
    assert (code, err) == (0, "")
    assert "warn  these credentials may not read Lambda's concurrency quota in us-east-1" in out


@MOTO_SKIPS_SAM_RESOURCES
@mock_aws
def test_a_removed_allowlist_parameter_is_not_dropped_silently(run, sam, tmp_path):
    old = RESERVING | {"Parameters": RESERVING["Parameters"] | {"ParticipantAllowlist": {"Type": "String"}}}
    _stack(old, LlmConcurrency="50", ParticipantAllowlist="P1,P2")
    config = saved(tmp_path, 'LlmConcurrency="50" ParticipantAllowlist="P1,P2"')
    code, out, _ = run("check", "--sam", sam, "--config", str(config), "--template", template_file(tmp_path, RESERVING))
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warn  ")]
    assert any("samconfig sets ParticipantAllowlist, which template.yaml does not declare: sam ignores it; "
               "allowlists live in the chats table now: chat-ops allowlist add --stack study1" in w for w in warnings)
    assert any("stack study1 uses ParticipantAllowlist='P1,P2', which this deploy removes" in w for w in warnings)


@MOTO_SKIPS_SAM_RESOURCES
@mock_aws
def test_parameters_the_new_template_refuses_stop_the_deploy_before_the_build(run, sam, tmp_path):
    """A stack deployed with LlmConcurrency 0 (unreserved) keeps it on update (sam's UsePreviousValue),
    but a template whose LlmConcurrency is a queue's MaximumConcurrency (2 to 1000) refuses 0."""
    _stack(RESERVING, LlmConcurrency="0")
    config = saved(tmp_path, 'AllowedOrigins="https://a.example"')
    argv = ("check", "--sam", sam, "--config", str(config), "--template", template_file(tmp_path, QUEUED))
    code, _, err = run(*argv)
    assert code == 2
    assert ("the deploy's parameters (saved in samconfig, else the stack's) are refused by template.yaml: "
            "Parameters.LlmConcurrency: 0 is outside [MinValue, MaxValue]") in one_line_error(err)
    code, out, err = run(*argv, "--guided")
    assert (code, err) == (0, "") and "warn  the saved parameters are refused by template.yaml" in out
    config = saved(tmp_path, 'AllowedOrigins="https://a.example')  # a quote left open
    code, _, err = run(*argv[:3], "--config", str(config), *argv[5:])
    assert code == 2 and "samconfig's parameter_overrides cannot be read (No closing quotation)" in one_line_error(err)


@pytest.mark.parametrize("overrides, expected", [
    ('Stage="prod" AllowedOrigins="https://a.example https://b.example" LlmConcurrency=5',
     {"Stage": "prod", "AllowedOrigins": "https://a.example https://b.example", "LlmConcurrency": "5"}),
    ("ParameterKey=LlmConcurrency,ParameterValue=7 ParameterKey=AllowedOrigins,ParameterValue=",
     {"LlmConcurrency": "7", "AllowedOrigins": ""}),
    (["LlmConcurrency=3", 'AlarmEmail="a@b.c"'], {"LlmConcurrency": "3", "AlarmEmail": "a@b.c"}),
    ({"LlmConcurrency": 4}, {"LlmConcurrency": "4"}),
])
def test_the_parameter_overrides_sam_saves_are_read_in_each_of_its_formats(overrides, expected):
    from ws_handlers.ops.preflight import saved_overrides

    assert saved_overrides({"parameter_overrides": overrides}) == expected
    assert saved_overrides({}) is None


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
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout == "wss://x/it's"


def test_outputs_of_a_stack_that_is_not_ours(run):
    with mock_aws():
        boto3.client("cloudformation").create_stack(StackName="other", TemplateBody=json.dumps(
            {"Resources": {"Queue": {"Type": "AWS::SQS::Queue"}}}))
        code, _, err = run("outputs", "--stack", "other")
    assert code == 1 and "is it this service's stack" in one_line_error(err)
