#!/bin/sh
# Alignment across the runs of the default experiment (configs/default.yaml, `make run`): groups
# matched and debiased linear CKA on the runs' own task inputs (composite, their config.yaml),
# between seeds, across gamma and against the merged model (merged at 0.9), at the final step
# 2000 and, for pairs with a gamma 1.0 run, at step 437 (where its layer-0 groups have formed).
# usage, from the repository root: sh reports/measured/alignment/make.sh [RUNS_DIR [SCRATCH]]
set -e
R=${1:-reports/default}/runs
T=${2:-/tmp/align25}
D=reports/measured/alignment
PY=${PYTHON:-python}
G03S0=$R/paper-g0.3-s0-dfd21f1f; G03S1=$R/paper-g0.3-s1-8d0ffe0e
G06S0=$R/paper-g0.6-s0-2edcce5d; G06S1=$R/paper-g0.6-s1-fc2786a2
G1S0=$R/paper-g1-s0-dca455f1; G1S1=$R/paper-g1-s1-3499f6bc
al() { $PY probes/run.py align "$2" "$3" --probe_inputs composite --num_threads 1 --output_dir "$T/$1" > /dev/null && cp "$T/$1/align.csv" "$D/$1.csv"; }
mg() { $PY probes/run.py merge "$2" --threshold 0.9 --num_threads 1 --output_dir "$T/$1" > /dev/null && cp "$T/$1/merge.json" "$D/$1_merge.json"; }
al seeds_g0.3_s0-s1_2000 $G03S0@2000 $G03S1@2000
al seeds_g0.6_s0-s1_2000 $G06S0@2000 $G06S1@2000
al seeds_g1_s0-s1_2000 $G1S0@2000 $G1S1@2000
al seeds_g1_s0-s1_437 $G1S0@437 $G1S1@437
al gamma_s0_g1-g0.3_2000 $G1S0@2000 $G03S0@2000
al gamma_s0_g1-g0.6_2000 $G1S0@2000 $G06S0@2000
al gamma_s0_g0.6-g0.3_2000 $G06S0@2000 $G03S0@2000
al gamma_s1_g1-g0.3_2000 $G1S1@2000 $G03S1@2000
al gamma_s1_g1-g0.6_2000 $G1S1@2000 $G06S1@2000
al gamma_s1_g0.6-g0.3_2000 $G06S1@2000 $G03S1@2000
al gamma_s0_g1-g0.3_437 $G1S0@437 $G03S0@437
al gamma_s0_g1-g0.6_437 $G1S0@437 $G06S0@437
al gamma_s1_g1-g0.3_437 $G1S1@437 $G03S1@437
al gamma_s1_g1-g0.6_437 $G1S1@437 $G06S1@437
mg merged_g0.3-s0_2000 $G03S0@2000
mg merged_g0.3-s1_2000 $G03S1@2000
mg merged_g0.6-s0_2000 $G06S0@2000
mg merged_g0.6-s1_2000 $G06S1@2000
mg merged_g1-s0_2000 $G1S0@2000
mg merged_g1-s1_2000 $G1S1@2000
mg merged_g1-s0_437 $G1S0@437
mg merged_g1-s1_437 $G1S1@437
al original-merged_g0.3-s0_2000 $G03S0@2000 $T/merged_g0.3-s0_2000/model
al original-merged_g0.3-s1_2000 $G03S1@2000 $T/merged_g0.3-s1_2000/model
al original-merged_g0.6-s0_2000 $G06S0@2000 $T/merged_g0.6-s0_2000/model
al original-merged_g0.6-s1_2000 $G06S1@2000 $T/merged_g0.6-s1_2000/model
al original-merged_g1-s0_2000 $G1S0@2000 $T/merged_g1-s0_2000/model
al original-merged_g1-s1_2000 $G1S1@2000 $T/merged_g1-s1_2000/model
al original-merged_g1-s0_437 $G1S0@437 $T/merged_g1-s0_437/model
al original-merged_g1-s1_437 $G1S1@437 $T/merged_g1-s1_437/model
$PY $D/summary.py $D
