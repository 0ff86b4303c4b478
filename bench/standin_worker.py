"""`python -m bench.standin_worker <celery args>`: the celery command, on the SQS stand-in."""

import sys

from bench.standin import install

if __name__ == "__main__":
    install()
    from celery.__main__ import main

    sys.argv = ["celery", *sys.argv[1:]]
    sys.exit(main())
