"""Plain-text tables of run summaries."""
from __future__ import annotations


def time_to_target_table(summaries: list[dict]) -> str:
    """One line per algorithm and seed: time, rounds and bytes to the target."""
    w = max([16, *(len(str(s["algorithm"])) for s in summaries)])
    head = f"{'algorithm':<{w}} {'seed':>4} {'reached':>7} {'time_to_target_s':>16} {'rounds':>7} " \
           f"{'MB_up':>10} {'final_acc':>9}"
    lines = [f"time to {summaries[0]['target_acc']:.0%} test accuracy (simulated):", head, "-" * len(head)]
    for s in summaries:
        t = s["time_to_target_s"]
        b = s["bytes_up_to_target"]
        lines.append(
            f"{s['algorithm']:<{w}} {s['seed']:>4} {str(bool(s['reached'])):>7} "
            f"{(f'{t:.3f}' if t != '' else '-'):>16} {str(s['rounds_to_target'] or '-'):>7} "
            f"{(f'{b / 1e6:.1f}' if b != '' else '-'):>10} {s['final_test_acc']:>9.4f}"
            + ("  DIVERGED" if s["diverged"] else ""))
    return "\n".join(lines)
