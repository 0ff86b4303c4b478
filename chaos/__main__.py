"""`make chaos`: the fault-injection runner on PostgreSQL and Redis servers of its own.

Unless ETL_TEST_DATABASE_URL and ETL_TEST_BROKER_URL name servers you started, it starts embedded
ones for the run (the scenarios restart them) and stops them at the end: this machine's servers
are never touched.
"""

import os
import sys
import tempfile
from pathlib import Path


def main() -> int:
    if os.environ.get("ETL_TEST_DATABASE_URL") and os.environ.get("ETL_TEST_BROKER_URL"):
        from chaos import harness

        return harness.main()
    from etl import embedded

    with tempfile.TemporaryDirectory(prefix="chaos-servers-") as directory:
        pg, rd = embedded.Postgres(Path(directory) / "postgres"), embedded.Redis(Path(directory) / "redis")
        try:
            os.environ["ETL_TEST_DATABASE_URL"] = pg.start()
            os.environ["ETL_TEST_BROKER_URL"] = rd.start().replace("/0", "/15")
            os.environ["ETL_TEST_EMBEDDED_DIR"] = directory
            print(f"chaos: embedded Postgres on port {pg.port}, Redis on port {rd.port}", file=sys.stderr)
            from chaos import harness  # after the environment names the run's servers

            return harness.main()
        finally:
            rd.stop()
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
