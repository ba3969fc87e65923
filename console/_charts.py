"""Charts as inline SVG, drawn on the server: no script, no CDN, nothing fetched at view time.

Every function returns SVG markup (a ``str``) with all text escaped; the templates insert it
as it is. Colours come from one small palette; every chart has a ``<title>`` for screen
readers and the same figures are always in the table next to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["bars", "calibration", "flow", "funnel", "lines", "pyramid"]

PALETTE = ("#2f6fb0", "#e07b39", "#3a9d5d", "#c44e52", "#8172b2", "#937860", "#da8bc3", "#8c8c8c")


def _fmt(v: float) -> str:
    if abs(v) >= 1_000_000:
        return f"{v / 1_000_000:.1f}M"
    if abs(v) >= 10_000:
        return f"{v / 1000:.0f}k"
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:.3g}"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(body)}</svg>')


def _empty(title: str) -> str:
    return _svg(420, 60, title, ['<text x="10" y="35" class="muted">no data for this selection</text>'])


def bars(items: Sequence[tuple[str, float]], *, title: str, width: int = 560, color: str = PALETTE[0]) -> str:
    """Horizontal bars, one per (label, value), in the given order."""
    if not items or max(v for _, v in items) <= 0:
        return _empty(title)
    row, label_w = 22, 170
    hi = max(v for _, v in items)
    body = []
    for i, (label, value) in enumerate(items):
        y = 8 + i * row
        w = (width - label_w - 70) * value / hi if hi else 0
        body.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{escape(str(label)[:28])}</text>'
                    f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row - 6}" fill="{color}"/>'
                    f'<text x="{label_w + w + 4:.1f}" y="{y + 14}">{escape(_fmt(value))}</text>')
    return _svg(width, 16 + len(items) * row, title, body)


def funnel(stages: Sequence[tuple[str, float]], *, title: str, width: int = 560) -> str:
    """Centred bars narrowing from the first stage."""
    if not stages or stages[0][1] <= 0:
        return _empty(title)
    row = 34
    hi = max(v for _, v in stages)
    body = []
    for i, (label, value) in enumerate(stages):
        w = max(2.0, (width - 40) * value / hi)
        x = (width - w) / 2
        y = 6 + i * row
        body.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 6}" '
                    f'fill="{PALETTE[i % len(PALETTE)]}" opacity="0.85"/>'
                    f'<text x="{width / 2}" y="{y + 19}" text-anchor="middle" class="on-bar">'
                    f'{escape(label)}: {escape(_fmt(value))}</text>')
    return _svg(width, 12 + len(stages) * row, title, body)


def lines(series: Mapping[str, Sequence[tuple[str, float]]], *, title: str, width: int = 640,
          height: int = 220) -> str:
    """One line per series over shared x labels (sorted); a legend below."""
    xs = sorted({x for points in series.values() for x, _ in points})
    if not xs:
        return _empty(title)
    hi = max((v for points in series.values() for _, v in points), default=0) or 1
    left, right, top, bottom = 48, 12, 10, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    pos = {x: left + (plot_w * i / max(1, len(xs) - 1) if len(xs) > 1 else plot_w / 2) for i, x in enumerate(xs)}
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" class="axis"/>',
            f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{escape(_fmt(hi))}</text>',
            f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
            f'<text x="{left}" y="{height - 24}">{escape(xs[0])}</text>',
            f'<text x="{width - right}" y="{height - 24}" text-anchor="end">{escape(xs[-1])}</text>']
    legend_x = left
    for i, (name, points) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{pos[x]:.1f},{top + plot_h - plot_h * v / hi:.1f}" for x, v in sorted(points))
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>')
        for x, v in points:
            body.append(f'<circle cx="{pos[x]:.1f}" cy="{top + plot_h - plot_h * v / hi:.1f}" r="2.5" fill="{color}"/>')
        body.append(f'<rect x="{legend_x}" y="{height - 13}" width="10" height="10" fill="{color}"/>'
                    f'<text x="{legend_x + 14}" y="{height - 4}">{escape(str(name)[:18])}</text>')
        legend_x += 24 + 7 * min(18, len(str(name)))
    return _svg(width, height, title, body)


def flow(flows: Sequence[tuple[str, str, int]], stages: Sequence[str], *, title: str, width: int = 640,
         height: int = 300) -> str:
    """A flow diagram: stages at the start (left) and the end (right), bands ∝ customers."""
    total = sum(n for _, _, n in flows)
    if total <= 0:
        return _empty(title)
    top, gap, bar_w = 10, 6, 14
    usable = height - 2 * top - gap * (len(stages) - 1)
    scale = usable / total
    left_x, right_x = 110, width - 110

    def column(side: int) -> dict[str, float]:
        y = float(top)
        out: dict[str, float] = {}
        for s in stages:
            out[s] = y
            y += scale * sum(n for a, b, n in flows if (a if side == 0 else b) == s) + gap
        return out

    y_left, y_right = column(0), column(1)
    color = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(stages)}
    body = []
    cursor_l = dict(y_left)
    cursor_r = dict(y_right)
    order = {s: i for i, s in enumerate(stages)}
    for a, b, n in sorted(flows, key=lambda f: (order[f[0]], order[f[1]])):
        h = scale * n
        y0, y1 = cursor_l[a], cursor_r[b]
        cursor_l[a] += h
        cursor_r[b] += h
        x0, x1 = left_x + bar_w, right_x
        mid = (x0 + x1) / 2
        body.append(
            f'<path d="M{x0},{y0:.1f} C{mid},{y0:.1f} {mid},{y1:.1f} {x1},{y1:.1f} L{x1},{y1 + h:.1f} '
            f'C{mid},{y1 + h:.1f} {mid},{y0 + h:.1f} {x0},{y0 + h:.1f} Z" fill="{color[a]}" opacity="0.35">'
            f'<title>{escape(a)} → {escape(b)}: {n}</title></path>')
    for side, ys, x in ((0, y_left, left_x), (1, y_right, right_x)):
        for s in stages:
            n = sum(c for a, b, c in flows if (a if side == 0 else b) == s)
            if not n:
                continue
            h = scale * n
            body.append(f'<rect x="{x}" y="{ys[s]:.1f}" width="{bar_w}" height="{max(1.0, h):.1f}" fill="{color[s]}"/>')
            tx, anchor = (x - 6, "end") if side == 0 else (x + bar_w + 6, "start")
            body.append(f'<text x="{tx}" y="{ys[s] + min(h, 20) / 2 + 4:.1f}" text-anchor="{anchor}">'
                        f'{escape(s)} {n:,}</text>')
    return _svg(width, height, title, body)


def pyramid(tiers: Sequence[tuple[str, float, int]], *, title: str, width: int = 520) -> str:
    """The value pyramid: one band per tier (top first), labelled with its share of value."""
    if not tiers:
        return _empty(title)
    row = 46
    body = []
    for i, (label, share, customers) in enumerate(tiers):
        w_top = width * (0.4 + 0.2 * i)
        w_bottom = width * (0.4 + 0.2 * (i + 1))
        y = 6 + i * row
        cx = width / 2
        body.append(f'<polygon points="{cx - w_top / 2:.1f},{y} {cx + w_top / 2:.1f},{y} '
                    f'{cx + w_bottom / 2 - 4:.1f},{y + row - 4} {cx - w_bottom / 2 + 4:.1f},{y + row - 4}" '
                    f'fill="{PALETTE[i]}" opacity="0.85"/>'
                    f'<text x="{cx}" y="{y + row / 2 + 4}" text-anchor="middle" class="on-bar">'
                    f'{escape(label)}: {share * 100:.0f} % of value, {customers:,} customers</text>')
    return _svg(width, 12 + len(tiers) * row, title, body)


def calibration(points: Sequence[tuple[float, float, int]], *, title: str, size: int = 260) -> str:
    """Observed acceptance against mean predicted propensity per bin; the diagonal is perfect."""
    if not points:
        return _empty(title)
    pad = 30
    span = size - 2 * pad
    hi = max(max(p, o) for p, o, _ in points)
    hi = 1.0 if hi > 0.5 else max(0.05, round(hi * 1.2, 2))
    body = [f'<rect x="{pad}" y="{pad}" width="{span}" height="{span}" fill="none" class="axis"/>',
            f'<line x1="{pad}" y1="{pad + span}" x2="{pad + span}" y2="{pad}" stroke="#999" stroke-dasharray="4 3"/>',
            f'<text x="{pad}" y="{size - 8}">0</text>',
            f'<text x="{pad + span}" y="{size - 8}" text-anchor="end">predicted {hi:g}</text>',
            f'<text x="{pad - 4}" y="{pad + 8}" text-anchor="end">{hi:g}</text>']
    biggest = max(n for _, _, n in points) or 1
    for p, o, n in points:
        r = 2 + 5 * (n / biggest) ** 0.5
        body.append(f'<circle cx="{pad + span * min(p, hi) / hi:.1f}" cy="{pad + span - span * min(o, hi) / hi:.1f}" '
                    f'r="{r:.1f}" fill="{PALETTE[0]}" opacity="0.8"><title>predicted {p:.3f}, observed {o:.3f}, '
                    f'{n} shown</title></circle>')
    return _svg(size, size, title, body)
