"""One module per ``memprobe`` command."""

from memprobe.cli.archs import archs
from memprobe.cli.calibrate import calibrate
from memprobe.cli.db import db
from memprobe.cli.nnunet import nnunet
from memprobe.cli.plan import plan
from memprobe.cli.probe import probe
from memprobe.cli.report import report
from memprobe.cli.snapshot import snapshot
from memprobe.cli.suggest import suggest
from memprobe.cli.sweep import sweep
from memprobe.cli.verify import verify

COMMANDS = (archs, probe, calibrate, suggest, plan, db, report, verify, sweep, nnunet, snapshot)
