"""Write the random secrets docker-compose.yml requires into .env next to it (mode 0600).

    python3 scripts/compose_secrets.py            # then: docker compose up -d

Makes only what is missing (JWT secret, API secret key, Fernet key, the admin password, the two
database passwords) and keeps every value and line already in .env, so running it again changes
nothing. Prints where the UI's admin password is, never the secrets themselves. Standard library
only: it needs no virtualenv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from rowfill_dev.stacksecrets import COMPOSE, ensure_secrets, read_secrets  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env", help="default: .env next to docker-compose.yml")
    args = parser.parse_args(argv)
    before = read_secrets(args.env_file)
    ensure_secrets(args.env_file, COMPOSE)
    made = [name for name in COMPOSE if not before.get(name)]
    print(f"{args.env_file}: " + (f"made {', '.join(made)}" if made else "every secret already there, nothing changed"))
    print(f"UI login: admin, password AIRFLOW_ADMIN_PASSWORD in {args.env_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
