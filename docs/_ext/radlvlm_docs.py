"""Sphinx extension: the pages generated from the code when the site is built, so they cannot drift from it.

- ``configuration``: every field of :class:`radlvlm.settings.Settings` (its environment variable, type, default and
  description), read from the pydantic model.
- ``http-api``: every path of the service's OpenAPI schema (method, summary, scope, parameters, request body,
  responses), read from the FastAPI app that ``radlvlm serve`` runs, built without loading a model.

Both are appended to the hand-written introduction of their page as MyST Markdown (the ``source-read`` event).
No Sphinx extension on PyPI renders pydantic settings, and sphinxcontrib-openapi would add six packages to render
one schema; each table here is a few lines.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined
from sphinx.application import Sphinx

from radlvlm.pipeline import build_runtime
from radlvlm.service.app import create_app
from radlvlm.settings import Settings

GENERATED = {"configuration": "_settings_markdown", "http-api": "_openapi_markdown"}


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("source-read", _append_generated)
    return {"version": "1", "parallel_read_safe": True}


def _append_generated(app: Sphinx, docname: str, source: list[str]) -> None:
    builder = GENERATED.get(docname)
    if builder is not None:
        source[0] = source[0].rstrip() + "\n\n" + globals()[builder]() + "\n"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _settings_markdown() -> str:
    prefix = Settings.model_config.get("env_prefix", "")
    lines = ["| environment variable | type | default | what it sets |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default is not PydanticUndefined:
            default = "(none)" if field.default is None else f"`{field.default!r}`"
        else:
            default = "(computed at start: see the description)"
        annotation = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        lines.append(
            f"| `{prefix}{name.upper()}` | `{_cell(annotation)}` | {_cell(default)} | {_cell(field.description)} |"
        )
    return "\n".join(lines)


def _openapi_schema() -> dict[str, Any]:
    logging.getLogger("radlvlm").setLevel(logging.ERROR)  # the throwaway project key it makes is no news
    with tempfile.TemporaryDirectory() as state:
        settings = Settings(audit_path=Path(state) / "audit.jsonl", deid_key_path=Path(state) / "deid.key")
        runtime = build_runtime(settings, lazy=True, audit=False)  # the schema needs no model
        try:
            return json.loads(json.dumps(create_app(settings, runtime, load_in_background=True).openapi()))
        finally:
            runtime.close()


def _openapi_markdown() -> str:
    schema = _openapi_schema()
    components = schema.get("components", {}).get("schemas", {})
    out: list[str] = []
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            out.append(f"## `{method.upper()} {path}`\n")
            if operation.get("summary"):
                out.append(f"**{operation['summary']}.**\n")
            if operation.get("description"):
                out.append(operation["description"].strip() + "\n")
            parameters = operation.get("parameters") or []
            if parameters:
                out.append("| parameter | in | required | what it is |\n|---|---|---|---|")
                for parameter in parameters:
                    out.append(
                        f"| `{parameter['name']}` | {parameter.get('in', '')} | {parameter.get('required', False)} "
                        f"| {_cell(parameter.get('description') or parameter.get('schema', {}).get('title', ''))} |"
                    )
                out.append("")
            body = operation.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                fields = _fields(content.get("schema", {}), components)
                if fields:
                    out.append(f"Request body (`{media}`):\n")
                    out.append("| field | type | what it is |\n|---|---|---|")
                    out.extend(f"| `{name}` | {_cell(kind)} | {_cell(text)} |" for name, kind, text in fields)
                    out.append("")
            responses = operation.get("responses", {})
            answer = responses.get("200", {}).get("content", {}).get("application/json", {}).get("schema", {})
            fields = _fields(answer, components)
            if fields:
                out.append("The answer (200, JSON):\n")
                out.append("| field | type | what it is |\n|---|---|---|")
                out.extend(f"| `{name}` | {_cell(kind)} | {_cell(text)} |" for name, kind, text in fields)
                out.append("")
            if responses:
                answers = ", ".join(f"{code} {_cell(r.get('description', ''))}" for code, r in responses.items())
                out.append(f"Answers: {answers}.\n")
    return "\n".join(out)


def _fields(schema: dict[str, Any], components: dict[str, Any]) -> list[tuple[str, str, str]]:
    if "$ref" in schema:
        schema = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
    rows = []
    for name, field in (schema.get("properties") or {}).items():
        kind = field.get("type") or " or ".join(str(o.get("type", "object")) for o in field.get("anyOf", [])) or "any"
        rows.append((name, kind, field.get("description") or field.get("title", "")))
    return rows
