#!/bin/bash
# A half-length curriculum (the five stages of ../README.md at about half their episodes), to see whether it fits 45 min.
# It ran as results/cur45 (renamed to results/curriculum-half, then moved here) and was stopped after stage 2 (see
# ../README.md); the commands of stages 3-5 are those it would have run. Run from anywhere: it moves to the repository.
set -e
cd "$(dirname "$0")/../../.."
B=".venv/bin/python experiments/finetune-budget/finetune_budget.py --recipe updates --eval-dfs 1 100 --minutes 40"
R=experiments/curriculum/curriculum-half
$B --clusters 2 --dims 1 --train-points 4 12 --train-dfs 100 --separated --episodes 1200 --eval-every-steps 1200 --out $R/s1 > $R/s1.log 2>&1
$B --clusters 2 --dims 1 --train-dfs 100 --separated --episodes 600 --eval-every-steps 600 --init-adapter $R/s1/adapter --out $R/s2 > $R/s2.log 2>&1
# stopped here, after stage 2:
$B --clusters 3 --dims 3 --train-points 6 15 --train-dfs 100 --separated --episodes 600 --eval-every-steps 600 --init-adapter $R/s2/adapter --out $R/s3 > $R/s3.log 2>&1
$B --clusters 3 --dims 3 --train-dfs 100 --separated --episodes 400 --eval-every-steps 400 --init-adapter $R/s3/adapter --out $R/s4 > $R/s4.log 2>&1
$B --clusters 3 --dims 3 --episodes 300 --eval-every-steps 150 --init-adapter $R/s4/adapter --out $R/s5 > $R/s5.log 2>&1
echo done > $R/DONE
