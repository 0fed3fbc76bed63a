"""Reports of a finished search: the front as a markdown table and as plots (PNG via matplotlib,
interactive HTML via plotly; the HTML embeds plotly.js so it opens offline)."""

from __future__ import annotations

from pathlib import Path

from search.results import SearchResult, TrialOutcome


def _first_cost(o: TrialOutcome) -> tuple[str, float]:
    name, value = next(iter(o.costs.items()))
    return name, value


def front_markdown(result: SearchResult) -> str:
    costs = list(result.front[0].costs) if result.front else []
    fqns = [layer.fqn for layer in result.layers]
    head = ["trial", result.metric_name, "± std (runs)", "QAT steps", *costs, *fqns]
    lines = [
        f"# Pareto front: {result.workload} ({result.metric_name}, fp32 = {result.fp32_quality:.4f})",
        "",
        "Pinned: " + (", ".join(f"`{k}` ({v})" for k, v in result.pin_reasons.items()) or "none"),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for o in result.front:
        row = [str(o.number), f"{o.quality:.4f}", o.spread_text(), str(o.qat_steps),
               *(f"{o.costs[c]:.4g}" for c in costs), *(o.assignment[f] for f in fqns)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_front_png(result: SearchResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    front_numbers = {o.number for o in result.front}
    others = [o for o in result.trials if o.number not in front_numbers and not o.cached]
    if result.trials:
        cost_name = _first_cost(result.trials[0])[0]
        ax.scatter([_first_cost(o)[1] for o in others if o.feasible], [o.quality for o in others if o.feasible],
                   c="#9aa5b1", s=22, label="trial")
        infeasible = [o for o in others if not o.feasible]
        if infeasible:
            ax.scatter([_first_cost(o)[1] for o in infeasible], [o.quality for o in infeasible], marker="x",
                       c="#d9822b", s=26, label="infeasible")
        fx = [_first_cost(o)[1] for o in result.front]
        ax.errorbar(fx, [o.quality for o in result.front], yerr=[o.quality_std for o in result.front], fmt="o-",
                    c="#2b6cb0", ms=6, capsize=3, label="Pareto front (mean ± std)")
        for o in result.front:
            ax.annotate(str(o.number), (_first_cost(o)[1], o.quality), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        ax.set_xlabel(cost_name)
    ax.axhline(result.fp32_quality, ls="--", c="#2f855a", lw=1, label="fp32")
    ax.set_ylabel(result.metric_name)
    ax.set_title(f"mixq: {result.workload}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_front_html(result: SearchResult, path: Path) -> Path:
    import plotly.graph_objects as go

    fig = go.Figure()
    front_numbers = {o.number for o in result.front}

    def hover(o: TrialOutcome) -> str:
        layers = "<br>".join(f"{k}: {v}" for k, v in o.assignment.items())
        return f"trial {o.number}<br>{result.metric_name} {o.quality:.4f} ± {o.quality_std:.4f}<br>{layers}"

    if result.trials:
        cost_name = _first_cost(result.trials[0])[0]
        others = [o for o in result.trials if o.number not in front_numbers and not o.cached]
        fig.add_trace(go.Scatter(
            x=[_first_cost(o)[1] for o in others], y=[o.quality for o in others], mode="markers", name="trials",
            marker={"color": ["#9aa5b1" if o.feasible else "#d9822b" for o in others],
                    "symbol": ["circle" if o.feasible else "x" for o in others]},
            hovertext=[hover(o) for o in others], hoverinfo="text",
        ))
        fig.add_trace(go.Scatter(
            x=[_first_cost(o)[1] for o in result.front], y=[o.quality for o in result.front], mode="lines+markers",
            name="Pareto front", error_y={"type": "data", "array": [o.quality_std for o in result.front]},
            hovertext=[hover(o) for o in result.front], hoverinfo="text",
        ))
        fig.update_xaxes(title=cost_name)
    fig.add_hline(y=result.fp32_quality, line_dash="dash", annotation_text="fp32")
    fig.update_yaxes(title=result.metric_name)
    fig.update_layout(title=f"mixq: {result.workload}", template="plotly_white")
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
