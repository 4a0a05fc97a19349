"""`debit-worker consent …`: record, revoke, list and import the accounts' consents."""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from worker.ops.cli_common import CONTEXT, ledger, settings

# Bad lines shown before "… and N more": enough to see the pattern of a broken file.
SHOWN_PROBLEMS = 20


@click.group(context_settings=CONTEXT)
def consent() -> None:
    """Record, revoke, list and import the accounts' consents to be debited (kept in the
    ledger, every change audited)."""


@consent.command("grant", context_settings=CONTEXT)
@click.argument("account")
@click.option(
    "--agreement", required=True, help="Where the signed agreement is kept (URL or document id)."
)
@click.option(
    "--by",
    "actor",
    default=getpass.getuser,
    show_default="your login name",
    help="Who records it (for the audit trail).",
)
def consent_grant(account: str, agreement: str, actor: str) -> None:
    """Record that ACCOUNT consented to be debited. Nothing is recorded if ACCOUNT already
    has an active consent under this agreement."""
    from worker.adapters.ledger.consents import ConsentGrant  # noqa: PLC0415 - not for --help
    from worker.ops.consent_import import account_problem  # noqa: PLC0415

    problem = account_problem(account)
    if problem is not None:
        raise click.BadParameter(problem, param_hint="ACCOUNT")
    done = ledger(settings()).consents.grant_many([ConsentGrant(account, agreement, actor)])
    if done.granted:
        click.echo(f"consent recorded for {account} (agreement {agreement}) by {actor}")
    else:
        click.echo(f"{account} already has an active consent under {agreement}: nothing recorded")


@consent.command("revoke", context_settings=CONTEXT)
@click.argument("account")
@click.option(
    "--by",
    "actor",
    default=getpass.getuser,
    show_default="your login name",
    help="Who revokes it (for the audit trail).",
)
def consent_revoke(account: str, actor: str) -> None:
    """Revoke every active consent of ACCOUNT: its debits are refused (consent_missing) from
    now on. Exits 1 if ACCOUNT has no active consent."""
    count = ledger(settings()).consents.revoke(account, actor)
    if not count:
        raise click.ClickException(
            f"{account} has no active consent: nothing revoked (`debit-worker consent list "
            f"--account {account}` shows its history)"
        )
    click.echo(f"revoked {count} active consent(s) of {account}")


@consent.command("list", context_settings=CONTEXT)
@click.option("--account", help="Only this account.")
def consent_list(account: str | None) -> None:
    """List consents, active and revoked."""
    for record in ledger(settings()).consents.list(account):
        revoked = (
            f"revoked {record.revoked_at.isoformat()} by {record.revoked_by}"
            if record.revoked_at
            else "active"
        )
        granted = f"granted {record.granted_at.isoformat()} by {record.granted_by}"
        click.echo(f"{record.account_id}  {granted}  {revoked}  [{record.agreement_ref}]")


@consent.command("import", context_settings=CONTEXT)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--by",
    "actor",
    default=getpass.getuser,
    show_default="your login name",
    help="Who records the lines without a granted_by (for the audit trail).",
)
def consent_import(file: Path, actor: str) -> None:
    """Grant every consent of FILE, a CSV file with columns account,agreement[,granted_by]
    (a header line naming them is optional).

    Every line is checked first: if any is bad (an account that is not acct_ and 1-64 letters
    or digits, an empty agreement, a wrong number of columns), each bad line is shown by its
    number and nothing is granted. Otherwise the consents are granted 500 per transaction;
    an account that already has an active consent under the same agreement is not granted it
    again, so importing the same file twice (or again after an interruption) grants each
    consent once. Prints how many were granted and how many were already there.
    """
    from worker.ops.consent_import import UnreadableFile, read_consents  # noqa: PLC0415

    try:
        found = read_consents(file, actor)
    except UnreadableFile as exc:
        raise click.ClickException(f"{exc}: nothing granted") from None
    if found.problems:
        for problem in found.problems[:SHOWN_PROBLEMS]:
            click.echo(problem, err=True)
        if len(found.problems) > SHOWN_PROBLEMS:
            click.echo(f"… and {len(found.problems) - SHOWN_PROBLEMS} more", err=True)
        raise click.ClickException(
            f"{len(found.problems)} bad line(s) in {file}: nothing granted; fix them and "
            "import the file again"
        )
    done = ledger(settings()).consents.grant_many(found.grants, source=f"import {file.name}")
    click.echo(
        f"granted {done.granted}, already had {done.already} "
        f"({len(found.grants)} consent line(s) in {file})"
    )
