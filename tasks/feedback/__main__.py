"""`python -m tasks.feedback erase --user ID` and `python -m tasks.feedback purge`: see
tasks.feedback.rights. Run where the server's store and user-hash key are configured
(AIGC_FEEDBACK_DB, AIGC_USER_HASH_KEY); what they change cannot be undone."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from tasks.errors import BadInput
from tasks.feedback.identity import user_hash_key
from tasks.feedback.rights import erase, purge, retention_days
from tasks.feedback.store import FeedbackStore
from tasks.settings import Settings


def _render_erasure(done: dict) -> str:
    lines = [f"erasure {done['erasure_id']} at {done['created_at']}: "
             f"{done['requests_deleted']} request(s), {done['feedback_deleted']} feedback "
             f"row(s) deleted; exports rewritten without them: "
             f"{', '.join(done['exports_changed']) or 'none'}"]
    if done["trained_versions"]:
        lines.append("already trained on (their models keep what they learned; retrain "
                     "without these runs' data to remove it):")
        lines += [f"  {v['model']} version {v['version']} ({v['role']}) from lifecycle run "
                  f"{v['dag_run_id']}" for v in done["trained_versions"]]
    else:
        lines.append("no model was trained on this user's data")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.feedback", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    erase_cmd = commands.add_parser("erase", help="delete one user's requests and feedback")
    erase_cmd.add_argument("--user", required=True, help="the user id the clients sent")
    purge_cmd = commands.add_parser("purge", help="delete what is older than the retention")
    purge_cmd.add_argument("--days", type=float, help="default: AIGC_RETENTION_DAYS")
    for cmd in (erase_cmd, purge_cmd):
        cmd.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        store = FeedbackStore(settings.feedback_db)
        try:
            if args.command == "erase":
                done = erase(store, args.user, user_hash_key(), settings.tracking_uri)
                print(json.dumps(done, indent=2) if args.json else _render_erasure(done))
            else:
                days = retention_days() if args.days is None else args.days
                record = purge(store, days)
                print(json.dumps(asdict(record) if record else None) if args.json else (
                    f"retention off ({days:g} days)" if record is None else
                    f"purged {record.requests_deleted} request(s) and "
                    f"{record.feedback_deleted} feedback row(s) older than {days:g} days; "
                    f"export files removed: {len(record.exports_changed)}"))
        finally:
            store.close()
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
