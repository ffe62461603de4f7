"""One module per ``memprobe`` command."""

from memprobe.commands.archs import archs
from memprobe.commands.calibrate import calibrate
from memprobe.commands.db import db
from memprobe.commands.nnunet import nnunet
from memprobe.commands.plan import plan
from memprobe.commands.probe import probe
from memprobe.commands.report import report
from memprobe.commands.snapshot import snapshot
from memprobe.commands.suggest import suggest
from memprobe.commands.sweep import sweep
from memprobe.commands.verify import verify

COMMANDS = (archs, probe, calibrate, suggest, plan, db, report, verify, sweep, nnunet, snapshot)
