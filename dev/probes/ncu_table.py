"""ncu --csv output (stdin) as a table: a row per profiled launch (kernel name cut, template arguments
kept), a column per metric (stall metrics shortened to their reason). Used by norm_ncu_stalls.sh and
lanes_smem_ab.sh."""
import collections
import csv
import re
import sys

rows = list(csv.reader(line for line in sys.stdin if line.startswith('"')))
if not rows:
    sys.exit("ncu_table.py: no ncu CSV rows on stdin")
head = rows[0]
kernel, launch, metric, value = (head.index(k) for k in ("Kernel Name", "ID", "Metric Name", "Metric Value"))
per = collections.OrderedDict()
for r in rows[1:]:
    name = re.sub(r"\(.*", "", r[kernel].replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
                  .replace("void ", ""))[:48]
    short = r[metric].replace("smsp__average_warps_issue_stalled_", "st_").replace("_per_issue_active.ratio", "")
    per.setdefault((name, r[launch]), {})[short] = float(r[value].replace(",", ""))
keys = list(next(iter(per.values())))
print("kernel".ljust(48), " ".join(k[:10].rjust(10) for k in keys))
for (name, _), m in per.items():
    print(name.ljust(48), " ".join(f"{m.get(k, 0):10.3g}" for k in keys))
