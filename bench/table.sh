#!/usr/bin/env bash
# Usage: table.sh [results.tsv] [LABEL_REGEX]
# Prints a Markdown table from run.sh's TSV: one row per label x scenario, each
# cell "tag1 / tag2 / ..." in the order the runs were made (e.g. r1 / r2).
set -euo pipefail
tsv=${1:-$(dirname "$0")/../bench-out/results.tsv}
re=${2:-.}
awk -F'\t' -v re="$re" '
NR == 1 { next }
$2 !~ re { next }
{
  key = $2 SUBSEP $4
  if (!(key in seen)) { seen[key] = 1; order[++n] = key; lab[key] = $2; sc[key] = $4; alpn[key] = $5 }
  sep = (key in rps) ? " / " : ""
  rps[key]  = rps[key]  sep sprintf("%.0f", $12)
  mean[key] = mean[key] sep sprintf("%.2f", $13 / 1000)
  p99[key]  = p99[key]  sep sprintf("%.2f", $15 / 1000)
  cpu[key]  = cpu[key]  sep sprintf("%.0f", $17)
  rss[key]  = rss[key]  sep sprintf("%.1f", $21 / 1024)
  scpu[key] = scpu[key] sep $18
  ccpu[key] = ccpu[key] sep $19
}
END {
  print "| server | scenario | req/s | mean ms | p99 ms | server CPU µs/req | peak RSS MiB | server / client CPU % |"
  print "|---|---|---|---|---|---|---|---|"
  for (i = 1; i <= n; i++) {
    k = order[i]
    printf "| %s | %s | %s | %s | %s | %s | %s | %s ; %s |\n", lab[k], sc[k], rps[k], mean[k], p99[k], cpu[k], rss[k], scpu[k], ccpu[k]
  }
}' "$tsv"
