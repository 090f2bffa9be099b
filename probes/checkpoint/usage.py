"""The ``--help`` text of ``probes/run.py --checkpoint`` and the options it takes. Imports neither
torch nor transformers: ``probes/run.py --checkpoint X --help`` reads this module alone."""

from probes.logs import OPTIONS_HELP

OPTIONS = ("--checkpoint", "--output_dir", "--probe_inputs", "--probe_samples", "--allow_pickle",
           "--trust_remote_code", "--thresholds", "--heatmap_layers", "--heatmap_component",
           "--num_threads", "--fold_norms", "--spectral_metrics", "--activation_point",
           "--merge_probe")
USAGE = """usage: accelerate launch probes/run.py --checkpoint DIR [--checkpoint DIR2 ...] [options]

  --checkpoint PATH        a save_pretrained folder, a folder of checkpoint-N / step_N folders
                           (probed as a series), gguf:FILE or gguf:smollm2, or a hub id when online
  --output_dir DIR         where metrics.csv, runs.csv and figures/ go (default reports/checkpoints)
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
  --heatmap_component C    component drawn (default attn.q, else the first component)
  --num_threads N          threads (default: all cores / processes)
""" + OPTIONS_HELP
