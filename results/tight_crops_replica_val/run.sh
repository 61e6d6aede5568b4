set -e
D=../shared/utkface/crop_part1_5000
M=runs/replica_cgw_train/model.keras
for z in 1.0 0.95 0.9 0.85 0.8; do
  for t in 0.25 0.20 0.15 0.10 none; do
    if [ $t = none ]; then opt=--crop-chips-again; else opt="--chip-tolerance $t"; fi
    .venv/bin/python bench/eval_split_detect.py --data-dir $D --split results/model_a/splits/val.csv --detect yunet-onet --model $M $opt --zoom $z --out runs/tight/val_z${z}_t${t}.json --predictions runs/tight/val_z${z}_t${t}.csv 2>/dev/null | tail -1
  done
done
echo done
