# diver: raw EEG/iEEG recordings -> Parquet corpus -> pretraining grid -> fine-tuning
# -> scaling laws, every step tracked in MLflow.  Each rule runs one `diver` command.
#
#   snakemake --profile local            # embedded default (CPU, minutes)
#   snakemake --profile slurm            # the paper's study on SLURM
from snakemake.utils import min_version

from diver.config import validate_config
from diver.where import where_text

min_version("9.0")


# The embedded default applies only when no --configfile is given (a study's config
# replaces it rather than being merged into it).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# The package's validator (the same schema as workflow/schemas/config.schema.yaml): it
# fills defaults like Snakemake's validate, and reads `lr: 1e-3` as the number YAML 1.2
# says it is (YAML 1.1 loaders leave a string).
config.update(validate_config(config, source="the Snakemake config"))


include: "workflow/rules/common.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/hpsearch.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/scaling.smk"
include: "workflow/rules/report.smk"


onstart:
    write_study_config()


# What to open next: the results, the report and the `mlflow ui` command for the runs.
onsuccess:
    print(where_text(STUDY))


rule all:
    input:
        all_targets(),
        hpsearch_report_inputs(),
        finetune_targets(),
        path(LAYOUT.report),
