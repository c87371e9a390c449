"""The /docs page: the OpenAPI description rendered as one self-contained HTML page (no scripts, no external
assets: the daemon's host is often offline, and its unit allows no network but the API's)."""

from __future__ import annotations

import html
from typing import Any

METHOD_ORDER = ("get", "post", "put", "delete")


def render(schema: dict[str, Any]) -> str:
    info = schema.get("info", {})
    esc = html.escape
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{esc(str(info.get('title', 'API')))}</title>",
        "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "h2{margin-top:2rem;font-family:ui-monospace,monospace;font-size:1.05rem}"
        ".m{display:inline-block;min-width:3.5rem;padding:.1rem .4rem;border-radius:.3rem;color:#fff;"
        "text-transform:uppercase;font-size:.8rem;text-align:center}.get{background:#2b6cb0}.post{background:#2f855a}"
        "table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #ddd;padding:.2rem .5rem;"
        "text-align:left;vertical-align:top}code{font-family:ui-monospace,monospace}.auth{color:#9b2c2c}</style>",
        "</head><body>",
        f"<h1>{esc(str(info.get('title', 'API')))} <small>{esc(str(info.get('version', '')))}</small></h1>",
        f"<p>{esc(str(info.get('description', '')))}</p>",
        '<p>Machine-readable description: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
        f"{esc(str(schema.get('openapi', '')))}).</p>",
    ]
    for path, ops in schema.get("paths", {}).items():
        for method in sorted(ops, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 9):
            op = ops[method]
            parts.append(f'<h2 id="{esc(method + path)}"><span class="m {esc(method)}">{esc(method)}</span> '
                         f"{esc(path)}</h2>")
            if op.get("summary"):
                parts.append(f"<p><b>{esc(str(op['summary']))}</b></p>")
            if op.get("description"):
                parts.append(f"<p>{esc(str(op['description']))}</p>")
            if op.get("security"):
                parts.append('<p class="auth">Needs <code>Authorization: Bearer &lt;token&gt;</code>.</p>')
            params = op.get("parameters") or []
            if params:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>description</th></tr>")
                for p in params:
                    parts.append(f"<tr><td><code>{esc(str(p.get('name')))}</code></td><td>{esc(str(p.get('in')))}"
                                 f"</td><td>{esc(str(p.get('description', '')))}</td></tr>")
                parts.append("</table>")
            responses = op.get("responses") or {}
            if responses:
                parts.append("<table><tr><th>status</th><th>meaning</th></tr>")
                for code, r in responses.items():
                    text = r.get("description", "") if isinstance(r, dict) else str(r)
                    parts.append(f"<tr><td>{esc(str(code))}</td><td>{esc(str(text))}</td></tr>")
                parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
