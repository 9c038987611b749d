"""How similar are the DARTS ops' outputs, by which measure, after how long a warm-up? The measurement behind the
defaults of `--clusters auto`.

One warm-up supernet over the space's ops (the search's `cluster` stage) is trained for the largest of --epochs;
after each of them the ops' outputs on a fixed set of training images are compared in every way stacnas offers:
correlation with one mean per op (element) or per feature position (sample, StacNAS' reference), and linear CKA
over channels, each on the ops' outputs and before their trailing BatchNorm; and the correlation of the ops'
α-gradients across mini-batches (gradient: how they compete for α, one observation per batch of the compared
images). --statistics picks some of them. Writes OUT.json (every record: the
matrices, the linkage, the clusters at the cut and whether they are the published ones), OUT.md (the key pairs per
epoch and measure) and OUT.png (those pairs over the epochs, one panel per measure).

    python benchmarks/clustering_similarity.py --dataset fashion-mnist --limit 2000 --epochs 2,5,10,20,40 \
        --out benchmarks/results/clustering-fashion-mnist
"""
import argparse
import json
import sys
from pathlib import Path

from stacnas.errors import StacnasError, UsageError
from stacnas.files import write_bytes, write_text
from stacnas.names import CLUSTER_STATISTICS, SIMILARITY_NAME
from stacnas.ops import short_name
from stacnas.runtime.config import resolve
from stacnas.search import SearchConfig
from stacnas.search.run import run_similarity_study

PAIRS = [("max_pool_3x3", "avg_pool_3x3"), ("avg_pool_3x3", "skip_connect"), ("sep_conv_3x3", "sep_conv_5x5"),
         ("dil_conv_3x3", "dil_conv_5x5"), ("sep_conv_3x3", "dil_conv_3x3"), ("sep_conv_5x5", "dil_conv_5x5"),
         ("max_pool_3x3", "sep_conv_3x3")]
# before_bn: not for the gradient statistic (an op's α-gradient is taken on its output)
VARIANTS = [(statistic, before_bn) for before_bn in (False, True) for statistic in CLUSTER_STATISTICS
            if not (before_bn and statistic == "gradient")]


def variant_name(record) -> str:
    return f"{record['statistic']}{' before BN' if record['before_bn'] else ''}"


def pair_value(record, a, b):
    ops = record["ops"]
    value = record["correlation"]["mean"][ops.index(a)][ops.index(b)]
    return None if value is None else abs(value)


def markdown(records) -> str:
    header = "| measure | warm-up epochs | " + " | ".join(f"{short_name(a)}–{short_name(b)}" for a, b in PAIRS)
    lines = [header + " | clusters at the cut | the paper's? |", "|---" * (len(PAIRS) + 4) + "|"]
    for r in records:
        values = [pair_value(r, a, b) for a, b in PAIRS]
        groups = " ".join("{" + ",".join(map(short_name, g)) + "}" for g in r["groups"])
        lines.append(f"| {variant_name(r)} | {r['epochs']} | " + " | ".join("–" if v is None else f"{v:.2f}"
                                                                           for v in values)
                     + f" | {groups} | {'yes' if r['paper_groups'] else 'no'} |")
    return "\n".join(lines) + "\n"


def figure(records):
    from matplotlib.figure import Figure

    from stacnas.report.figures import figure_bytes

    names = list(dict.fromkeys(variant_name(r) for r in records))
    fig = Figure(figsize=(4.2 * 3, 3.4 * ((len(names) + 2) // 3)), layout="constrained")
    axes = fig.subplots((len(names) + 2) // 3, 3, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        mine = [r for r in records if variant_name(r) == name]
        for a, b in PAIRS:
            ax.plot([r["epochs"] for r in mine], [pair_value(r, a, b) for r in mine], marker="o",
                    label=f"{short_name(a)}–{short_name(b)}")
        ax.set_title(f"{name} ({SIMILARITY_NAME[mine[0]['statistic']]})")
        ax.set_xlabel("warm-up epochs")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return figure_bytes(fig, "png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--limit", type=int, default=2000, help="training images of the warm-up")
    parser.add_argument("--epochs", default="2,5,10,20,40", help="warm-up epochs at which to measure")
    parser.add_argument("--preset", default="quick", help="search preset (channels, cells, batch size)")
    parser.add_argument("--cluster-images", type=int, default=500, help="images whose op outputs are compared")
    parser.add_argument("--statistics", default=",".join(CLUSTER_STATISTICS),
                        help="the measures compared, comma-separated (each also before BN, but gradient)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="path stem of the .json, .md and .png written")
    parser.add_argument("--run-dir", default="runs/clustering-similarity", help="the warm-up's run folder")
    args = parser.parse_args(argv)
    try:
        milestones = sorted({int(e) for e in args.epochs.split(",")})
        cfg = resolve(SearchConfig, "search", args.preset, None,
                      {"dataset": args.dataset, "data_root": args.data_root, "limit": args.limit, "seed": args.seed,
                       "cluster_images": args.cluster_images, "cluster_epochs": max(milestones)})
        out = Path(args.out)
        chosen = args.statistics.split(",")
        unknown = sorted(set(chosen) - set(CLUSTER_STATISTICS))
        if unknown:
            raise UsageError(f"--statistics: unknown {', '.join(unknown)}; choose from {', '.join(CLUSTER_STATISTICS)}")
        records = run_similarity_study(cfg, args.run_dir, milestones, [v for v in VARIANTS if v[0] in chosen],
                                       force=True)
    except StacnasError as err:
        print(f"clustering_similarity: error: {err}", file=sys.stderr)
        return err.exit_code
    write_text(out.with_suffix(".json"), json.dumps({"config": vars(args), "records": records}, indent=2) + "\n")
    table = markdown(records)
    write_text(out.with_suffix(".md"), table)
    write_bytes(out.with_suffix(".png"), figure(records))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
