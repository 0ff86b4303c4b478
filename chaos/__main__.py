"""`make chaos`: the fault-injection runner on PostgreSQL and Redis servers of its own.

Unless ETL_TEST_DATABASE_URL and ETL_TEST_BROKER_URL name servers you started, it starts embedded
ones for the run (the scenarios restart them) and stops them at the end: this machine's servers
are never touched.
"""

import sys

from etl.demo import embedded


def main() -> int:
    with embedded.for_run("chaos-servers-"):
        from chaos import harness  # after the environment names the run's servers

        return harness.main()


if __name__ == "__main__":
    sys.exit(main())
