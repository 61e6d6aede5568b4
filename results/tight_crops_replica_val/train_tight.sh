set -e
D=../shared/utkface/crop_part1_5000
for s in 0 1 2; do
  .venv/bin/agegender train --recipe mobilenet-v2-transfer --degrade 0.1 --child-gender-weight 3 --tight-crop 0.2 --data-dir $D --splits results/model_a/splits --seed $s --out runs/mnv2_train_tight_s$s > runs/mnv2_train_tight_s$s.log 2>&1
  echo "seed $s done $(date +%H:%M)"
done
.venv/bin/agegender fit-readouts --model runs/mnv2_train_tight_s0/model.keras --model runs/mnv2_train_tight_s1/model.keras --model runs/mnv2_train_tight_s2/model.keras --int8-kernels --fold-batchnorm --gate-age 14 --gate-width 6 --face-api /tmp/fa/package/model --data-dir $D --splits /tmp/splits_tv --fit-on train --out runs/replica_tight_train > runs/replica_tight_train.log 2>&1
for z in 1.0 0.9 0.8; do
  .venv/bin/python bench/eval_split_detect.py --data-dir $D --split results/model_a/splits/val.csv --detect yunet-onet --model runs/replica_tight_train/model.keras --zoom $z --out runs/tight/tightmodel_val_z$z.json --predictions runs/tight/tightmodel_val_z$z.csv 2>/dev/null | tail -1
done
echo all done $(date +%H:%M)
