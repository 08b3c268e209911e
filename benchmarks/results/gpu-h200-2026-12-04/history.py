"""Per-epoch timings of every model a table1 run wrote (natural start and fine-tunes), and its evaluations."""
import glob
import json
import sys

from raygap.checkpoint import load

root = sys.argv[1]
for path in sorted(glob.glob(f"{root}/**/model.pt", recursive=True)):
    print(path)
    for row in load(path)[1]["meta"]["history"]:
        print(f"  epoch {row['epoch']:>3}  train_s {row['train_seconds']:7.1f}  wall_s {row['wall_seconds']:7.1f}  "
              f"img/s {row['images_per_s']:8.0f}  mfu {row.get('mfu') or 0:.3f}  loss {row['loss']:.4f}  "
              f"val clean {row['clean_acc']:.3f}  robust {row['robust_acc']:.3f}")
for path in sorted(glob.glob(f"{root}/**/eval-*.json", recursive=True)):
    print(path, json.dumps(json.load(open(path))))
