#!/bin/bash
# The curriculum profile's five stages (notebooks/profiles/curriculum.yml, ft_curriculum) repeated with root seed 1:
# other training episodes, data order and LoRA dropout draws (stage 1 also another LoRA initialisation), scored on the
# same validation episodes as the seed-0 stages (experiments/curriculum: c2d1-separated-short-updates,
# c2d1-separated-curriculum, c3d3-curriculum-s1..s3), then once on Table 1's test episodes (all 30 per df) beside
# seed 0's adapter (the curriculum profile's, results/curriculum/04/adapter).
# Rerun to continue after a stop: finished stages are reused, a stopped one resumes from its checkpoint.
set -e
cd "$(dirname "$0")/../.."
B=".venv/bin/python experiments/finetune-budget/finetune_budget.py --recipe updates --eval-dfs 1 100 --seed 1 --minutes 120"
R=experiments/curriculum-seed1
$B --clusters 2 --dims 1 --train-points 4 12 --train-dfs 100 --separated --episodes 2400 --eval-every-steps 1200 --out $R/s1 >> $R/s1.log 2>&1
$B --clusters 2 --dims 1 --train-dfs 100 --separated --episodes 1200 --eval-every-steps 600 --init-adapter $R/s1/adapter --out $R/s2 >> $R/s2.log 2>&1
$B --clusters 3 --dims 3 --train-points 6 15 --train-dfs 100 --separated --episodes 1200 --eval-every-steps 600 --init-adapter $R/s2/adapter --out $R/s3 >> $R/s3.log 2>&1
$B --clusters 3 --dims 3 --train-dfs 100 --separated --episodes 900 --eval-every-steps 300 --init-adapter $R/s3/adapter --out $R/s4 >> $R/s4.log 2>&1
$B --clusters 3 --dims 3 --episodes 600 --eval-every-steps 300 --init-adapter $R/s4/adapter --out $R/s5 >> $R/s5.log 2>&1
# beside seed 0's (the curriculum profile's adapter), already scored there: table1_check.py skips a model it has
.venv/bin/python experiments/curriculum/table1_check.py --adapter curriculum=results/curriculum/04/adapter \
    --adapter curriculum-seed1=$R/s5/adapter --n-per-df 30 --out $R/table1-n30 > $R/table1.log 2>&1
echo done > $R/DONE
