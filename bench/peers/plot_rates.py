#!/usr/bin/env python3
"""Learned drop rates beside the regret curve, as one SVG (no plotting library needed).

    banditd-loadgen inproc --env wheel:0.5 --seeds 1 --rounds 5000 --json \\
        --set concrete_dropout=true --set 'drop_rates=[0.02, 0.05, 0.05]' > wheel.json
    python3 bench/peers/plot_rates.py wheel.json digits.json -o rates.svg

Each input is an `inproc --json` report of a model with `concrete_dropout = true`; its first
run gives one row of two panels: the cumulative normalized regret (uniform = 100) over the
decisions, and each layer's learned drop rate (input units, then each hidden layer) at the
same points, read from the run's `drop_rates`.
"""

from __future__ import annotations

import argparse
import json
import sys

W, H, PAD = 360, 220, 48
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def panel(x0: float, y0: float, title: str, series: list[tuple[str, list[tuple[float, float]]]],
          y_label: str) -> list[str]:
    """One panel at (x0, y0): axes from 0, a line per series, a legend."""
    xs = [x for _, pts in series for x, _ in pts] or [1.0]
    ys = [y for _, pts in series for _, y in pts] or [1.0]
    x_max, y_max = max(xs) or 1.0, (max(ys) or 1.0) * 1.05
    def sx(x: float) -> float:
        return x0 + PAD + (W - PAD - 10) * x / x_max
    def sy(y: float) -> float:
        return y0 + H - PAD + -(H - PAD - 24) * y / y_max
    out = [f'<text x="{x0 + W / 2}" y="{y0 + 16}" text-anchor="middle" font-size="13">{title}</text>',
           f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(x_max)}" y2="{sy(0)}" stroke="black"/>',
           f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(y_max)}" stroke="black"/>',
           f'<text x="{sx(x_max)}" y="{sy(0) + 28}" text-anchor="end" font-size="11">decisions ({x_max:.0f})</text>',
           f'<text x="{x0 + 12}" y="{y0 + H / 2}" font-size="11" transform="rotate(-90 {x0 + 12} {y0 + H / 2})" text-anchor="middle">{y_label}</text>']
    for frac in (0.0, 0.5, 1.0):
        v = y_max * frac
        out.append(f'<text x="{sx(0) - 4}" y="{sy(v) + 4}" text-anchor="end" font-size="10">{v:.3g}</text>')
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        out.append(f'<text x="{sx(x_max) - 4}" y="{y0 + 34 + 13 * i}" text-anchor="end" font-size="11" fill="{color}">{name}</text>')
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="inproc --json reports")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    rows = []
    for path in args.reports:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)["runs"][0]
        rates = run.get("drop_rates") or []
        if not rates:
            sys.exit(f"{path}: the run has no learned drop rates (concrete_dropout = true?)")
        regret = [(p["decisions"], 100.0 * p["regret"] / p["uniform_regret"])
                  for p in run["curve"] if p["uniform_regret"] > 0]
        layers = len(rates[0]["drop_rates"])
        names = ["input"] + [f"hidden {i}" for i in range(1, layers)]
        series = [(names[l], [(p["decisions"], p["drop_rates"][l]) for p in rates])
                  for l in range(layers)]
        rows.append((f'{run["env"]}, seed {run["seed"]}', regret, series))
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H * len(rows)}" '
           f'font-family="sans-serif">', f'<rect width="100%" height="100%" fill="white"/>']
    for r, (name, regret, series) in enumerate(rows):
        svg += panel(0, r * H, f"{name}: normalized regret", [("regret", regret)],
                     "cumulative normalized regret")
        svg += panel(W, r * H, f"{name}: learned drop rates", series, "drop rate")
    svg.append("</svg>")
    with open(args.output, "w", encoding="utf-8") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
