"""Static checks by outside tools: checkov and trivy find no failed check in the
Terraform modules (a skipped one says why, inline), and shellcheck finds nothing in
any shell script of the repository."""

import json
import re
import shutil
import subprocess

from infra_tools import REPO, TERRAFORM, checkov, shell_scripts, shellcheck, terraform_files, trivy


def test_checkov_finds_no_failed_check():
    result = subprocess.run(
        # --skip-download: no network; the checks ship with checkov.
        [checkov(), "--directory", TERRAFORM, "--framework", "terraform", "--skip-download", "--output", "json", "--compact"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    results = report["results"]
    summary = report["summary"]
    failed = [f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"
              for check in results.get("failed_checks", [])]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0
    # It really looked at the sealed host and the pool, not at an empty directory.
    checked = {(check["file_path"].lstrip("/"), check["resource"].split(".")[-2]) for check in results["passed_checks"]}
    assert {("main.tf", "aws_instance"), ("main.tf", "aws_ebs_volume"), ("main.tf", "aws_security_group")} <= checked, checked
    assert {("modules/pool/main.tf", kind) for kind in ("aws_launch_template", "aws_autoscaling_group", "aws_lb",
                                                        "aws_lb_target_group", "aws_security_group")} <= checked, checked
    assert summary["passed"] >= 40
    for check in results.get("skipped_checks", []):
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} is skipped without a reason"


# What the examples need beyond their defaults for trivy to evaluate every module call
# (examples/pool builds the pool only once it has a snapshot).
TRIVY_VARIABLES = 'secrets_snapshot_id = "snap-0123456789abcdef0"\nexpected_fingerprint = "0123456789abcdef0123456789abcdef"\n'


def trivy_findings(directory, tmp_path):
    """trivy's HIGH and CRITICAL misconfigurations in `directory`, scanned offline
    with the checks built into the binary, as "ID file:line title" lines."""
    variables = tmp_path / "trivy.tfvars"
    variables.write_text(TRIVY_VARIABLES)
    result = subprocess.run(
        [trivy(), "config", "--quiet", "--skip-check-update", "--cache-dir", REPO / "target" / "trivy-cache",
         "--misconfig-scanners", "terraform", "--tf-vars", variables, "--severity", "HIGH,CRITICAL",
         "--format", "json", directory],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    return [f"{finding['ID']} {finding['CauseMetadata'].get('Resource')} {target['Target']}:"
            f"{finding['CauseMetadata'].get('StartLine')} {finding['Title']}"
            for target in report.get("Results", [])
            for finding in target.get("Misconfigurations") or []
            if finding["Status"] == "FAIL"], report


def test_trivy_finds_no_high_or_critical_misconfiguration(tmp_path):
    findings, report = trivy_findings(TERRAFORM, tmp_path)
    assert not findings, "trivy's findings:\n" + "\n".join(findings)
    scanned = {target["Target"] for target in report["Results"]}
    assert {"examples/basic", "examples/complete", "examples/pool"} <= scanned, scanned
    # A finding may only be ignored inline, with its reason on the same line.
    for path in terraform_files():
        for line in path.read_text().splitlines():
            match = re.search(r"trivy:ignore:(\S+)(.*)", line)
            assert not match or len(match.group(2).strip(" :-")) > 20, f"{path}: {match.group(1)} is ignored without a reason"


def test_trivy_sees_a_weakened_pool(tmp_path):
    """The scan reaches the pool's launch template through examples/pool: the same
    files with IMDSv1 allowed fail it."""
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy, ignore=shutil.ignore_patterns(".terraform"))
    pool = copy / "modules" / "pool" / "main.tf"
    source = pool.read_text()
    assert source.count('http_tokens                 = "required"') == 1
    pool.write_text(source.replace('http_tokens                 = "required"', 'http_tokens                 = "optional"'))
    findings, _ = trivy_findings(copy, tmp_path)
    assert any("modules/pool/main.tf" in finding and "session tokens" in finding for finding in findings), findings


def test_every_shell_script_is_shellcheck_clean():
    scripts = shell_scripts()
    names = {path.relative_to(REPO).as_posix() for path in scripts}
    assert {"deploy/cryptoserver-secrets-setup.sh", "deploy/install.sh", "packer/close-doors.sh",
            "packer/remove-build-access.sh"} <= names, names
    result = subprocess.run([shellcheck(), "--external-sources", *scripts], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
