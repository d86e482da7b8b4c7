import os

# Snakemake runs two jobs at a time on 2 cores: spinning OpenMP threads then slow torch / spconv's many small
# operations 10-50x. Passive waiting costs nothing when a job has the cores to itself (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ulm.cli import main  # noqa: E402

raise SystemExit(main())
