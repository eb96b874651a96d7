"""Static checks by outside tools: checkov finds no failed check in the Terraform
module (a skipped one says why, inline), and shellcheck finds nothing in any shell
script of the repository."""

import json
import subprocess

from infra_tools import REPO, TERRAFORM, checkov, shell_scripts, shellcheck


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
    # It really looked at the sealed host, not at an empty directory.
    checked = {check["resource"].split(".")[-2] for check in results["passed_checks"]}
    assert {"aws_instance", "aws_ebs_volume", "aws_security_group"} <= checked, checked
    assert summary["passed"] >= 20
    for check in results.get("skipped_checks", []):
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} is skipped without a reason"


def test_every_shell_script_is_shellcheck_clean():
    scripts = shell_scripts()
    names = {path.relative_to(REPO).as_posix() for path in scripts}
    assert {"deploy/cryptoserver-secrets-setup.sh", "deploy/install.sh", "packer/close-doors.sh",
            "packer/remove-build-access.sh"} <= names, names
    result = subprocess.run([shellcheck(), "--external-sources", *scripts], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
