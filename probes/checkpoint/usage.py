"""The ``--help`` text of ``probes/run.py --checkpoint`` and the options it takes. Imports neither
torch nor transformers: ``probes/run.py --checkpoint X --help`` reads this module alone."""

from probes.logs import OPTIONS_HELP

OPTIONS = ("--checkpoint", "--output_dir", "--probe_inputs", "--probe_samples", "--allow_pickle",
           "--trust_remote_code", "--thresholds", "--heatmap_layers", "--heatmap_component",
           "--num_threads", "--fold_norms", "--spectral_metrics", "--activation_point",
           "--merge_probe", "--chance_draws", "--chance_nulls", "--reference")
USAGE = """usage: accelerate launch probes/run.py --checkpoint DIR [--checkpoint DIR2 ...] [options]

  --checkpoint PATH        a save_pretrained folder, a folder of checkpoint-N / step_N folders
                           (probed as a series), gguf:FILE or gguf:smollm2, or a hub id when online
  --output_dir DIR         where metrics.csv, runs.csv and figures/ go (default reports/checkpoints)
  --reference DIR          a step-0 or base checkpoint of the same architecture: adds rd (relative
                           distance of each unit set from it) and angle_mean / _median / _max
                           (degrees between each unit and its reference direction)
  --probe_inputs SPEC      activation basis too: a task name (this project's models), a text file
                           of lines (language models) or a folder of images (vision models)
  --probe_samples N        samples (tokens, pixel positions, rows) in the probe batch (default 1024)
  --allow_pickle           accept pytorch_model.bin weights (pickle can run code: trusted files only)
  --trust_remote_code      run the model code a checkpoint ships (trusted checkpoints only)
  --thresholds LIST        cosine thresholds for groups (default [0.7, 0.9, 0.95, 0.99])
  --heatmap_layers LIST    layers drawn as heat maps (default: first, middle and last)
  --fold_norms BOOL        weight basis: fold the gain (and bias) of the norm a projection reads
                           into its rows, as TransformerLens's fold_ln (default true)
  --spectral_metrics BOOL  stable_rank and effective_rank (default true); false leaves them out
                           of metrics.csv and saves most of the time on large layers (their
                           float64 singular values), the group metrics unchanged
  --activation_point P     activation basis: pre (projection outputs, default) or post (MLP
                           neurons after their nonlinearity); dead units are counted either way
  --merge_probe BOOL       with --probe_inputs (text or token task) and a causal LM: merge each
                           condensed group into one unit, per layer and all at once, at each
                           threshold, and report the next-token loss (default false)
  --chance_draws N         chance level of each unit set's n_groups and mean |cos|: N null sets
                           of the same size and dimension drawn and counted (default 0: off; one
                           draw costs one group count, ~1 s for 4096 x 4096 units; sets over 4096
                           units are skipped, with a null_draws_* row of 0)
  --chance_nulls NULLS     isotropic, covariance (the units' own covariance) or both (default)
  --heatmap_component C    component drawn (default attn.q, else the first component)
  --num_threads N          threads (default: all cores / processes)
""" + OPTIONS_HELP

ALIGN_OPTIONS = ("--output_dir", "--thresholds", "--probe_inputs", "--probe_samples",
           "--activation_point", "--fold_norms", "--allow_pickle", "--trust_remote_code",
           "--num_threads")
ALIGN_USAGE = """usage: condensation-probes align A B [options]   (python probes/run.py align A B ...)

  A, B                     two checkpoints: save_pretrained folders, or RUN_DIR@STEP (step STEP
                           of a folder of checkpoint-N / step_N folders)
  --output_dir DIR         where align.csv goes (default reports/align)
  --thresholds LIST        cosine thresholds: groups cut and matched at each (default
                           [0.7, 0.9, 0.95, 0.99])
  --probe_inputs SPEC      adds the debiased linear CKA of each unit set's activations on these
                           inputs (as --checkpoint: a task name, a text file, a folder of images)
  --probe_samples N        samples in the probe batch (default 1024)
  --activation_point P     pre (default) or post, as --checkpoint
  --fold_norms BOOL        fold norm gains into the weight rows first (default true)
  --allow_pickle, --trust_remote_code   as --checkpoint
  --num_threads N          threads (default: all cores)
""" + OPTIONS_HELP

MERGE_OPTIONS = ("--threshold", "--output_dir", "--fold_norms", "--allow_pickle",
                 "--trust_remote_code", "--num_threads")
MERGE_USAGE = """usage: condensation-probes merge CKPT --threshold TAU [options]
       (python probes/run.py merge CKPT ...)

  CKPT                     a save_pretrained folder, or RUN_DIR@STEP (step STEP of a folder of
                           checkpoint-N / step_N folders)
  --threshold TAU          cosine in (0, 1): every condensed group at TAU (MLP neurons, query rows
                           with their key rows, all layers) merged into one unit, the rest zeroed
  --output_dir DIR         writes DIR/model (save_pretrained), DIR/merge.json (widths) and, for
                           this project's runs, DIR/config.yaml (default reports/merged)
  --fold_norms BOOL        fold norm gains into the rows first, as --checkpoint (default true)
  --allow_pickle, --trust_remote_code   as --checkpoint
  --num_threads N          threads (default: all cores)
""" + OPTIONS_HELP
