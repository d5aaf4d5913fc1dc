"""Server-rendered SVG charts: no JavaScript, no third-party URL, readable without CSS.

Each chart is an <svg> with `data-chart` naming it; each bar is a <rect> with `data-label` and
`data-value` (what tests and people hovering read: a <title> per bar gives the tooltip).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 12, 16, 44


def _nice_max(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at least `value`."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 1.0
    while magnitude > value and magnitude > 1e-9:
        magnitude /= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def money(value: float) -> str:
    """Axis and tooltip text for dollars: $12.50, $0.0025, $0."""
    if value == 0:
        return "$0"
    if value >= 0.01:
        return f"${value:,.2f}"
    return f"${value:.6f}".rstrip("0")


def bar_chart(
    name: str,
    title: str,
    points: Sequence[tuple[str, float]],
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
) -> Markup:
    """Vertical bars, one per (label, value), e.g. one per day."""
    top = _nice_max(max((v for _, v in points), default=0.0))
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = plot_w / max(1, len(points))
    bar_w = max(2.0, slot * 0.7)
    parts = [
        f'<svg class="chart" data-chart="{escape(name)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = PAD_TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y:.1f}" '
            f'y2="{y:.1f}"/><text class="axis" x="{PAD_LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{escape(fmt(top * fraction))}</text>'
        )
    label_every = max(1, len(points) // 7)
    for index, (label, value) in enumerate(points):
        h = plot_h * (value / top)
        x = PAD_LEFT + slot * index + (slot - bar_w) / 2
        y = PAD_TOP + plot_h - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
            f'data-label="{escape(label)}" data-value="{value:g}">'
            f"<title>{escape(label)}: {escape(fmt(value))}</title></rect>"
        )
        if (len(points) - 1 - index) % label_every == 0:  # the newest is always labelled
            parts.append(
                f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{HEIGHT - PAD_BOTTOM + 16}" '
                f'text-anchor="middle">{escape(label[5:] if len(label) == 10 else label)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every interpolated text is escaped above)


def hbar_chart(
    name: str,
    title: str,
    points: Sequence[tuple[str, float]],
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
) -> Markup:
    """Horizontal bars with their labels, e.g. one per model."""
    row, label_w = 26, 220
    height = max(1, len(points)) * row + 8
    top = _nice_max(max((v for _, v in points), default=0.0))
    bar_space = WIDTH - label_w - 90
    parts = [
        f'<svg class="chart" data-chart="{escape(name)}" viewBox="0 0 {WIDTH} {height}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    if not points:
        parts.append('<text class="axis" x="8" y="20">No usage yet.</text>')
    for index, (label, value) in enumerate(points):
        y = 4 + index * row
        w = bar_space * (value / top)
        parts.append(
            f'<text class="axis" x="{label_w - 8}" y="{y + 16}" text-anchor="end">'
            f"{escape(label[:32])}</text>"
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" '
            f'data-label="{escape(label)}" data-value="{value:g}">'
            f"<title>{escape(label)}: {escape(fmt(value))}</title></rect>"
            f'<text class="axis" x="{label_w + w + 6:.1f}" y="{y + 16}">{escape(fmt(value))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every interpolated text is escaped above)
