"""Several directories in one config (issue 6 part 3): two domains that both have an `ann`.

Each directory is synced on its own, principals are told apart by directory everywhere (store,
findings, report), an assignment names the directory when a name exists in both, and a
requirement can be limited to one directory.  LDIF exports, run in-process through the CLI.
"""

from __future__ import annotations

import csv
import io
import json

import yaml

from tests.test_register import AS_OF, Site, ldif_group, ldif_user


def write_site(tmp_path, *, branch_requirement: bool = True):
    (tmp_path / "hq.ldif").write_text("\n".join([ldif_user("ann"), ldif_user("bob"), ldif_group("staff", ["ann", "bob"])])
                                      + "\n")
    (tmp_path / "branch.ldif").write_text("\n".join([ldif_user("ann", display="Ann of the Branch"), ldif_user("cat"),
                                                     ldif_group("staff", ["ann", "cat"])]) + "\n")
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({
        "purchases": [{"id": "PO-1", "product": "windows-server", "version": "2022", "cal_type": "user",
                       "quantity": 5, "purchased_on": "2026-01-10", "invoice": "INV-1"}],
        "assignments": [{"purchase": "PO-1", "principal": "ann", "directory": "hq", "assigned_on": "2026-02-01"},
                        {"purchase": "PO-1", "principal": "bob", "assigned_on": "2026-02-01"}],
    }))
    requirements = [{"name": "staff", "product": "windows-server", "version": "2022", "cal_type": "user",
                     "users": {"group": "staff"}}]
    if branch_requirement:
        requirements.append({"name": "branch-rds", "product": "rds", "version": "2022", "cal_type": "user",
                             "directory": "branch", "users": {"group": "staff"}})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "directories": [{"name": "hq", "type": "ldif", "path": "hq.ldif", "as_of": AS_OF},
                        {"name": "branch", "type": "ldif", "path": "branch.ldif", "as_of": AS_OF}],
        "inventory": "inventory.yaml",
        "requirements": requirements,
        "reports": {"directory": "reports"},
    }))
    site = Site.__new__(Site)  # the helper's `run` only needs the folder and the config
    site.folder, site.config = tmp_path, config
    return site


def test_two_directories_with_the_same_name_are_told_apart_everywhere(tmp_path):
    site = write_site(tmp_path)
    sync = site.run("sync").stdout
    assert "hq: 2 users, 1 groups" in sync and "branch: 2 users, 1 groups" in sync
    site.run("reconcile")
    report = json.loads(site.run("report").stdout)
    unlicensed = sorted((f["product"], f["principal"]["directory"], f["principal"]["name"])
                        for f in report["findings"] if f["kind"] == "unlicensed_user")
    # ann@hq holds PO-1 (the assignment names hq); ann@branch and cat do not.  The RDS requirement
    # is limited to the branch: nobody in hq needs an RDS CAL.
    assert unlicensed == [("rds", "branch", "ann"), ("rds", "branch", "cat"),
                          ("windows-server", "branch", "ann"), ("windows-server", "branch", "cat")]
    windows = next(p for p in report["products"] if p["product"] == "windows-server")
    assert (windows["required"], windows["licensed"]) == (4, 2)
    names = {(e["principal"]["directory"], e["principal"]["name"], e["principal"]["display_name"])
             for e in report["licences"]}
    assert ("branch", "ann", "Ann of the Branch") in names and ("hq", "ann", None) in names
    rows = list(csv.DictReader(io.StringIO(site.run("report", "--format", "csv").stdout)))
    assert {(r["directory"], r["principal_name"]) for r in rows if r["kind"] == "unlicensed_user"} == {
        ("branch", "ann"), ("branch", "cat")}
    status = site.run("status").stdout
    assert "hq" in status and "branch" in status


def test_one_directory_failing_leaves_the_other_synced_and_named(tmp_path):
    site = write_site(tmp_path, branch_requirement=False)
    site.run("sync")
    (tmp_path / "branch.ldif").write_text("dn: CN=broken\nobjectGUID:: not-base64!\n")
    failed = site.run("sync", expect=3)
    assert "branch" in failed.stderr and "hq: 2 users" in failed.stdout
