# marsdiff: RL fine-tuning of diffusion models toward diverse synthetic Mars craters.
# Stages read like a table of contents; what they compute at parse time lives in marsdiff.workflow
# (workflow/rules/common.smk is its thin include).
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

from marsdiff.config import check_config, read_config_file
from marsdiff.config_checks import check_settings
from marsdiff.errors import MarsdiffError

min_version("9.20")

# The jobs import marsdiff from the Python environment that runs Snakemake. A copied project
# whose venv still points at the original's editable install would silently run the original's
# code: say once which installation is used when it is not this project's src/.
import marsdiff

if Path(marsdiff.__file__).resolve().parents[1] != Path(workflow.basedir, "src").resolve():
    print(
        f"marsdiff warning: running the marsdiff installed at {Path(marsdiff.__file__).parent}, not "
        f"{Path(workflow.basedir, 'src', 'marsdiff')}; `pip install -e .` in this project to run its own code",
        file=sys.stderr,
    )

# Read the default config file first ourselves: a YAML error then names its file and line in one
# line (Snakemake's own message names neither). --configfile files are read by Snakemake before
# this file runs: `make run CONFIG=...` checks those (python -m marsdiff.config_checks).
try:
    if Path("config/config.yaml").is_file():
        read_config_file("config/config.yaml")
except MarsdiffError as err:
    sys.exit(f"marsdiff error: {err}")


configfile: "config/config.yaml"


# One-line message naming the bad key first (no traceback), then every check a stage would make
# of the settings, then Snakemake's own validation (fills defaults). Parse-time errors leave every
# existing result untouched; the checks against the reference data follow in common.smk.
try:
    check_config(config, workflow.source_path("workflow/schemas/config.schema.yaml"))
    check_settings(config, workflow.source_path("workflow/schemas/config.schema.yaml"))
except MarsdiffError as err:
    sys.exit(f"marsdiff error: {err}")
validate(config, schema="workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


# Every wildcard's pattern, once for all rules: rounds have three digits (the target asks for
# every round in order), only configured experiments and evaluated models match.
wildcard_constraints:
    round=r"\d{3}",
    exp=PLAN.experiment_pattern,
    extractor="|".join(EXTRACTOR_CHOICES),
    size=r"[1-9]\d*",
    model=PLAN.eval_model_pattern,
    stream=r"[1-9]\d*",


include: "workflow/rules/reference.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/rewards.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/rl.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/study.smk"


# The report opens on the verdicts once report_summary has written them.
report: report_landing_page()


rule all:
    default_target: True
    localrule: True
    input:
        targets.all_targets(LAYOUT, PLAN),
